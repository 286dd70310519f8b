"""The server guide (docs/server.md): its examples exist verbatim and do what it says.

Every example app is served in-process on a free loopback port (on asyncio with
uvloop and on trio) and talked to with real clients: the ``websockets`` sync
client in a worker thread, or a deliberately slow or silent client built on
websockets' Sans-I/O ``ClientProtocol`` over a plain socket. What only the
command line does (signals, ``WSUP_*`` variables, the bind-failure line) is
checked against a real ``python -m supervisor serve`` process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
import structlog
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.uri import parse_uri

from actors import FakeClock
from examples.server import (
    backpressure,
    closing,
    draining,
    function,
    handshake,
    keepalive,
    lifecycle,
    limits,
    listen,
    ops,
    origins,
    programmatic,
    proxies,
    quickstart,
    restarts,
    routing,
    services,
    slow_consumers,
    threads,
)
from supervisor import App, ListenError, Server, ServerConfig, serve
from supervisor.metrics import Metrics
from tests.helpers.clients import get_url, open_ws, recv_until_closed
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.metrics import sample
from tests.helpers.server import http_url, running_server, ws_url
from tests.helpers.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "server.md"
EXAMPLES = ROOT / "examples" / "server"


# --- helpers -------------------------------------------------------------------------------------


def rejected_status(url: str, **options: Any) -> InvalidStatus:
    """Open a connection that the server must refuse; return the refusal."""
    with pytest.raises(InvalidStatus) as caught, connect(url, open_timeout=20, **options):
        pass
    return caught.value


def dropped(server: Server, policy: str) -> float:
    """Return ``wsup_messages_dropped_total{policy=...}`` of ``server``."""
    return sample(server, "wsup_messages_dropped_total", policy=policy)


def only_connection(server: Server) -> Any:
    """Return the server's one open connection."""
    (conn,) = server.connections
    return conn


class RawClient:
    """A WebSocket client that reads from its socket only when told to.

    It never answers pings unless it flushes, and it lets the kernel buffers
    fill up while it does not read: the silent or slow peer that real clients
    hide.

    Args:
        url: the ``ws://`` URL.
        receive_buffer: ``SO_RCVBUF`` to ask for before connecting, if any.
    """

    def __init__(self, url: str, *, receive_buffer: int | None = None) -> None:
        uri = parse_uri(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(20)
        self.sock.connect((uri.host, uri.port))
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        while self.protocol.state is State.CONNECTING:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            self.protocol.receive_data(data)
        response = self.protocol.events_received()[0]
        assert isinstance(response, Response)
        assert response.status_code == 101, response

    def flush(self) -> None:
        """Write whatever the protocol has queued (requests, frames, pongs)."""
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _read(self) -> list[Frame]:
        """Read once from the socket; return the frames that completed."""
        data = self.sock.recv(1 << 16)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        # After the handshake, every event is a frame.
        return cast(list[Frame], self.protocol.events_received())

    def read_until_closed(self) -> tuple[list[tuple[Opcode, bytes]], int | None, str]:
        """Read until the server's close frame (or EOF); return frames, close code, reason."""
        frames: list[tuple[Opcode, bytes]] = []
        while self.protocol.close_rcvd is None and self.protocol.state is not State.CLOSED:
            frames.extend((frame.opcode, bytes(frame.data)) for frame in self._read())
        close = self.protocol.close_rcvd
        return frames, (close.code if close else None), (close.reason if close else "")

    def read_texts_until(self, last: str) -> list[str]:
        """Read data frames until a text message equal to ``last``; return their texts."""
        texts: list[str] = []
        while not texts or texts[-1] != last:
            texts.extend(bytes(f.data).decode() for f in self._read() if f.opcode is Opcode.TEXT)
        return texts

    def close(self) -> None:
        """Drop the TCP connection."""
        self.sock.close()


# --- the guide and its files ---------------------------------------------------------------------

_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"# (examples/server/(\w+)\.py)\n")


def _python_blocks() -> list[str]:
    return _FENCE.findall(GUIDE.read_text())


def test_every_python_block_is_an_example_file_verbatim() -> None:
    """Each ```python block of the guide names its file on line one and equals it exactly."""
    assert_blocks_are_files(_python_blocks(), _HEADER, "in the guide")


def test_every_example_file_is_in_the_guide_and_has_an_app() -> None:
    """Each examples/server module is quoted in the guide and exposes an ``app``."""
    quoted = {m.group(2) for block in _python_blocks() if (m := _HEADER.match(block))}
    names = {p.stem for p in EXAMPLES.glob("*.py") if p.stem != "__init__"}
    assert names == quoted
    for name in names - {"tls"}:  # tls needs its certificate; tested below
        module = importlib.import_module(f"examples.server.{name}")
        assert isinstance(module.app, App), name


# --- quick start ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_quickstart_client_gets_its_messages_back(capsys: pytest.CaptureFixture[str]) -> None:
    """The quick-start client prints the text and the binary message the echo sends back."""
    # capture_logs keeps the server's log lines out of the captured output.
    with structlog.testing.capture_logs():
        async with running_server(quickstart.app) as server:
            await in_thread(quickstart.main, ws_url(server, "/echo"))
    assert capsys.readouterr().out == "hello\nb'\\x00\\x01'\n"


# --- handlers ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifecycle_hooks_run_in_order_for_every_member() -> None:
    """on_connect joins and announces, on_message publishes, on_receive renders, on_close tells."""
    async with running_server(lifecycle.app) as server:
        url = ws_url(server, "/lobby")

        def scenario() -> None:
            with connect(f"{url}?name=ada") as ada:
                assert ada.recv(timeout=20) == "ada joined"
                with connect(f"{url}?name=bob") as bob:
                    assert bob.recv(timeout=20) == "bob joined"
                    assert ada.recv(timeout=20) == "bob joined"
                    bob.send("hi")
                    assert bob.recv(timeout=20) == "bob said hi"
                    assert ada.recv(timeout=20) == "bob said hi"
                assert ada.recv(timeout=20) == "bob left (1000)"
                ada.send(b"\x00")
                _, code, reason = recv_until_closed(ada)
                assert (code, reason) == (1003, "text messages only")

        await in_thread(scenario)


@pytest.mark.anyio
async def test_plain_def_hook_runs_in_a_thread_while_the_loop_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a plain ``def`` hook blocks, the server still answers; then the reply arrives."""
    entered, release = threading.Event(), threading.Event()

    def blocking_sleep(seconds: float) -> None:
        entered.set()
        release.wait(20)

    monkeypatch.setattr(threads, "time", types.SimpleNamespace(sleep=blocking_sleep))
    async with running_server(threads.app) as server:
        replies: list[str | bytes] = []

        def client() -> None:
            with connect(ws_url(server, "/digest")) as ws:
                ws.send("wsup")
                replies.append(ws.recv(timeout=20))

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread, client)
            assert await in_thread(entered.wait, 20)
            status, _, body = await in_thread(get_url, http_url(server, "/healthz"))
            assert (status, body) == (200, "ok\n")
            release.set()
    assert replies == [hashlib.sha256(b"wsup").hexdigest()]


@pytest.mark.anyio
async def test_function_handler_loops_and_its_return_closes_with_1000() -> None:
    """``async for message in conn`` sees every message; returning closes the connection."""
    async with running_server(function.app) as server:

        def scenario() -> tuple[list[str | bytes], int | None, str]:
            with connect(ws_url(server, "/count")) as ws:
                ws.send("a")
                ws.send(b"b")
                ws.send("bye")
                return recv_until_closed(ws)

        messages, code, _ = await in_thread(scenario)
    assert messages == ["#1: 'a'", "#2: b'b'", "#3: 'bye'"]
    assert code == 1000


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_routes_with_parameters_constructor_arguments_and_state(anyio_backend: Any) -> None:
    """Parameters are decoded, kwargs reach __init__, app.state is shared, unknown paths 404."""
    room = f"tea room {anyio_backend[0]}"  # app.state outlives one test run
    quoted = room.replace(" ", "%20")
    async with running_server(routing.app) as server:

        def first_message(path: str) -> str | bytes:
            with connect(ws_url(server, path)) as ws:
                return ws.recv(timeout=20)

        assert await in_thread(first_message, f"/rooms/{quoted}") == (
            f"welcome to {room}, visitor #1"
        )
        assert await in_thread(first_message, f"/rooms/{quoted}") == (
            f"welcome to {room}, visitor #2"
        )
        assert await in_thread(first_message, "/files/docs/a.txt") == "you asked for docs/a.txt"
        for path in ("/rooms/", "/rooms/a/b", "/nowhere"):
            refusal = await in_thread(rejected_status, ws_url(server, path))
            assert refusal.response.status_code == 404


# --- handshake -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_handshake_hook_accepts_rejects_and_picks_the_subprotocol() -> None:
    """Token from header, cookie or query; 401 without; subprotocol chosen by the route hook."""
    async with running_server(handshake.app) as server:
        url = ws_url(server, "/chat")

        def greeting(target: str, **options: Any) -> tuple[str | bytes, str | None]:
            with connect(target, **options) as ws:
                assert ws.response is not None
                return ws.recv(timeout=20), ws.response.headers.get("X-User")

        both = ["chat.v1", "chat.v2"]
        bearer = {"Authorization": "Bearer s3cret"}
        cookie = {"Cookie": "session=hunter2"}
        assert await in_thread(
            lambda: greeting(url, additional_headers=bearer, subprotocols=both)
        ) == ("hello ada from 127.0.0.1, speaking chat.v2", "ada")
        assert await in_thread(
            lambda: greeting(url, additional_headers=cookie, subprotocols=["chat.v1"])
        ) == ("hello bob from 127.0.0.1, speaking chat.v1", "bob")
        assert await in_thread(
            lambda: greeting(f"{url}?token=s3cret", subprotocols=["chat.v2"])
        ) == ("hello ada from 127.0.0.1, speaking chat.v2", "ada")

        refusal = await in_thread(lambda: rejected_status(url, subprotocols=both))
        assert refusal.response.status_code == 401
        assert refusal.response.body == b"unknown or missing token\n"
        assert refusal.response.headers["WWW-Authenticate"] == "Bearer"

        refusal = await in_thread(lambda: rejected_status(f"{url}?token=s3cret"))
        assert refusal.response.status_code == 400
        assert refusal.response.body == b"offer one of these subprotocols: chat.v2, chat.v1\n"


@pytest.mark.anyio
async def test_origin_allow_list() -> None:
    """Listed origins, wildcard subdomains and Origin-less clients pass; others get 403."""
    async with running_server(origins.app) as server:
        url = ws_url(server, "/feed")

        def welcome(origin: str | None) -> str | bytes:
            with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                return ws.recv(timeout=20)

        for origin in ("https://chat.example.com", "https://eu.chat.example.com", None):
            assert await in_thread(welcome, origin) == "welcome"
        for origin in ("https://evil.example", "http://chat.example.com", "https://example.com"):
            refusal = await in_thread(partial(rejected_status, url, origin=origin))
            assert refusal.response.status_code == 403
            assert refusal.response.body == b"origin not allowed\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({}, "127.0.0.1"),
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": "198.51.100.1, 10.1.2.3"}, "198.51.100.1"),
        ({"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
    ],
)
async def test_client_address_behind_trusted_proxies(headers: dict[str, str], client: str) -> None:
    """Forwarded addresses are believed from trusted proxies and walked from the right."""
    async with running_server(proxies.app) as server:

        def whoami() -> str | bytes:
            with connect(ws_url(server, "/whoami"), additional_headers=headers) as ws:
                return ws.recv(timeout=20)

        assert await in_thread(whoami) == f"{client} via 127.0.0.1"


@pytest.mark.anyio
async def test_forwarded_headers_are_ignored_from_untrusted_peers() -> None:
    """Without a trusted proxy, a client cannot choose its own address with a header."""
    async with running_server(proxies.app, trusted_proxies=()) as server:

        def whoami() -> str | bytes:
            headers = {"X-Forwarded-For": "203.0.113.7"}
            with connect(ws_url(server, "/whoami"), additional_headers=headers) as ws:
                return ws.recv(timeout=20)

        assert await in_thread(whoami) == "127.0.0.1 via 127.0.0.1"


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_max_size_closes_with_1009() -> None:
    """A message of max_size bytes is accepted; one byte more closes the connection with 1009."""
    async with running_server(limits.app) as server:

        def scenario() -> tuple[list[str | bytes], int | None, str]:
            with connect(ws_url(server, "/upload")) as ws:
                ws.send(b"x" * 65536)
                assert ws.recv(timeout=20) == "got 65536 bytes"
                ws.send(b"x" * 65537)
                return recv_until_closed(ws)

        messages, code, _ = await in_thread(scenario)
    assert (messages, code) == ([], 1009)


@pytest.mark.anyio
async def test_max_size_counts_every_fragment_of_a_message() -> None:
    """A fragmented message is limited as a whole: two fragments over max_size get 1009."""
    async with running_server(limits.app) as server:

        def scenario() -> tuple[list[str | bytes], int | None, str]:
            with connect(ws_url(server, "/upload")) as ws:
                ws.send([b"x" * 40000, b"x" * 20000])  # 60 000 bytes in two frames: fine
                assert ws.recv(timeout=20) == "got 60000 bytes"
                # The server refuses as soon as the second fragment's header is read,
                # so its close may arrive while the client is still sending.
                with contextlib.suppress(ConnectionClosed):
                    ws.send([b"x" * 40000, b"x" * 40000])
                return recv_until_closed(ws)

        messages, code, _ = await in_thread(scenario)
    assert (messages, code) == ([], 1009)


@pytest.mark.anyio
async def test_max_connections_answers_503() -> None:
    """Past max_connections, a handshake gets HTTP 503; once one closes, there is room again."""
    async with running_server(limits.app, max_connections=2) as server:
        url = ws_url(server, "/upload")
        first = await in_thread(open_ws, url)
        second = await in_thread(open_ws, url)
        try:
            refusal = await in_thread(rejected_status, url)
            assert refusal.response.status_code == 503
            assert refusal.response.body == b"too many connections\n"
            await in_thread(second.close)
            await wait_until(lambda: len(server.connections) == 1)

            def third() -> str | bytes:
                with connect(url) as ws:
                    ws.send("x")
                    return ws.recv(timeout=20)

            assert await in_thread(third) == "got 1 bytes"
        finally:
            await in_thread(first.close)


@pytest.mark.anyio
async def test_handshake_timeout_answers_408() -> None:
    """A client that does not finish its handshake in time gets HTTP 408 and is dropped."""
    async with running_server(limits.app, handshake_timeout=0.2) as server:
        host, port = server.ports[0]

        def scenario() -> bytes:
            with socket.create_connection((host, port), timeout=20) as sock:
                sock.sendall(b"GET /upload HTTP/1.1\r\nHost: localhost\r\n")  # and nothing more
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                return answer

        answer = await in_thread(scenario)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(b"handshake timed out\n")


@pytest.mark.anyio
async def test_full_mailbox_under_block_stops_reading_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the handler stuck, 8 messages wait in the mailbox, the reader waits, none is lost."""
    gate = anyio.Event()

    class GatedStorage(backpressure.Storage):
        async def insert(self, row: str | bytes) -> None:
            await gate.wait()
            self.rows.append(row)

    storage = GatedStorage()
    monkeypatch.setattr(backpressure.app, "state", storage)
    sent = [f"row {n}" for n in range(40)]
    async with running_server(backpressure.app) as server:
        ws = await in_thread(open_ws, ws_url(server, "/ingest"))
        try:
            for message in sent:
                await in_thread(ws.send, message)
            conn = only_connection(server)
            # One message in the handler, 8 queued, and the reader blocked on the 10th.
            await wait_until(lambda: conn.ref.statistics().waiting_senders == 1)
            stats = conn.ref.statistics()
            assert (stats.depth, stats.capacity, dict(stats.dropped)) == (8, 8, {})
            gate.set()
            await wait_until(lambda: len(storage.rows) == len(sent))
        finally:
            await in_thread(ws.close)
    assert storage.rows == sent
    assert conn.ref.statistics().high_water == 8


@pytest.mark.anyio
async def test_drop_oldest_keeps_the_newest_messages() -> None:
    """A client that does not read loses old ticks, never the latest, and the drops are counted."""
    async with running_server(slow_consumers.app) as server:
        client = await in_thread(
            lambda: RawClient(ws_url(server, "/ticker"), receive_buffer=16 * 1024)
        )
        try:
            client.protocol.send_text(b"burst 2000")
            await in_thread(client.flush)
            await wait_until(lambda: dropped(server, "drop_oldest") > 0)
            texts = await in_thread(client.read_texts_until, "done")
        finally:
            client.close()
    ticks = [int(text[:8]) for text in texts[:-1]]
    assert ticks[-1] == 1999  # the newest tick always survives
    assert ticks == sorted(ticks)
    assert len(ticks) < 2000
    assert dropped(server, "drop_oldest") == 2000 - len(ticks)


@pytest.mark.anyio
async def test_disconnect_policy_closes_a_slow_client_with_1013() -> None:
    """A client that does not read is closed with 1013 once its outbound buffer is full."""
    async with running_server(slow_consumers.app) as server:
        client = await in_thread(
            lambda: RawClient(ws_url(server, "/feed"), receive_buffer=16 * 1024)
        )
        try:
            client.protocol.send_text(b"burst 2000")
            await in_thread(client.flush)
            await wait_until(lambda: dropped(server, "disconnect") > 0)
            frames, code, reason = await in_thread(client.read_until_closed)
        finally:
            client.close()
    assert (code, reason) == (1013, "slow consumer")
    assert b"done" not in [data for _, data in frames]
    # The handler's next send raised ConnectionClosed: the end of the connection, not a crash.
    crashes = server.metrics.registry.get_sample_value(
        "wsup_actor_crashes_total", {"kind": "connection"}
    )
    assert crashes == 0


# --- keepalive -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unanswered_ping_closes_with_1011() -> None:
    """A peer that never answers the keepalive ping is closed with 1011."""
    timings = dataclasses.replace(
        keepalive.app.config.keepalive, ping_interval=0.05, ping_timeout=0.05
    )
    async with running_server(keepalive.app, keepalive=timings) as server:
        client = await in_thread(RawClient, ws_url(server, "/echo"))
        try:
            frames, code, reason = await in_thread(client.read_until_closed)
        finally:
            client.close()
    assert frames[0][0] is Opcode.PING
    assert (code, reason) == (1011, "keepalive ping timeout")


@pytest.mark.anyio
async def test_idle_timeout_closes_with_1001_even_when_pings_are_answered() -> None:
    """Pongs keep a connection alive but are not messages: a silent client is closed, 1001."""
    timings = dataclasses.replace(
        keepalive.app.config.keepalive, ping_interval=0.02, ping_timeout=5.0, idle_timeout=0.2
    )
    async with running_server(keepalive.app, keepalive=timings) as server:

        def scenario() -> tuple[list[str | bytes], int | None, str]:
            with connect(ws_url(server, "/echo")) as ws:
                ws.send("one message pushes the idle deadline back")
                return recv_until_closed(ws)

        messages, code, reason = await in_thread(scenario)
    assert messages == ["one message pushes the idle deadline back"]
    assert (code, reason) == (1001, "idle timeout")


# --- closing -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_server_side_close_codes_and_on_close() -> None:
    """close() flushes first; app codes pass through; on_close sees every code."""
    with structlog.testing.capture_logs() as logs:
        async with running_server(closing.app) as server:
            url = ws_url(server, "/session")

            def scenario(last: str) -> tuple[list[str | bytes], int | None, str]:
                with connect(url) as ws:
                    ws.send("ping")
                    ws.send(last)
                    return recv_until_closed(ws)

            assert await in_thread(scenario, "logout") == (["ping", "goodbye"], 1000, "logged out")
            assert await in_thread(scenario, "kick") == (["ping"], 4001, "kicked by an operator")
    ended = [(e["code"], e["reason"]) for e in logs if e["event"] == "session.ended"]
    assert sorted(ended) == [(1000, "logged out"), (4001, "kicked by an operator")]


@pytest.mark.anyio
async def test_on_close_sees_1001_when_the_server_drains() -> None:
    """A graceful shutdown closes with 1001 "server shutting down", and on_close sees it."""
    with structlog.testing.capture_logs() as logs:
        async with running_server(closing.app) as server:
            ws = await in_thread(open_ws, ws_url(server, "/session"))
            await in_thread(ws.send, "ping")
            assert await in_thread(ws.recv, 20) == "ping"
            await server.shutdown()
            closed = await in_thread(recv_until_closed, ws)
    assert closed == ([], 1001, "server shutting down")
    ended = [(e["code"], e["reason"]) for e in logs if e["event"] == "session.ended"]
    assert ended == [(1001, "server shutting down")]


@pytest.mark.anyio
async def test_invalid_utf8_closes_with_1007_and_protocol_errors_with_1002() -> None:
    """Invalid UTF-8 in a text message gets 1007; an unmasked client frame gets 1002."""
    async with running_server(closing.app) as server:
        url = ws_url(server, "/session")

        def invalid_text() -> int | None:
            client = RawClient(url)
            try:
                client.protocol.send_text(b"\xff\xfe")
                client.flush()
                return client.read_until_closed()[1]
            finally:
                client.close()

        def unmasked_frame() -> int | None:
            client = RawClient(url)
            try:
                client.sock.sendall(b"\x81\x02hi")  # clients must mask every frame
                return client.read_until_closed()[1]
            finally:
                client.close()

        assert await in_thread(invalid_text) == 1007
        assert await in_thread(unmasked_frame) == 1002


@pytest.mark.anyio
async def test_crash_restarts_on_the_same_socket_until_the_intensity_then_1011() -> None:
    """Each crash re-runs on_connect on the same connection; the third closes it with 1011."""
    async with running_server(restarts.app) as server:

        def scenario() -> tuple[list[str | bytes], int | None, str]:
            with connect(ws_url(server, "/fragile")) as ws:
                assert ws.recv(timeout=20) == "ready, restarts so far: 0"
                ws.send("crash")
                assert ws.recv(timeout=20) == "ready, restarts so far: 1"
                ws.send("still here")
                assert ws.recv(timeout=20) == "still here"
                ws.send("crash")
                assert ws.recv(timeout=20) == "ready, restarts so far: 2"
                ws.send("crash")
                return recv_until_closed(ws)

        messages, code, _ = await in_thread(scenario)
    assert (messages, code) == ([], 1011)


# --- services and supervision trees --------------------------------------------------------------


@pytest.mark.anyio
async def test_services_clock_ticks_notes_answer_and_the_subtree_stops_alone() -> None:
    """The clock reaches the room every second; a note is taken ("noted"); when the notes
    subtree stops for good, sends say nobody was there and the server stays ready."""
    async with running_server(services.app) as server:

        def tick_and_note() -> tuple[str | bytes, str | bytes]:
            with connect(ws_url(server, "/clock")) as ws:
                first = ws.recv(timeout=20)
                ws.send("remember this")
                reply = ws.recv(timeout=20)
                while reply != "noted":  # a tick may come first
                    reply = ws.recv(timeout=20)
                return first, reply

        first, reply = await in_thread(tick_and_note)
        assert isinstance(first, str)
        assert first.isdigit()
        assert reply == "noted"
        assert sample(server, "wsup_supervisor_escalations_total") == 0
        # Stop the optional subtree for good (as past its intensity): the rest runs on.
        notebook = next(c.sup for c in server.system.root._children if c.spec.id == "notebook")
        assert notebook is not None
        notebook.shutdown()
        await notebook.stopped.wait()
        assert not await services.app.send("notes", ("get", "x"))

        def note_again() -> str | bytes:
            with connect(ws_url(server, "/clock")) as ws:
                ws.send("remember this")
                reply = ws.recv(timeout=20)
                while reply not in ("noted", "notes are down"):
                    reply = ws.recv(timeout=20)
                return reply

        assert await in_thread(note_again) == "notes are down"
        assert server.readiness() == (True, "ready")


# --- TLS and listening ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, in PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("openssl is not installed")
    return cert, key


@pytest.mark.anyio
async def test_tls_serves_wss(tls_files: tuple[Path, Path]) -> None:
    """With ServerConfig(ssl=...), clients that trust the certificate talk over wss://."""
    cert, key = tls_files
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLS_CERTFILE", str(cert))
        patch.setenv("TLS_KEYFILE", str(key))
        tls = importlib.import_module("examples.server.tls")
    client_context = ssl.create_default_context(cafile=str(cert))
    async with running_server(tls.app) as server:
        url = ws_url(server, "/echo").replace("ws://", "wss://")

        def echo() -> str | bytes:
            with connect(url, ssl=client_context) as ws:
                ws.send("over TLS")
                return ws.recv(timeout=20)

        assert await in_thread(echo) == "over TLS"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.anyio
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_listens_on_every_configured_host() -> None:
    """One server listens on 127.0.0.1 and ::1; each client sees its own address family."""
    async with running_server(listen.app, hosts=listen.app.config.hosts) as server:
        assert [host for host, _ in server.ports] == ["127.0.0.1", "::1"]

        def family(host: str, port: int) -> str | bytes:
            shown = f"[{host}]" if ":" in host else host
            with connect(f"ws://{shown}:{port}/where") as ws:
                return ws.recv(timeout=20)

        assert [await in_thread(family, *pair) for pair in server.ports] == ["IPv4", "IPv6"]


@pytest.mark.anyio
async def test_bind_failure_is_one_clear_error() -> None:
    """A busy port raises ListenError naming the address and the fix."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = Server(App(), ServerConfig(port=port), metrics=Metrics())
        with pytest.raises(ListenError) as caught:
            await server.serve()
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{port}: Address already in use"
        " — another process uses this port: stop it or choose another with --port"
    )


@pytest.mark.anyio
async def test_serve_raises_listen_error_for_except_star() -> None:
    """``serve()`` reports a bind failure as a ListenError that ``except*`` catches."""
    caught: list[BaseException] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            await serve(App(), ServerConfig(port=port), handle_signals=False)
        except* ListenError as group:
            caught.extend(group.exceptions)
    assert [type(e) for e in caught] == [ListenError]
    error = caught[0]
    assert isinstance(error, ListenError)
    assert (error.host, error.port) == ("127.0.0.1", port)
    assert error.hint == "another process uses this port: stop it or choose another with --port"


# --- HTTP on the same port -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_ops_endpoints_and_plain_http_route() -> None:
    """/healthz, /readyz, /metrics and the app's GET / answer on the WebSocket port."""
    async with running_server(ops.app) as server:
        health = await in_thread(get_url, http_url(server, "/healthz"))
        ready = await in_thread(get_url, http_url(server, "/readyz"))
        metrics = await in_thread(get_url, http_url(server, "/metrics"))
        page = await in_thread(get_url, http_url(server, "/"))
        plain_get_on_ws_route = await in_thread(get_url, http_url(server, "/echo"))
    assert health == (200, "text/plain; charset=utf-8", "ok\n")
    assert ready == (200, "text/plain; charset=utf-8", "ready\n")
    assert metrics[0] == 200
    assert metrics[1].startswith("text/plain")
    assert "wsup_connections_accepted_total" in metrics[2]
    assert page == (200, "text/html; charset=utf-8", ops.PAGE)
    assert plain_get_on_ws_route[0] == 426


def http_status(url: str) -> int:
    """Return the HTTP status of ``GET url``."""
    try:
        with urllib.request.urlopen(url, timeout=20):
            pass
    except urllib.error.HTTPError as error:
        with error:  # it holds the response and its socket
            return error.code
    return 200


@pytest.mark.anyio
async def test_unknown_paths_other_methods_and_the_metrics_port() -> None:
    """404 off the routes; metrics_port serves the three ops paths and nothing else."""
    async with running_server(ops.app, metrics_port=0) as server:
        assert await in_thread(http_status, http_url(server, "/nowhere")) == 404
        host, port = server.metrics_ports[0]
        ops_port = f"http://{host}:{port}"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert await in_thread(http_status, ops_port + path) == 200
        assert await in_thread(http_status, ops_port + "/") == 404


# --- graceful shutdown ---------------------------------------------------------------------------


def _serve_with_fake_clock(app: App, **config: Any) -> tuple[Server, FakeClock]:
    clock = FakeClock()
    settings = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0, **config)
    return Server(app, settings, metrics=Metrics(), clock=clock), clock


@pytest.mark.anyio
async def test_drain_answers_queued_jobs_then_closes_with_1001() -> None:
    """Jobs already in the mailbox run and are answered; then the close is 1001."""
    async with running_server(draining.app, readiness_grace=0.0) as server:
        ws = await in_thread(open_ws, ws_url(server, "/jobs"))
        for _ in range(3):
            await in_thread(ws.send, "0.05")
        conn = only_connection(server)
        await wait_until(lambda: conn.ref.statistics().received == 3)
        await server.shutdown()
        messages, code, reason = await in_thread(recv_until_closed, ws)
    assert messages == ["done in 0.05 s"] * 3
    assert (code, reason) == (1001, "server shutting down")


@pytest.mark.anyio
async def test_readiness_grace_turns_readyz_503_before_the_listeners_close() -> None:
    """During the grace /readyz says 503, new handshakes are still served; then all drain."""
    server, clock = _serve_with_fake_clock(draining.app)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        ws = await in_thread(open_ws, ws_url(server, "/jobs"))
        tg.start_soon(server.shutdown)
        await wait_until(lambda: server.draining)
        assert await in_thread(get_url, http_url(server, "/readyz")) == (
            503,
            "text/plain; charset=utf-8",
            "draining\n",
        )
        late = await in_thread(open_ws, ws_url(server, "/jobs"))  # still accepted
        await in_thread(ws.send, "0")
        assert await in_thread(ws.recv, 20) == "done in 0 s"
        clock.advance(draining.app.config.readiness_grace)
        messages, code, _ = await in_thread(recv_until_closed, ws)
        late_messages, late_code, _ = await in_thread(recv_until_closed, late)
    assert (messages, code) == ([], 1001)
    assert (late_messages, late_code) == ([], 1001)


@pytest.mark.anyio
async def test_drain_timeout_cancels_what_is_left() -> None:
    """A job still running at the drain deadline is cancelled; the socket is dropped."""
    server, clock = _serve_with_fake_clock(draining.app, readiness_grace=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        ws = await in_thread(open_ws, ws_url(server, "/jobs"))
        await in_thread(ws.send, "3600")
        conn = only_connection(server)
        await wait_until(lambda: conn.ref.statistics().delivered == 1)
        tg.start_soon(server.shutdown)
        await wait_until(lambda: server.draining and not server.accepting)
        await anyio.wait_all_tasks_blocked()
        clock.advance(draining.app.config.drain_timeout)
        messages, code, _ = await in_thread(recv_until_closed, ws)
        # The handler still runs: it gets close_timeout more seconds, then is cancelled.
        await anyio.wait_all_tasks_blocked()
        clock.advance(server.config.close_timeout)
    assert (messages, code) == ([], None)


# --- running programmatically --------------------------------------------------------------------


@pytest.mark.anyio
async def test_serve_while_runs_the_server_around_the_work() -> None:
    """``Server`` + ``tg.start(server.serve)`` gives a listening server until shutdown()."""
    seen: list[str | bytes] = []

    async def work(url: str) -> None:
        def echo() -> None:
            with connect(url) as ws:
                ws.send("embedded")
                seen.append(ws.recv(timeout=20))

        await in_thread(echo)

    await programmatic.serve_while(work)
    assert seen == ["embedded"]


@pytest.mark.anyio
async def test_serve_function_reports_its_server_through_task_status() -> None:
    """``serve()`` started with ``tg.start`` hands back the Server, which shutdown() stops."""
    async with anyio.create_task_group() as tg:
        config = ServerConfig(port=0)
        server: Server = await tg.start(
            lambda task_status: serve(
                programmatic.app, config, handle_signals=False, task_status=task_status
            )
        )
        host, port = server.ports[0]

        def echo() -> str | bytes:
            with connect(f"ws://{host}:{port}/echo") as ws:
                ws.send("served")
                return ws.recv(timeout=20)

        assert await in_thread(echo) == "served"
        await server.shutdown()


# --- the command line ----------------------------------------------------------------------------


class CLI:
    """A ``python -m supervisor serve`` process whose JSON log lines can be awaited."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WSUP_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "serve", *args],
            cwd=ROOT,
            env={**clean, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, event: str) -> dict[str, Any]:
        """Return the next JSON log line whose event is ``event``."""
        while True:
            try:
                line = self.lines.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"no {event} log line; got {self.seen}")
            if line is None:
                pytest.fail(f"the server exited before {event}; it said {self.seen}")
            self.seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                assert isinstance(record, dict)
                return record

    def url(self, started: dict[str, Any], path: str) -> str:
        """The ws:// URL of ``path`` on the address the server.started line reports."""
        return f"ws://{started['listen'][0]}{path}"

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the server process."""
        self.process.send_signal(signum)

    def exit_code(self) -> int:
        """Wait for the process to exit; return its status."""
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        """Kill the process if a failed test left it running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop the server process runs on (``--backend``)."""
    name: str = request.param
    return name


@pytest.fixture
def cli() -> Iterator[Callable[..., CLI]]:
    """Start CLI processes; kill any a test leaves behind."""
    started: list[CLI] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CLI:
        process = CLI(*args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


_SERVE = ("--port", "0", "--log-format", "json")


@pytest.mark.e2e
def test_sigterm_drains_with_1001_and_exits_0(cli: Callable[..., CLI], backend: str) -> None:
    """SIGTERM: open connections are closed with 1001 and the process exits with status 0."""
    server = cli("examples.server.quickstart:app", *_SERVE, "--backend", backend)
    started = server.wait_for("server.started")
    assert started["backend"] == ("trio" if backend == "trio" else "asyncio+uvloop")
    with connect(server.url(started, "/echo")) as ws:
        ws.send("hi")
        assert ws.recv(timeout=20) == "hi"
        server.signal(signal.SIGTERM)
        assert recv_until_closed(ws)[1:] == (1001, "server shutting down")
    server.wait_for("server.drain_completed")
    assert server.exit_code() == 0


@pytest.mark.e2e
def test_sigusr1_stops_accepting_but_keeps_serving(cli: Callable[..., CLI], backend: str) -> None:
    """SIGUSR1 closes the listeners; open connections go on until SIGTERM drains them."""
    server = cli("examples.server.quickstart:app", *_SERVE, "--backend", backend)
    started = server.wait_for("server.started")
    url = server.url(started, "/echo")
    with connect(url) as ws:
        server.signal(signal.SIGUSR1)
        server.wait_for("server.stopped_accepting")
        ws.send("still served")
        assert ws.recv(timeout=20) == "still served"
        # Refused, or reset if it raced the listener's close: never served.
        with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
            connect(url, open_timeout=20)
        server.signal(signal.SIGTERM)
        assert recv_until_closed(ws)[1] == 1001
    assert server.exit_code() == 0


@pytest.mark.e2e
def test_second_signal_forces_the_stop(cli: Callable[..., CLI], backend: str) -> None:
    """A second SIGTERM while connections drain aborts them at once; the process exits 0.

    The example's app with a shorter readiness grace: the signal comes once it is over.
    """
    args = ("tests.e2e.apps.short_grace_app:app", *_SERVE, "--backend", backend)
    server = cli(*args, "--drain-timeout", "600")
    started = server.wait_for("server.started")
    with connect(server.url(started, "/jobs")) as ws:
        ws.send("3600")
        server.signal(signal.SIGTERM)
        server.wait_for("server.stopped_accepting")  # after the example's readiness grace
        server.signal(signal.SIGTERM)
        server.wait_for("server.forced_stop")
        assert recv_until_closed(ws) == ([], None, "")
    assert server.exit_code() == 0


@pytest.mark.e2e
def test_second_signal_during_the_readiness_grace_forces_the_stop(
    cli: Callable[..., CLI],
) -> None:
    """A second SIGTERM during the readiness grace stops the process cleanly (status 0)."""
    server = cli("examples.server.draining:app", *_SERVE, "--drain-timeout", "600")
    started = server.wait_for("server.started")
    with connect(server.url(started, "/jobs")) as ws:
        # The stuck job holds the actor system's exit (close_timeout) past the grace.
        ws.send("3600")
        server.signal(signal.SIGTERM)
        server.wait_for("server.drain_started")
        server.signal(signal.SIGTERM)
        server.wait_for("server.forced_stop")
        assert recv_until_closed(ws) == ([], None, "")
    assert server.exit_code() == 0


@pytest.mark.e2e
def test_every_option_reads_its_wsup_variable(cli: Callable[..., CLI]) -> None:
    """WSUP_HOST, _PORT, _BACKEND, _LOG_FORMAT, _LOG_LEVEL and _DRAIN_TIMEOUT are obeyed."""
    env = {
        "WSUP_HOST": "127.0.0.1",
        "WSUP_PORT": "0",
        "WSUP_BACKEND": "trio",
        "WSUP_LOG_FORMAT": "json",
        "WSUP_LOG_LEVEL": "debug",
        "WSUP_DRAIN_TIMEOUT": "7",
    }
    server = cli("examples.server.quickstart:app", env=env)
    started = server.wait_for("server.started")
    assert started["backend"] == "trio"
    assert started["listen"][0].startswith("127.0.0.1:")
    with connect(server.url(started, "/echo")):
        assert server.wait_for("connection.opened")["level"] == "debug"
    server.signal(signal.SIGTERM)
    assert server.wait_for("server.drain_started")["timeout"] == 7.0
    assert server.exit_code() == 0


@pytest.mark.e2e
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_command_line_options_win_over_the_app_config(cli: Callable[..., CLI]) -> None:
    """Without --host, the app's ServerConfig.hosts are used; --host replaces them."""
    from_config = cli("examples.server.listen:app", *_SERVE)
    listen = from_config.wait_for("server.started")["listen"]
    assert [address.rsplit(":", 1)[0] for address in listen] == ["127.0.0.1", "::1"]
    from_option = cli("examples.server.listen:app", *_SERVE, "--host", "127.0.0.1")
    assert len(from_option.wait_for("server.started")["listen"]) == 1
    for server in (from_config, from_option):
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {"WSUP_PORT": "http"}, "WSUP_PORT must be an integer, got 'http'"),
        (("--port", "70000"), {}, "port must be in 0..65535, got 70000"),
        (
            (),
            {"WSUP_BACKEND": "curio"},
            "WSUP_BACKEND must be asyncio or trio, got 'curio'",
        ),
    ],
)
def test_usage_errors_print_one_line_and_exit_2(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    """A bad option or variable: one ``wsup: error:`` line on stderr and status 2."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WSUP_")}
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "examples.server.quickstart:app", *args],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"wsup: error: {message}"]


@pytest.mark.e2e
def test_bind_failure_prints_one_line_and_exits_1() -> None:
    """A busy port: one ``wsup: error:`` line on stderr naming the address and the fix; status 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WSUP_")}
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "serve", "examples.server.quickstart:app",
             "--port", str(port), "--log-format", "json"],
            cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"wsup: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        " — another process uses this port: stop it or choose another with --port"
    ]
