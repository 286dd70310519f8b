"""The asyncio fast path: plain TCP connections handled in transport callbacks.

On asyncio without TLS, handshakes are decided and connections served in
transport callbacks (``supervisor.server._aio``); trio and TLS use reader and writer
tasks. Both paths run every other test in the suite; these tests pin which
path a connection takes and the corners only the callback path has.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from examples.echo import Echo
from examples.echo import app as echo_app
from supervisor import Accept, App, Handler, Request
from supervisor.server import _aio
from supervisor.server._server import _needs_no_start
from tests.helpers.clients import open_ws
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

pytestmark = pytest.mark.anyio


async def test_plain_tcp_connections_run_in_callbacks_on_asyncio_only(
    anyio_backend_name: str,
) -> None:
    """An echo connection is served in transport callbacks on asyncio, by tasks on trio."""
    async with running_server(echo_app) as server:
        ws = await in_thread(open_ws, ws_url(server, "/echo"))
        try:
            await in_thread(ws.send, "ping")
            assert await in_thread(ws.recv, 5) == "ping"
            (conn,) = server.connections
            assert conn.uses_callbacks is (anyio_backend_name == "asyncio")
        finally:
            await in_thread(ws.close)
        await eventually(lambda: not server.connections)
    assert sample(server, "wsup_connections_closed_total", reason="normal", initiator="client") == 1


async def _welcome_later(request: Request) -> Accept:
    await anyio.sleep(0.01)  # really suspends: on asyncio, outside any task at first
    return Accept(headers=[("X-Welcome", request.path)])


def _plain_returning_awaitable(request: Request) -> Awaitable[Accept]:
    return _welcome_later(request)


@pytest.mark.parametrize(
    "hook",
    [_welcome_later, _plain_returning_awaitable],
    ids=["async", "plain-returning-awaitable"],
)
async def test_hooks_that_suspend_complete_the_handshake(hook: Callable[[Request], Any]) -> None:
    """A hook that awaits something real completes the handshake on every path
    (on asyncio, the rest of the decision runs in a task)."""
    app = App()
    app.handshake(hook)
    app.add_route("/echo", Echo)
    async with running_server(app) as server:

        def talk() -> tuple[str | None, str | bytes]:
            with open_ws(ws_url(server, "/echo")) as ws:
                assert ws.response is not None
                ws.send("hello")
                return ws.response.headers.get("X-Welcome"), ws.recv(timeout=5)

        assert await in_thread(talk) == ("/echo", "hello")
    assert sample(server, "wsup_handshakes_total", result="accepted") == 1


class _Burst(Handler):
    """Sends ``n`` numbered messages, then "done", for a message ``n``."""

    async def on_message(self, message: str | bytes) -> None:
        for number in range(int(message)):
            await self.conn.send(f"{number:05d}")
        await self.conn.send("done")


async def test_a_burst_of_sends_arrives_complete_and_in_order() -> None:
    """Sends made in one turn of the loop leave in one write; nothing is lost or reordered."""
    app = App()
    app.add_route("/burst", _Burst)
    async with running_server(app) as server:

        def burst() -> list[str | bytes]:
            with open_ws(ws_url(server, "/burst")) as ws:
                ws.send("3000")
                received: list[str | bytes] = []
                while not received or received[-1] != "done":
                    received.append(ws.recv(timeout=5))
                return received

        received = await in_thread(burst)
    assert received == [f"{number:05d}" for number in range(3000)] + ["done"]
    assert sample(server, "wsup_messages_sent_total", kind="text") == 3001


class _Greeter(Handler):
    """Says hello on connect: its actor has work from the start."""

    async def on_connect(self) -> None:
        await self.conn.send("hello")


def test_which_handlers_wait_for_their_first_message() -> None:
    """Only a Handler that does nothing until a message comes may start on demand."""

    class Closer(Handler):
        async def on_close(self, code: int, reason: str) -> None:
            pass

    class Built(Handler):
        def __init__(self, greeting: str = "hi") -> None:
            self.greeting = greeting

    assert _needs_no_start(Echo)
    assert not _needs_no_start(_Greeter)
    assert not _needs_no_start(Closer)
    assert not _needs_no_start(Built)
    assert not _needs_no_start(lambda: Echo())  # a factory: what it builds is unknown


async def test_an_idle_echo_connection_has_no_task_until_a_message_comes(
    anyio_backend_name: str,
) -> None:
    """On asyncio an Echo connection's actor starts at its first message; on_connect starts
    at once; closing an actor that never ran finishes it without a task."""
    app = App()
    app.add_route("/echo", Echo)
    app.add_route("/greet", _Greeter)
    async with running_server(app) as server:
        sup = server._conn_sup
        assert sup is not None
        parked = anyio_backend_name == "asyncio"
        idle = await in_thread(open_ws, ws_url(server, "/echo"))
        quiet = await in_thread(open_ws, ws_url(server, "/echo"))
        try:
            await eventually(lambda: len(server.connections) == 2)
            assert len(sup._bare) == 0  # trio runs children in its task group instead
            greeter = await in_thread(open_ws, ws_url(server, "/greet"))
            assert await in_thread(greeter.recv, 5) == "hello"
            await in_thread(greeter.close)
            await in_thread(idle.send, "ping")
            assert await in_thread(idle.recv, 5) == "ping"
            # The greeter's task ends once its connection has closed; the echo's runs on.
            await eventually(lambda: len(sup._bare) == (1 if parked else 0))
        finally:
            await in_thread(idle.close)
            await in_thread(quiet.close)
        await eventually(lambda: not server.connections and not sup._bare)
        assert sup.children == []
    assert sample(server, "wsup_connections_closed_total", reason="normal", initiator="client") == 3
    assert sample(server, "wsup_actors", kind="connection") == 0


_UPGRADE = (
    "GET /echo?half_closed={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def _head(sock: socket.socket) -> bytes:
    """What ``sock`` reads until the end of an answer's head (or the end of the stream)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# The callback path is asyncio's: this one runs there only (not skipped on trio).
@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop")]
)
async def test_requests_readable_in_one_poll_are_decided_a_few_per_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of requests readable at once is decided at most ``TURN_REQUESTS`` per
    turn of the loop, and every one is answered; a request followed by the end of
    its stream is decided when the end comes (it cannot wait with it)."""
    monkeypatch.setattr(_aio, "ACCEPT_BATCH", 1024)  # all accepted in one wake-up
    monkeypatch.setattr(_aio, "TURN_REQUESTS", 4)
    loop = asyncio.get_running_loop()
    turn = 0
    seen: list[tuple[int, bool]] = []

    def tick() -> None:
        nonlocal turn
        turn += 1
        if len(seen) < 40:
            loop.call_soon(tick)

    app = App()
    app.add_route("/echo", Echo)

    @app.handshake
    def note_turn(request: Request) -> None:
        seen.append((turn, request.query["half_closed"] == ["1"]))

    async with running_server(app) as server:
        # Connected and sent without letting the loop run: all readable in the next poll.
        clients = [socket.create_connection(server.ports[0]) for _ in range(40)]
        try:
            for number, client in enumerate(clients):
                half_closed = number % 4 == 3
                client.sendall(_UPGRADE.format(int(half_closed)).encode())
                if half_closed:
                    client.shutdown(socket.SHUT_WR)
            loop.call_soon(tick)
            heads = await in_thread(lambda: [_head(client) for client in clients])
        finally:
            for client in clients:
                client.close()
    assert [head.split(b"\r\n", 1)[0] for head in heads] == [
        b"HTTP/1.1 101 Switching Protocols"
    ] * 40
    assert len(seen) == 40
    per_turn = Counter(turn for turn, half_closed in seen if not half_closed)
    assert max(per_turn.values()) <= 4
    assert len(per_turn) >= 30 // 4
