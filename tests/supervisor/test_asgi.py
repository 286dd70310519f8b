"""supervisor.asgi driven message by message, as an ASGI server would drive it.

An :class:`ASGIPeer` plays the server's side of one scope over in-memory
streams: the test sees every message the app sends, and chooses what
``receive()`` returns and which ASGI extensions the scope offers. The real
servers (uvicorn, hypercorn) are in ``tests/e2e/test_asgi_servers.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from actors import MailboxConfig
from supervisor import (
    Accept,
    App,
    Connection,
    Handler,
    HTTPResponse,
    InboundPolicy,
    Rate,
    Reject,
    Request,
    ServerConfig,
)
from supervisor.asgi import ASGIApp, ASGIApplication, Message, Scope
from tests.helpers.tasks import settle

pytestmark = pytest.mark.anyio

HTTP_RESPONSE: dict[str, Any] = {"websocket.http.response": {}}
_PEERS: list[ASGIPeer] = []


@pytest.fixture(autouse=True)
def _close_peers() -> Iterator[None]:
    """Close every peer's streams after the test (unclosed streams warn)."""
    yield
    while _PEERS:
        _PEERS.pop().close()


class ASGIPeer:
    """The server's side of one ASGI scope: queue what the app receives, read what it sends."""

    def __init__(self) -> None:
        self._to_app, self._app_inbox = anyio.create_memory_object_stream[Message](math.inf)
        self._app_outbox, self._from_app = anyio.create_memory_object_stream[Message](math.inf)
        #: Set when the app has returned from the scope.
        self.done = anyio.Event()
        _PEERS.append(self)

    def close(self) -> None:
        """Close the four stream ends."""
        for stream in (self._to_app, self._app_inbox, self._app_outbox, self._from_app):
            stream.close()

    async def receive(self) -> Message:
        """The app's ``receive``."""
        return await self._app_inbox.receive()

    async def send(self, message: Message) -> None:
        """The app's ``send``."""
        await self._app_outbox.send(message)

    def put(self, message: Message) -> None:
        """Make ``message`` the next thing the app receives."""
        self._to_app.send_nowait(message)

    async def next(self) -> Message:
        """The next message the app sent."""
        with anyio.fail_after(10):
            return await self._from_app.receive()


def ws_scope(path: str, query: bytes = b"", extensions: Any = None, **more: Any) -> Scope:
    """A ``websocket`` scope as uvicorn builds one."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "extensions": HTTP_RESPONSE if extensions is None else extensions,
        **more,
    }


def http_scope(path: str, **more: Any) -> Scope:
    """An ``http`` GET scope."""
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        **more,
    }


def make_app() -> App:
    """An echo route, a route with a parameter, a hook that wants ``?user=``, a route
    that reports its connection, and one with an inbound rate."""
    app = App(config=ServerConfig(max_size=64, close_timeout=0.05))

    def needs_user(request: Request) -> Reject | None:
        return None if request.query_param("user") else Reject(400, "missing user\n")

    @app.route("/echo")
    class Echo(Handler):
        async def on_message(self, message: str | bytes) -> None:
            await self.conn.send(message)

    @app.route("/files/{name}")
    class Name(Handler):
        async def on_connect(self) -> None:
            await self.conn.send(self.params["name"])

    @app.route("/private", hook=needs_user)
    class Private(Handler):
        pass

    @app.route("/stats")
    class Stats(Handler):
        async def on_message(self, message: str | bytes) -> None:
            stats = self.conn.statistics()
            kind = type(self.conn).__name__
            await self.conn.send(f"{kind} {stats.messages_in} {stats.messages_out}")

    @app.route("/limited", inbound_rate=Rate(1, burst=1), inbound_policy=InboundPolicy.CLOSE)
    class Limited(Echo):
        pass

    @app.http("/hook", methods=("POST",), max_body=8)
    def hook(request: Request) -> HTTPResponse:
        return HTTPResponse(f"{request.method} {request.body.decode()}")

    return app


@asynccontextmanager
async def running(asgi: ASGIApp) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run the adapter's lifespan; yield a task group for the scopes."""
    async with asgi.lifespan(), anyio.create_task_group() as tg:
        yield tg


def start(tg: anyio.abc.TaskGroup, app: ASGIApplication, scope: Scope) -> ASGIPeer:
    """Run ``app`` on ``scope`` in ``tg``; return the peer that drives it."""
    peer = ASGIPeer()

    async def run() -> None:
        try:
            await app(scope, peer.receive, peer.send)
        finally:
            peer.done.set()

    tg.start_soon(run)
    return peer


async def accepted(tg: anyio.abc.TaskGroup, asgi: ASGIApp, scope: Scope) -> ASGIPeer:
    """Open a WebSocket scope and check that the app accepts it."""
    peer = start(tg, asgi, scope)
    peer.put({"type": "websocket.connect"})
    assert (await peer.next())["type"] == "websocket.accept"
    return peer


async def test_echo_keeps_the_message_type_and_a_client_close_is_recorded() -> None:
    """Text stays text, binary stays binary; the client's close code reaches the metrics."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = await accepted(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.receive", "text": "hi"})
        assert await peer.next() == {"type": "websocket.send", "text": "hi"}
        peer.put({"type": "websocket.receive", "bytes": b"\x00"})
        assert await peer.next() == {"type": "websocket.send", "bytes": b"\x00"}
        peer.put({"type": "websocket.disconnect", "code": 4000})
        server = asgi.server
        assert server is not None
        await peer.done.wait()
        assert not server.connections
        body, _ = server.metrics.render_for(None)
    text = body.decode()
    assert 'wsup_connections_closed_total{initiator="client",reason="other"} 1.0' in text
    assert 'wsup_messages_received_total{kind="binary"} 1.0' in text


async def test_a_mounted_path_routes_on_the_raw_path_below_the_mount() -> None:
    """Below ``root_path``, an encoded slash stays inside its parameter."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        scope = ws_scope("/ws/files/a/b", raw_path=b"/ws/files/a%2Fb", root_path="/ws")
        peer = await accepted(tg, asgi, scope)
        assert await peer.next() == {"type": "websocket.send", "text": "a/b"}
        peer.put({"type": "websocket.disconnect", "code": 1000})


async def test_a_rejection_is_an_http_answer_where_the_server_offers_one() -> None:
    """With ``websocket.http.response``, the hook's status and body reach the client."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, ws_scope("/private"))
        peer.put({"type": "websocket.connect"})
        start_message = await peer.next()
        assert (start_message["type"], start_message["status"]) == (
            "websocket.http.response.start",
            400,
        )
        assert (await peer.next())["body"] == b"missing user\n"


async def test_a_rejection_is_a_close_before_accept_without_the_extension() -> None:
    """Without ``websocket.http.response``: close 1008 before accept (servers answer 403)."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, ws_scope("/private", extensions={}))
        peer.put({"type": "websocket.connect"})
        assert await peer.next() == {
            "type": "websocket.close",
            "code": 1008,
            "reason": "missing user",
        }


async def test_unknown_paths_get_404_without_a_fallback() -> None:
    """No route and no wrapped app: 404 for a handshake and for plain HTTP."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, ws_scope("/nowhere"))
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["status"] == 404
        http = start(tg, asgi, http_scope("/nowhere"))
        assert (await http.next())["status"] == 404
        http = start(tg, asgi, http_scope("/echo"))
        assert (await http.next())["status"] == 426


async def test_a_handshake_before_the_lifespan_is_refused_with_503() -> None:
    """Mounted without running its lifespan: 503 and a reason, never a crash."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with anyio.create_task_group() as tg:
        peer = start(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["status"] == 503
        assert b"lifespan" in (await peer.next())["body"]
        http = start(tg, asgi, http_scope("/readyz"))
        assert (await http.next())["status"] == 503


async def test_a_message_over_max_size_closes_with_1009() -> None:
    """``max_size`` applies to what the ASGI server delivers."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = await accepted(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.receive", "text": "x" * 65})
        closing = await peer.next()
        assert (closing["type"], closing["code"]) == ("websocket.close", 1009)
        peer.put({"type": "websocket.disconnect", "code": 1009})


async def test_shutdown_drains_with_1001() -> None:
    """Leaving the lifespan drains: each connection is closed with 1001."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with anyio.create_task_group() as tg:
        async with asgi.lifespan():
            peer = await accepted(tg, asgi, ws_scope("/echo"))
            server = asgi.server
            assert server is not None
            tg.start_soon(server.shutdown)
            closing = await peer.next()
            assert (closing["type"], closing["code"]) == ("websocket.close", 1001)
            peer.put({"type": "websocket.disconnect", "code": 1001})
        assert asgi.server is None


async def test_the_lifespan_scope_starts_wsup_and_the_wrapped_app() -> None:
    """The ASGI lifespan runs wsup's and forwards startup and shutdown to the wrapped app."""
    seen: list[str] = []

    async def fallback(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    asgi = ASGIApp(make_app(), fallback, handle_signals=False)
    async with anyio.create_task_group() as tg:
        peer = start(tg, asgi, {"type": "lifespan", "asgi": {"version": "3.0"}})
        peer.put({"type": "lifespan.startup"})
        assert await peer.next() == {"type": "lifespan.startup.complete"}
        assert asgi.server is not None
        peer.put({"type": "lifespan.shutdown"})
        assert await peer.next() == {"type": "lifespan.shutdown.complete"}
    assert seen == ["lifespan.startup", "lifespan.shutdown"]
    assert asgi.server is None


async def test_a_wrapped_app_that_fails_to_start_fails_the_startup() -> None:
    """``lifespan.startup.failed`` from the wrapped app is reported, and wsup stops again."""

    async def fallback(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    asgi = ASGIApp(make_app(), fallback, handle_signals=False)
    async with anyio.create_task_group() as tg:
        peer = start(tg, asgi, {"type": "lifespan", "asgi": {"version": "3.0"}})
        peer.put({"type": "lifespan.startup"})
        failed = await peer.next()
    assert failed["type"] == "lifespan.startup.failed"
    assert "no database" in failed["message"]
    assert asgi.server is None


async def test_the_apps_own_http_routes_take_their_methods_and_bodies() -> None:
    """``App.http`` routes: the body in parts, 405 with ``Allow``, 413 past ``max_body``."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, http_scope("/hook", method="POST"))
        peer.put({"type": "http.request", "body": b"ab", "more_body": True})
        peer.put({"type": "http.request", "body": b"cd"})
        assert (await peer.next())["status"] == 200
        assert (await peer.next())["body"] == b"POST abcd"
        peer = start(tg, asgi, http_scope("/hook"))
        answer = await peer.next()
        assert (answer["status"], dict(answer["headers"])[b"allow"]) == (405, b"POST")
        peer = start(tg, asgi, http_scope("/hook", method="POST"))
        peer.put({"type": "http.request", "body": b"123456789"})
        assert (await peer.next())["status"] == 413


async def test_handlers_get_the_same_connection_class_as_on_wsups_own_port() -> None:
    """Under ASGI, ``self.conn`` is a :class:`supervisor.Connection`, counting as usual."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = await accepted(tg, asgi, ws_scope("/stats"))
        peer.put({"type": "websocket.receive", "text": "a"})
        assert await peer.next() == {"type": "websocket.send", "text": "Connection 1 0"}
        peer.put({"type": "websocket.receive", "bytes": b"b"})
        assert await peer.next() == {"type": "websocket.send", "text": "Connection 2 1"}
        server = asgi.server
        assert server is not None
        assert all(isinstance(conn, Connection) for conn in server.connections)
        peer.put({"type": "websocket.disconnect", "code": 1000})


async def test_the_routes_inbound_rate_applies_under_asgi() -> None:
    """Over ``inbound_rate`` with the ``close`` policy: 1008, as on wsup's own port."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = await accepted(tg, asgi, ws_scope("/limited"))
        for _ in range(3):
            peer.put({"type": "websocket.receive", "text": "x"})
        messages = [await peer.next()]
        while messages[-1]["type"] != "websocket.close":
            messages.append(await peer.next())
        # The echo of the first may be dropped by the close (a fail drops what is queued).
        assert all(m == {"type": "websocket.send", "text": "x"} for m in messages[:-1])
        assert (messages[-1]["code"], messages[-1]["reason"]) == (1008, "inbound rate exceeded")
        peer.put({"type": "websocket.disconnect", "code": 1008})
        await peer.done.wait()
        server = asgi.server
        assert server is not None
        body, _ = server.metrics.render_for(None)
    assert 'wsup_limited_total{limit="inbound_close"} 1.0' in body.decode()


async def test_a_client_that_never_answers_the_close_is_dropped_after_close_timeout() -> None:
    """The server's close goes out; without the client's ``websocket.disconnect``
    the scope returns after ``close_timeout``, and the close counts as the server's."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = await accepted(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.receive", "text": "x" * 65})  # over max_size
        closing = await peer.next()
        assert (closing["type"], closing["code"]) == ("websocket.close", 1009)
        with anyio.fail_after(10):
            await peer.done.wait()
        server = asgi.server
        assert server is not None
        assert not server.connections
        body, _ = server.metrics.render_for(None)
    text = body.decode()
    assert 'wsup_connections_closed_total{initiator="server",reason="message_too_big"} 1.0' in text


async def test_ops_allow_applies_to_the_ops_endpoints() -> None:
    """``config.ops_allow``: /healthz answers the listed networks, 403 naming the client
    to others (the ASGI server's ``client``)."""
    app = make_app()
    asgi = ASGIApp(app, config=ServerConfig(ops_allow=["10.0.0.0/8"]), handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, http_scope("/healthz", client=("10.1.2.3", 5000)))
        assert (await peer.next())["status"] == 200
        assert (await peer.next())["body"] == b"ok\n"
        peer = start(tg, asgi, http_scope("/healthz", client=("127.0.0.1", 5000)))
        assert (await peer.next())["status"] == 403
        assert (await peer.next())["body"] == b"forbidden: /healthz is not served to 127.0.0.1\n"


#: Each admission limit that applies under ASGI, set so that a second handshake
#: from 127.0.0.1 (the first still open) is refused.
ADMISSION = {
    "max_connections": ServerConfig(max_connections=1),
    "max_connections_per_address": ServerConfig(max_connections_per_address=1),
    "handshake_rate": ServerConfig(handshake_rate=Rate(0.001, burst=1)),
    "handshake_rate_per_address": ServerConfig(handshake_rate_per_address=Rate(0.001, burst=1)),
}


def limited(asgi: ASGIApp, limit: str) -> str:
    """The ``wsup_limited_total`` sample of ``limit`` as ``/metrics`` shows it."""
    server = asgi.server
    assert server is not None
    body, _ = server.metrics.render_for(None)
    for line in body.decode().splitlines():
        if line.startswith(f'wsup_limited_total{{limit="{limit}"}} '):
            return line.rpartition(" ")[2]
    raise AssertionError(f"no wsup_limited_total for {limit}")


@pytest.mark.parametrize("limit", sorted(ADMISSION))
async def test_admission_limits_answer_503_with_retry_after(limit: str) -> None:
    """Each admission limit refuses a handshake with 503 and ``Retry-After``, counted in
    ``wsup_limited_total{limit}``, as on wsup's own port."""
    asgi = ASGIApp(make_app(), config=ADMISSION[limit], handle_signals=False)
    async with running(asgi) as tg:
        first = await accepted(tg, asgi, ws_scope("/echo"))
        peer = start(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.connect"})
        answer = await peer.next()
        assert (answer["type"], answer["status"]) == ("websocket.http.response.start", 503)
        headers = dict(answer["headers"])
        assert int(headers[b"retry-after"]) >= 1
        assert b"server" not in headers  # the ASGI server names itself
        assert (await peer.next())["body"].startswith(b"too many")
        await peer.done.wait()
        assert limited(asgi, limit) == "1.0"
        first.put({"type": "websocket.disconnect", "code": 1000})


async def test_the_per_address_limits_count_each_client_address_apart() -> None:
    """``max_connections_per_address`` refuses the second connection of one address,
    not the first of another."""
    config = ServerConfig(max_connections_per_address=1)
    asgi = ASGIApp(make_app(), config=config, handle_signals=False)
    async with running(asgi) as tg:
        first = await accepted(tg, asgi, ws_scope("/echo"))
        other = await accepted(tg, asgi, ws_scope("/echo", client=("10.0.0.2", 40000)))
        peer = start(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["status"] == 503
        first.put({"type": "websocket.disconnect", "code": 1000})
        await first.done.wait()
        again = await accepted(tg, asgi, ws_scope("/echo"))  # room again once it closed
        for client in (other, again):
            client.put({"type": "websocket.disconnect", "code": 1000})


async def test_an_admission_refusal_without_the_extension_closes_with_1013() -> None:
    """Without ``websocket.http.response``: close 1013 (try again later) before accept."""
    asgi = ASGIApp(make_app(), config=ServerConfig(max_connections=1), handle_signals=False)
    async with running(asgi) as tg:
        first = await accepted(tg, asgi, ws_scope("/echo"))
        peer = start(tg, asgi, ws_scope("/echo", extensions={}))
        peer.put({"type": "websocket.connect"})
        assert await peer.next() == {
            "type": "websocket.close",
            "code": 1013,
            "reason": "too many connections",
        }
        first.put({"type": "websocket.disconnect", "code": 1000})


async def test_a_handshake_hook_that_raises_answers_500() -> None:
    """A hook that raises is logged and answers 500, counted as a rejected handshake."""
    app = make_app()

    @app.handshake
    def broken(request: Request) -> None:
        raise RuntimeError("broken hook")

    asgi = ASGIApp(app, handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, ws_scope("/echo"))
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["status"] == 500
        assert (await peer.next())["body"] == b"internal server error\n"
        server = asgi.server
        assert server is not None
        body, _ = server.metrics.render_for(None)
    assert 'wsup_handshakes_total{result="rejected"} 1.0' in body.decode()


async def test_hooks_see_the_scope_and_their_accept_reaches_the_client_and_handler() -> None:
    """A hook sees the scope's path, parameters, query, headers, cookies, addresses (the
    forwarded one behind ``trusted_proxies``) and offered subprotocols; its ``Accept``
    chooses the subprotocol, adds headers and hands ``values`` to the handler."""
    app = make_app()
    seen: list[Request] = []

    def look(request: Request) -> Accept:
        seen.append(request)
        return Accept(headers=[("X-Seen", "yes")], subprotocol="v1", values={"who": "ann"})

    @app.route("/rooms/{room}", hook=look, subprotocols=("v2", "v1"))
    class Room(Handler):
        async def on_connect(self) -> None:
            await self.conn.send(
                f"{self.params['room']} {self.values['who']} {self.conn.subprotocol}"
            )

    config = ServerConfig(trusted_proxies=["127.0.0.1/32"])
    asgi = ASGIApp(app, config=config, handle_signals=False)
    scope = ws_scope(
        "/rooms/tea",
        query=b"user=ann&tag=a&tag=b",
        headers=[
            (b"host", b"127.0.0.1"),
            (b"cookie", b"session=abc; theme=dark"),
            (b"x-forwarded-for", b"203.0.113.9"),
        ],
        subprotocols=["v1", "v2"],
    )
    async with running(asgi) as tg:
        peer = start(tg, asgi, scope)
        peer.put({"type": "websocket.connect"})
        accept = await peer.next()
        assert (accept["type"], accept["subprotocol"]) == ("websocket.accept", "v1")
        assert (b"x-seen", b"yes") in accept["headers"]
        assert await peer.next() == {"type": "websocket.send", "text": "tea ann v1"}
        peer.put({"type": "websocket.disconnect", "code": 1000})
    [request] = seen
    assert (request.path, request.params) == ("/rooms/tea", {"room": "tea"})
    assert request.query == {"user": ["ann"], "tag": ["a", "b"]}
    assert request.header("cookie") == "session=abc; theme=dark"
    assert request.cookies == {"session": "abc", "theme": "dark"}
    assert request.remote_address == ("127.0.0.1", 50000)
    assert request.client_address == "203.0.113.9"
    assert request.subprotocols == ("v1", "v2")


async def test_a_route_needing_a_subprotocol_the_client_did_not_offer_gets_400() -> None:
    """The route's ``subprotocols`` are negotiated as websockets does: none offered is a
    400, counted as a failed handshake."""
    app = make_app()

    @app.route("/v2only", subprotocols=("v2",))
    class V2(Handler):
        pass

    asgi = ASGIApp(app, handle_signals=False)
    async with running(asgi) as tg:
        peer = start(tg, asgi, ws_scope("/v2only", subprotocols=["v1"]))
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["status"] == 400
        assert (await peer.next())["body"].startswith(b"bad request: invalid subprotocol")
        server = asgi.server
        assert server is not None
        body, _ = server.metrics.render_for(None)
    assert 'wsup_handshakes_total{result="failed"} 1.0' in body.decode()


async def test_a_full_block_mailbox_stops_the_reader_calling_receive() -> None:
    """Under ``block``, a full mailbox stops the reader: the ASGI server's messages stay
    in its queue (where its own bound stops it reading the socket) until there is room,
    then every one arrives, in order."""
    app = make_app()
    release = anyio.Event()

    @app.route("/slow", mailbox=MailboxConfig(capacity=1))
    class Slow(Handler):
        async def on_message(self, message: str | bytes) -> None:
            await release.wait()
            await self.conn.send(message)

    asgi = ASGIApp(app, handle_signals=False)
    async with running(asgi) as tg:
        peer = ASGIPeer()
        calls = 0

        async def receive() -> Message:
            nonlocal calls
            calls += 1
            return await peer.receive()

        tg.start_soon(asgi, ws_scope("/slow"), receive, peer.send)
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["type"] == "websocket.accept"
        for number in range(20):
            peer.put({"type": "websocket.receive", "text": str(number)})
        await settle()
        # The connect, one message in the handler, one in the mailbox, one in hand.
        assert calls <= 5
        release.set()
        for number in range(20):
            assert await peer.next() == {"type": "websocket.send", "text": str(number)}
        await settle()
        assert calls == 21 + 1  # and the reader waits for the next
        peer.put({"type": "websocket.disconnect", "code": 1000})


async def test_on_asyncio_a_message_is_echoed_before_the_reader_receives_again(
    anyio_backend_name: str,
) -> None:
    """While the actor and the writer are idle, the reader begins the handler's step
    and the handler's send begins ``send()`` on the writer's behalf: the echo is out
    before the reader asks for the next message (on trio, through the tasks)."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = ASGIPeer()
        sent: list[Message] = []
        seen_at_receive: list[int] = []

        async def receive() -> Message:
            seen_at_receive.append(len(sent))
            return await peer.receive()

        async def send(message: Message) -> None:
            sent.append(message)
            await peer.send(message)

        tg.start_soon(asgi, ws_scope("/echo"), receive, send)
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["type"] == "websocket.accept"
        for number in range(3):
            peer.put({"type": "websocket.receive", "text": str(number)})
            assert await peer.next() == {"type": "websocket.send", "text": str(number)}
        await settle()
        if anyio_backend_name == "asyncio":
            # Once the actor waits for messages (the first may find it starting):
            # each echo before the next receive().
            assert seen_at_receive[3:] == [3, 4]
        peer.put({"type": "websocket.disconnect", "code": 1000})


async def test_a_send_that_suspends_or_fails_on_the_writers_behalf_is_finished_by_it() -> None:
    """A ``send()`` that suspends is finished by the writer, in order, before the
    messages queued after it; one that raises ``OSError`` (the client is gone) ends
    the connection as the writer's own would."""
    asgi = ASGIApp(make_app(), handle_signals=False)
    async with running(asgi) as tg:
        peer = ASGIPeer()
        fail = False

        async def send(message: Message) -> None:
            if fail:
                raise OSError("gone")
            await anyio.lowlevel.checkpoint()  # every send suspends once
            await peer.send(message)

        done = anyio.Event()

        async def run() -> None:
            try:
                await asgi(ws_scope("/echo"), peer.receive, send)
            finally:
                done.set()

        tg.start_soon(run)
        peer.put({"type": "websocket.connect"})
        assert (await peer.next())["type"] == "websocket.accept"
        for number in range(20):
            peer.put({"type": "websocket.receive", "text": str(number)})
        for number in range(20):
            assert await peer.next() == {"type": "websocket.send", "text": str(number)}
        await settle()
        fail = True
        peer.put({"type": "websocket.receive", "text": "lost"})
        await settle()
        peer.put({"type": "websocket.disconnect", "code": 1006})
        with anyio.fail_after(10):
            await done.wait()
        server = asgi.server
        assert server is not None
        assert not server.connections
        body, _ = server.metrics.render_for(None)
    text = body.decode()
    assert 'wsup_connections_closed_total{initiator="network",reason="abnormal"} 1.0' in text
    assert 'wsup_actor_crashes_total{kind="connection"} 0.0' in text  # not the handler's error
