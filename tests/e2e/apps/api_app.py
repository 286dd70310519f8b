"""A test app for the server API tests: connections with a name and groups, and a webhook.

``ws://HOST/u?user=NAME[&group=G]...``: the connection answers to ``user:NAME``
and joins ``G`` for each ``group`` (presence metadata ``{"user": NAME}``), waits
until the backplane has applied those subscriptions, then sends
``{"ready": ADDRESS}``. Messages from other actors
reach the client as wsup forwards them by default (``str`` as text, anything
else as JSON text).

``POST /hook`` (at most 64 bytes of body) answers ``METHOD BODY`` as text: a
webhook that takes a body. ``GET /page`` answers ``page``.
"""

from __future__ import annotations

import json

import anyio

from supervisor import App, Handler, HTTPResponse, Request

__all__ = ["app"]

app = App()


class Member(Handler):
    """A connection with a user name and groups."""

    async def on_connect(self) -> None:
        """Register, join, wait for the backplane's subscriptions, say ready."""
        request = self.conn.request
        self.context.register(f"user:{request.query_param('user')}")
        for group in request.query.get("group", []):
            self.context.join(group, meta={"user": request.query_param("user")})
        server = self.app.server
        assert server is not None
        synced = getattr(server.runtime.backplane, "synced", None)
        if synced is not None and server.runtime.backplane.up:
            with anyio.move_on_after(10.0):
                await synced()
        await self.conn.send(json.dumps({"ready": self.context.address}))


app.add_route("/u", Member)


@app.http("/hook", methods=("POST",), max_body=64)
def hook(request: Request) -> HTTPResponse:
    """Answer the method and the body it got."""
    return HTTPResponse(request.method.encode() + b" " + request.body)


@app.http("/page")
def page(request: Request) -> HTTPResponse:
    """A plain GET route."""
    return HTTPResponse("page")
