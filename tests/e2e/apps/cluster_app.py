"""A test app for the cluster tests: connections that send to any address on command.

Protocol on ``ws://HOST/node?user=NAME[&group=G]...``:

* On connect the actor answers to ``user:NAME`` and joins ``group:G`` for each
  ``group`` parameter, waits until the backplane has applied those
  subscriptions (so a message another node sends from then on arrives), and
  sends ``{"ready": {"pid": P, "node": N, "conn": ADDRESS}}`` first of all.
* Each client text message is a JSON command and gets exactly one reply,
  ``{"reply": "sent"}`` or ``{"reply": "error", "error": KIND, "detail": TEXT}``:

  - ``{"op": "send", "to": ADDRESS, ...}`` sends to any address;
  - ``{"op": "publish", "group": G, ...}`` sends to ``group:G``;
  - ``{"op": "broadcast", ...}`` sends to every connection of the cluster;

  where ``...`` is the message: ``"text": T`` (a ``str``), ``"json": X`` (any
  JSON value) or ``"hex": H`` (``bytes.fromhex(H)``).
* Messages from other actors reach the client as wsup forwards them: ``str``
  as a text frame, ``bytes`` as a binary frame, anything else as JSON text;
  always after the reply to a command that was running when they arrived.

``GET /whoami`` answers ``{"pid": P, "node": N}``: which worker process and
which node a request landed on. ``app`` is served by ``wsup serve``;
:func:`make_app` builds a fresh one (an App is served by one server at a time).
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from actors import BackplaneUnavailable
from supervisor import App, Handler, HTTPResponse, Request

__all__ = ["app", "make_app"]

SYNC_TIMEOUT = 10.0
"""Seconds a new connection waits for its subscriptions to be applied."""


def _payload(command: dict[str, Any]) -> Any:
    if "text" in command:
        return str(command["text"])
    if "hex" in command:
        return bytes.fromhex(command["hex"])
    return command.get("json")


class Node(Handler):
    """A connection that answers to a user name and groups, and sends on command."""

    async def on_connect(self) -> None:
        """Register the name and groups, wait for the backplane, say ready."""
        request = self.conn.request
        user = request.query_param("user")
        if user:
            self.context.register(f"user:{user}")
        for group in request.query.get("group", []):
            self.context.join(f"group:{group}")
        server = self.app.server
        assert server is not None
        backplane = server.runtime.backplane
        synced = getattr(backplane, "synced", None)
        if synced is not None and backplane.up:
            with anyio.move_on_after(SYNC_TIMEOUT):
                await synced()
        ready = {"pid": os.getpid(), "node": server.runtime.node_id, "conn": self.context.address}
        await self.conn.send(json.dumps({"ready": ready}))

    async def on_receive(self, message: Any) -> None:
        """Forward a message from another actor, after any reply being written.

        Overriding the default (which does the same) keeps these messages in the
        mailbox, so a command's reply always reaches the client before what the
        command itself delivered to this connection.
        """
        await self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def on_message(self, message: str | bytes) -> None:
        """Run one command and reply."""
        try:
            command = json.loads(message)
            op = command["op"]
            payload = _payload(command)
            if op == "send":
                await self.app.send(command["to"], payload)
            elif op == "publish":
                await self.app.publish(f"group:{command['group']}", payload)
            elif op == "broadcast":
                await self.app.broadcast(payload)
            else:
                raise ValueError(f"unknown op {op!r}")
        except BackplaneUnavailable as exc:
            reply = {"reply": "error", "error": "backplane_unavailable", "detail": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"reply": "error", "error": "bad_command", "detail": str(exc)}
        else:
            reply = {"reply": "sent"}
        await self.conn.send(json.dumps(reply))


def make_app() -> App:
    """Build the cluster test app."""
    new = App()
    new.add_route("/node", Node)

    @new.http("/whoami")
    def whoami(request: Request) -> HTTPResponse:
        server = new.server
        node = server.runtime.node_id if server is not None else None
        body = json.dumps({"pid": os.getpid(), "node": node})
        return HTTPResponse(body, content_type="application/json")

    return new


app = make_app()
