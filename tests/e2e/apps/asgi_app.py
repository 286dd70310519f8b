"""A wsup app served through :mod:`supervisor.asgi`, wrapping a Starlette app.

For ``tests/e2e/test_asgi_servers.py``: ``uvicorn tests.e2e.apps.asgi_app:application``
(or hypercorn). wsup's log lines are JSON on stderr, as under ``wsup serve
--log-format json``.

* ``/echo``: every message back, with its type;
* ``/crash``: says ``connected`` on each (re)start; ``crash`` makes the handler
  raise (the connection stays open, a new handler takes over); anything else
  comes back;
* ``/flood``: sends 1 KiB messages without end to a route whose outbound
  buffer holds 4 KiB, under the ``disconnect`` policy;
* ``/plain``: plain HTTP, answered by the wrapped Starlette app.

``limited`` serves the same app under admission limits: one connection per
client address, and one handshake per address every 1,000 s after the first.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from supervisor import App, Handler, Rate, ServerConfig, configure_logging
from supervisor.asgi import ASGIApp

configure_logging("json", "info")

app = App()


@app.route("/echo")
class Echo(Handler):
    """Sends each message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


@app.route("/crash")
class Crashy(Handler):
    """Crashes on request; its restarts keep the connection."""

    async def on_connect(self) -> None:
        await self.conn.send("connected")

    async def on_message(self, message: str | bytes) -> None:
        if message == "crash":
            raise RuntimeError("crash requested by the client")
        await self.conn.send(message)


@app.route("/flood", outbound_limit=4096, slow_consumer="disconnect")
class Flood(Handler):
    """Sends until the client, which reads nothing, is disconnected as a slow consumer."""

    async def on_connect(self) -> None:
        while True:
            await self.conn.send("x" * 1024)


async def plain(request: HTTPRequest) -> PlainTextResponse:
    """A route of the wrapped app."""
    return PlainTextResponse("plain")


application = ASGIApp(app, fallback=Starlette(routes=[Route("/plain", plain)]))

limited = ASGIApp(
    app,
    config=ServerConfig(
        max_connections_per_address=1,
        handshake_rate_per_address=Rate(0.001, burst=2),
    ),
)
