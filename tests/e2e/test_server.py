"""End to end: the server with real clients over loopback (websockets' sync client in a thread).

Covers routing, the operational endpoints, handshake hooks, the Origin and
connection limits, trusted proxies, both handler styles, closing from a
handler, permessage-deflate, keepalive and TLS.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.uri import parse_uri

from actors import FakeClock
from examples.echo import app as echo_app
from supervisor import (
    Accept,
    App,
    Connection,
    Handler,
    KeepaliveConfig,
    Reject,
    Request,
    Server,
    ServerConfig,
)
from supervisor.metrics import Metrics
from supervisor.server._accept import descriptor_usage
from tests.helpers.clients import http_get as get_on_port
from tests.helpers.metrics import sample
from tests.helpers.raw import exchange_bytes
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


# --- helpers --------------------------------------------------------------------------------------


def connect(url: str, **kwargs: Any) -> ClientConnection:
    """Open a websockets sync client that never goes through an environment proxy."""
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    client: ClientConnection = ws_connect(url, proxy=None, **kwargs)
    return client


@dataclass
class HTTPAnswer:
    """A parsed HTTP/1.1 response."""

    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(server: Server, request: bytes) -> bytes:
    """Send raw ``request`` bytes and return everything the server answers until it closes."""
    host, port = server.ports[0]
    return await exchange_bytes(port, request, host)


async def http_get(server: Server, path: str, headers: str = "") -> HTTPAnswer:
    """Send ``GET path`` (plus raw ``headers`` lines) and parse the answer."""
    host = server.ports[0][0]
    data = await exchange(server, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return HTTPAnswer(int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body)


def status_of(fn: Callable[[], object]) -> InvalidStatus:
    """Call ``fn``, which must fail the opening handshake, and return the error."""
    with pytest.raises(InvalidStatus) as info:
        fn()
    return info.value


# --- echo and routing -----------------------------------------------------------------------------


async def test_echo_keeps_the_message_type() -> None:
    """examples.echo returns text as text and binary as binary, unchanged."""
    async with running_server(echo_app) as server:

        def talk() -> list[str | bytes]:
            with connect(ws_url(server, "/echo")) as ws:
                ws.send("héllo")
                ws.send(b"\x00\xffbin")
                ws.send("")
                return [ws.recv(timeout=5) for _ in range(3)]

        assert await in_thread(talk) == ["héllo", b"\x00\xffbin", ""]


async def test_route_parameters_reach_the_handler() -> None:
    """/chat/{room} gives the handler self.params and conn.params, URL-decoded."""
    app = App()

    @app.route("/chat/{room}")
    class Room(Handler):
        async def on_connect(self) -> None:
            await self.conn.send(f"{self.params['room']}|{self.conn.params['room']}")

    async with running_server(app) as server:

        def talk() -> str | bytes:
            with connect(ws_url(server, "/chat/tea%20room?x=1")) as ws:
                return ws.recv(timeout=5)

        assert await in_thread(talk) == "tea room|tea room"


async def test_unknown_path_is_404() -> None:
    """A WebSocket handshake on a path with no route gets HTTP 404."""
    async with running_server(echo_app) as server:
        error = await in_thread(lambda: status_of(lambda: connect(ws_url(server, "/nope"))))
        assert error.response.status_code == 404
        assert sample(server, "wsup_handshakes_total", result="rejected") == 1


async def test_plain_get_on_a_websocket_route_is_426() -> None:
    """A plain HTTP GET (no Upgrade) on a WebSocket route gets 426 Upgrade Required."""
    async with running_server(echo_app) as server:
        answer = await http_get(server, "/echo")
        assert answer.status == 426
        assert answer.headers["upgrade"].lower() == "websocket"


# --- operational endpoints ------------------------------------------------------------------------


async def test_healthz_is_200() -> None:
    """/healthz answers 200 while the process serves."""
    async with running_server(echo_app) as server:
        answer = await http_get(server, "/healthz")
        assert answer.status == 200
        assert answer.body == b"ok\n"
        assert answer.headers["connection"] == "keep-alive"  # HTTP/1.1: the default


async def test_readyz_is_200_then_503_while_draining() -> None:
    """/readyz answers 200 while serving, 503 as soon as a drain starts (during the grace)."""
    clock = FakeClock()
    config = ServerConfig(hosts=("127.0.0.1",), port=0, readiness_grace=5.0)
    server = Server(echo_app, config, metrics=Metrics(), clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        ready = await http_get(server, "/readyz")
        assert (ready.status, ready.body) == (200, b"ready\n")
        tg.start_soon(server.shutdown)
        # The drain is now held in the readiness grace, on the fake clock.
        await eventually(lambda: clock.pending > 0 and server.draining)
        draining = await http_get(server, "/readyz")
        assert (draining.status, draining.body) == (503, b"draining\n")
        assert (await http_get(server, "/healthz")).status == 200
        assert sample(server, "wsup_draining") == 1
        clock.advance(5.0)
    assert not server.accepting
    assert sample(server, "wsup_draining") == 0


async def test_readyz_is_503_near_the_descriptor_limit() -> None:
    """/readyz answers 503 once the open descriptors reach readiness_fd_fraction of the limit."""
    if descriptor_usage() is None:
        pytest.skip("this kernel does not count open descriptors cheaply (Linux < 6.2)")
    async with running_server(echo_app, readiness_fd_fraction=1e-6) as server:
        answer = await http_get(server, "/readyz")
        assert answer.status == 503
        assert answer.body.startswith(b"file descriptors nearly exhausted: ")
        assert (await http_get(server, "/healthz")).status == 200
    async with running_server(echo_app) as server:  # 0.9 of the limit by default
        assert (await http_get(server, "/readyz")).status == 200
    async with running_server(echo_app, readiness_fd_fraction=None) as server:
        assert (await http_get(server, "/readyz")).status == 200


def test_readiness_fd_fraction_must_be_a_fraction() -> None:
    """readiness_fd_fraction outside (0, 1] is refused when the config is made."""
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="readiness_fd_fraction"):
            ServerConfig(readiness_fd_fraction=bad)


async def test_metrics_parse_and_count_the_connection() -> None:
    """/metrics is valid Prometheus text and counts an open connection."""
    async with running_server(echo_app) as server:
        opened = anyio.Event()
        release = anyio.Event()
        token = anyio.lowlevel.current_token()

        def hold() -> None:
            with connect(ws_url(server, "/echo")) as ws:
                ws.send("x")
                ws.recv(timeout=5)
                anyio.from_thread.run_sync(opened.set, token=token)
                anyio.from_thread.run(release.wait, token=token)

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread, hold)
            with anyio.fail_after(10):
                await opened.wait()
            answer = await http_get(server, "/metrics")
            release.set()
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values()
            for s in f.samples
        }
        assert values[("wsup_connections", (("state", "open"),))] == 1
        # Two TCP connections: the WebSocket and this scrape.
        assert values[("wsup_connections_accepted_total", ())] == 2
        assert values[("wsup_handshakes_total", (("result", "accepted"),))] == 1
        assert values[("wsup_messages_received_total", (("kind", "text"),))] == 1
        assert "wsup_build_info" in families


# --- handshake hooks ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_handshake_hook_sees_the_request_and_accepts(style: str) -> None:
    """A hook (sync or async) sees path, query, headers, cookies and address; its
    Accept adds response headers, values for the actor and a subprotocol."""
    seen: list[Request] = []

    def decide(request: Request) -> Accept:
        seen.append(request)
        return Accept(
            headers=[("X-Welcome", "yes")],
            values={"user": request.query_param("user")},
            subprotocol="chat.v2",
        )

    async def decide_async(request: Request) -> Accept:
        await anyio.lowlevel.checkpoint()
        return decide(request)

    app = App()
    app.handshake(decide if style == "sync" else decide_async)

    @app.route("/room/{name}")
    class Greeter(Handler):
        async def on_connect(self) -> None:
            await self.conn.send(f"{self.values['user']}@{self.params['name']}")
            await self.conn.send(str(self.conn.subprotocol))

    async with running_server(app) as server:

        def talk() -> tuple[Any, ...]:
            with connect(
                ws_url(server, "/room/blue?user=ann&tag=a&tag=b"),
                subprotocols=["chat.v1", "chat.v2"],
                additional_headers={"Cookie": "session=abc; theme=dark", "X-Custom": "42"},
            ) as ws:
                assert ws.response is not None
                return (
                    ws.recv(timeout=5),
                    ws.recv(timeout=5),
                    ws.subprotocol,
                    ws.response.headers.get("X-Welcome"),
                )

        assert await in_thread(talk) == ("ann@blue", "chat.v2", "chat.v2", "yes")
    (request,) = seen
    assert request.path == "/room/blue"
    assert dict(request.params) == {"name": "blue"}
    assert request.query["tag"] == ["a", "b"]
    assert request.header("x-custom") == "42"
    assert dict(request.cookies) == {"session": "abc", "theme": "dark"}
    assert request.remote_address[0] == "127.0.0.1"
    assert request.remote_address[1] > 0
    assert request.client_address == "127.0.0.1"
    assert request.subprotocols == ("chat.v1", "chat.v2")


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_handshake_hook_rejects_with_status_and_body(style: str) -> None:
    """A hook's Reject becomes the HTTP response: its status, its body, its headers."""

    def deny(request: Request) -> Reject | None:
        if request.query_param("token") == "good":
            return None
        return Reject(401, "missing token\n", headers=[("WWW-Authenticate", "Token")])

    async def deny_async(request: Request) -> Reject | None:
        return deny(request)

    app = App()
    app.add_route("/echo", _Echo, hook=deny if style == "sync" else deny_async)
    async with running_server(app) as server:
        error = await in_thread(lambda: status_of(lambda: connect(ws_url(server, "/echo"))))
        assert error.response.status_code == 401
        assert error.response.body == b"missing token\n"
        assert error.response.headers["WWW-Authenticate"] == "Token"

        def allowed() -> str | bytes:
            with connect(ws_url(server, "/echo?token=good")) as ws:
                ws.send("in")
                return ws.recv(timeout=5)

        assert await in_thread(allowed) == "in"


class _Echo(Handler):
    """Echoes every message."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


# --- limits and proxies ---------------------------------------------------------------------------


async def test_origin_not_in_the_allow_list_is_403() -> None:
    """With an Origin allow-list, another origin gets 403; a listed one connects."""
    async with running_server(echo_app, origins=["https://good.example"]) as server:
        url = ws_url(server, "/echo")
        error = await in_thread(
            lambda: status_of(lambda: connect(url, origin="https://evil.example"))
        )
        assert error.response.status_code == 403

        def good() -> str | bytes:
            with connect(url, origin="https://good.example") as ws:
                ws.send("ok")
                return ws.recv(timeout=5)

        assert await in_thread(good) == "ok"
        # No Origin at all is not in the list either.
        missing = await in_thread(lambda: status_of(lambda: connect(url)))
        assert missing.response.status_code == 403


async def test_max_connections_turns_the_next_one_away_with_503() -> None:
    """Past max_connections, a handshake gets 503; a freed slot is usable again."""
    async with running_server(echo_app, max_connections=1) as server:
        url = ws_url(server, "/echo")

        def over_the_limit() -> tuple[int, int, bytes]:
            with connect(url) as first:
                first.send("hold")
                first.recv(timeout=5)
                refused = status_of(lambda: connect(url)).response.status_code
                status, body = get_on_port(server.ports[0][1], "/readyz")
                return refused, status, body.encode()

        refused, ready, why = await in_thread(over_the_limit)
        assert refused == 503
        # At capacity the node is not ready: load balancers send new clients elsewhere.
        assert (ready, why) == (503, b"at capacity: 1 of max_connections open\n")
        await eventually(lambda: not server.connections)
        assert (await http_get(server, "/readyz")).status == 200

        def again() -> str | bytes:
            with connect(url) as ws:
                ws.send("back")
                return ws.recv(timeout=5)

        assert await in_thread(again) == "back"


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(("127.0.0.0/8",), "203.0.113.7"), (("10.0.0.0/8",), "127.0.0.1"), ((), "127.0.0.1")],
)
async def test_x_forwarded_for_is_believed_only_from_a_trusted_peer(
    trusted: tuple[str, ...], expected: str
) -> None:
    """X-Forwarded-For sets client_address only when the TCP peer is a trusted proxy."""
    app = App()

    @app.route("/whoami")
    class WhoAmI(Handler):
        async def on_connect(self) -> None:
            await self.conn.send(self.conn.client_address)

    async with running_server(app, trusted_proxies=trusted) as server:

        def talk() -> str | bytes:
            with connect(
                ws_url(server, "/whoami"), additional_headers={"X-Forwarded-For": "203.0.113.7"}
            ) as ws:
                return ws.recv(timeout=5)

        assert await in_thread(talk) == expected


# --- handler styles and closing -------------------------------------------------------------------


async def test_websockets_style_function_handler() -> None:
    """``async def handler(conn)`` with ``async for`` and ``await conn.send`` serves a client."""
    finished = anyio.Event()

    async def shout(conn: Connection) -> None:
        async for message in conn:
            assert isinstance(message, str)
            await conn.send(message.upper())
        finished.set()

    app = App()
    app.add_route("/shout", shout)
    async with running_server(app) as server:

        def talk() -> list[str | bytes]:
            with connect(ws_url(server, "/shout")) as ws:
                replies = []
                for word in ("a", "bc", "déf"):
                    ws.send(word)
                    replies.append(ws.recv(timeout=5))
                return replies

        assert await in_thread(talk) == ["A", "BC", "DÉF"]
        with anyio.fail_after(10):
            await finished.wait()
        await eventually(lambda: not server.connections)


async def test_close_from_a_handler_reaches_the_client() -> None:
    """``await conn.close(code, reason)`` sends that close frame after what was queued."""
    closed_with: list[tuple[int, str]] = []

    class Bye(Handler):
        async def on_message(self, message: str | bytes) -> None:
            await self.conn.send("last words")
            await self.conn.close(4001, "see you")

        async def on_close(self, code: int, reason: str) -> None:
            closed_with.append((code, reason))

    app = App()
    app.add_route("/bye", Bye)
    async with running_server(app) as server:

        def talk() -> tuple[str | bytes, int, str]:
            with connect(ws_url(server, "/bye")) as ws:
                ws.send("go")
                last = ws.recv(timeout=5)
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=5)
                assert info.value.rcvd is not None
                return last, info.value.rcvd.code, info.value.rcvd.reason

        assert await in_thread(talk) == ("last words", 4001, "see you")
        await eventually(lambda: not server.connections)
    assert closed_with == [(4001, "see you")]
    assert sample(server, "wsup_connections_closed_total", reason="other", initiator="server") == 1


# --- permessage-deflate ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [True, False])
async def test_permessage_deflate_is_negotiated_only_when_enabled(compression: bool) -> None:
    """With compression=True the server agrees to permessage-deflate; with False it does not."""
    conns: list[Connection] = []

    class Recording(_Echo):
        async def on_connect(self) -> None:
            conns.append(self.conn)

    app = App()
    app.add_route("/echo", Recording)
    async with running_server(app, compression=compression) as server:
        payload = "compress me " * 1000

        def talk() -> tuple[str | None, str | bytes, str | bytes]:
            with connect(ws_url(server, "/echo"), compression="deflate") as ws:
                ws.send(payload)
                text = ws.recv(timeout=5)
                ws.send(payload.encode())
                assert ws.response is not None
                return ws.response.headers.get("Sec-WebSocket-Extensions"), text, ws.recv(5)

        extensions, text, binary = await in_thread(talk)
    assert (text, binary) == (payload, payload.encode())
    (conn,) = conns
    if compression:
        assert extensions is not None
        assert extensions.startswith("permessage-deflate")
        # Compressed on the wire both ways: far fewer bytes than the payloads.
        assert conn.bytes_in < len(payload)
        assert conn.bytes_out < len(payload)
    else:
        assert extensions is None
        assert conn.bytes_in > 2 * len(payload)
        assert conn.bytes_out > 2 * len(payload)


# --- keepalive ------------------------------------------------------------------------------------


async def test_a_client_that_does_not_answer_pings_is_closed_with_1011() -> None:
    """A peer that never answers pings gets a ping, then close 1011 after ping_timeout."""
    keepalive = KeepaliveConfig(ping_interval=0.2, ping_timeout=0.2)
    async with running_server(echo_app, keepalive=keepalive, close_timeout=0.5) as server:
        host, port = server.ports[0]
        key = base64.b64encode(os.urandom(16)).decode()
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(
                f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            # A client protocol that only parses: its pongs are never sent.
            client = ClientProtocol(parse_uri(f"ws://{host}:{port}/echo"), state=State.OPEN)
            buffer = b""
            frames: list[Frame] = []
            with anyio.fail_after(10):
                while b"\r\n\r\n" not in buffer:
                    buffer += await stream.receive()
                head, _, rest = buffer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101")
                client.receive_data(rest)
                while client.close_rcvd is None:
                    frames.extend(client.events_received())  # type: ignore[arg-type]
                    client.receive_data(await stream.receive())
        assert [f.opcode for f in frames] == [Opcode.PING]
        assert client.close_rcvd.code == 1011
        assert client.close_rcvd.reason == "keepalive ping timeout"
        await eventually(lambda: not server.connections)
        assert sample(server, "wsup_connections_closed_total", reason="timeout", initiator="server")


async def test_a_client_that_answers_pings_stays_connected() -> None:
    """A peer that answers pings stays open across several ping intervals; RTTs are measured."""
    keepalive = KeepaliveConfig(ping_interval=0.05, ping_timeout=5)
    async with running_server(echo_app, keepalive=keepalive) as server:
        token = anyio.lowlevel.current_token()

        def talk() -> str | bytes:
            with connect(ws_url(server, "/echo"), ping_interval=None) as ws:
                # The client's reader thread answers every ping on its own.
                anyio.from_thread.run(
                    eventually,
                    lambda: sample(server, "wsup_ping_rtt_seconds_count") >= 3,
                    token=token,
                )
                ws.send("still here")
                return ws.recv(timeout=5)

        assert await in_thread(talk) == "still here"
        assert (
            sample(server, "wsup_connections_closed_total", reason="timeout", initiator="server")
            == 0
        )


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def tls_echo(
    server: Server, context: ssl.SSLContext, messages: list[str | bytes], *, clean: bool
) -> list[str | bytes]:
    """Exchange ``messages`` with /echo over wss:// and return the replies.

    An async client on the test's loop: websockets' sync client reads and writes
    one TLS 1.3 socket from two threads, which OpenSSL does not support (its
    request can stall until the server answers). ``clean=False`` drops the TCP
    connection without a closing handshake.
    """
    host, port = server.ports[0]
    client = ClientProtocol(parse_uri(f"wss://{host}:{port}/echo"))
    replies: list[str | bytes] = []
    stream = await anyio.connect_tcp(
        host, port, ssl_context=context, tls_hostname=host, tls_standard_compatible=False
    )
    async with stream:
        client.send_request(client.connect())
        with anyio.fail_after(10):
            while client.state is State.CONNECTING:
                for data in client.data_to_send():
                    await stream.send(data)
                client.receive_data(await stream.receive())
            for message in messages:
                if isinstance(message, str):
                    client.send_text(message.encode())
                else:
                    client.send_binary(message)
            for data in client.data_to_send():
                await stream.send(data)
            while len(replies) < len(messages):
                for event in client.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        replies.append(bytes(event.data).decode())
                    elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                        replies.append(bytes(event.data))
                if len(replies) < len(messages):
                    client.receive_data(await stream.receive())
            if clean:
                client.send_close(1000)
                for data in client.data_to_send():
                    await stream.send(data)
                while client.close_rcvd is None:
                    client.receive_data(await stream.receive())
    return replies


async def test_tls_with_a_self_signed_certificate(certificate: tuple[Path, Path]) -> None:
    """With ssl= set, wss:// works end to end, survives clients that vanish, and the
    port speaks only TLS."""
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with running_server(echo_app, ssl=server_context, handshake_timeout=5) as server:
        replies = await tls_echo(server, client_context, ["secret", b"\x01\x02"], clean=True)
        assert replies == ["secret", b"\x01\x02"]
        # A client that drops TCP without a closing handshake does not disturb the server.
        assert await tls_echo(server, client_context, ["gone"], clean=False) == ["gone"]
        await eventually(lambda: not server.connections)
        assert await tls_echo(server, client_context, ["again"], clean=True) == ["again"]
        # A plain-text client on the TLS port gets no HTTP answer at all, only a closed socket.
        answer = await exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not answer.startswith(b"HTTP/")
        await eventually(lambda: not server.connections)
        assert sample(server, "wsup_handshakes_total", result="accepted") == 3
        assert (
            sample(server, "wsup_connections_closed_total", reason="normal", initiator="client")
            == 2
        )
