"""Tests for Connection: what handlers call, how it closes, and its outbound policies.

A server runs in-process; the peer is websockets' Sans-I/O ``ClientProtocol``
driven over a loopback socket from the test's own event loop, so a test
decides exactly when the peer reads, writes and closes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from actors import Down
from actors._actor import Envelope
from supervisor import (
    App,
    Connection,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionState,
    Handler,
    KeepaliveConfig,
    OutboundFull,
    Server,
    SlowConsumerPolicy,
)
from tests.helpers.metrics import sample
from tests.helpers.server import running_server
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio

_ENDED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Peer:
    """A WebSocket client whose every read and write the test controls."""

    def __init__(self, stream: anyio.abc.SocketStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.pending: list[Frame] = []

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send(data)

    async def send(self, message: str | bytes) -> None:
        """Send a text (str) or binary (bytes) message."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self._flush()

    async def _read(self) -> bool:
        try:
            data = await self.stream.receive()
        except _ENDED:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        self.pending.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
        await self._flush()  # pongs and the close echo
        return True

    async def recv(self) -> str | bytes:
        """Return the next data message (unfragmented, as the server sends them)."""
        with anyio.fail_after(10):
            while True:
                while self.pending:
                    frame = self.pending.pop(0)
                    if frame.opcode is Opcode.TEXT:
                        return bytes(frame.data).decode()
                    if frame.opcode is Opcode.BINARY:
                        return bytes(frame.data)
                    assert frame.opcode is not Opcode.CLOSE, self.protocol.close_rcvd
                if not await self._read():
                    raise EOFError("the server closed the socket")

    async def closed(self) -> Close | None:
        """Read (answering the close) until the server closes the socket; return its close."""
        with anyio.fail_after(10):
            while await self._read():
                pass
        return self.protocol.close_rcvd

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake."""
        self.protocol.send_close(code, reason)
        await self._flush()


@asynccontextmanager
async def peer(server: Server, path: str) -> AsyncIterator[Peer]:
    """Connect a :class:`Peer` to ``path`` and complete the opening handshake."""
    host, port = server.ports[0]
    protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}{path}"))
    async with await anyio.connect_tcp(host, port) as stream:
        protocol.send_request(protocol.connect())
        for data in protocol.data_to_send():
            await stream.send(data)
        with anyio.fail_after(10):
            while True:
                protocol.receive_data(await stream.receive())
                events = protocol.events_received()
                if events:
                    break
        response = events[0]
        assert isinstance(response, Response)
        assert response.status_code == 101, response
        client = Peer(stream, protocol)
        client.pending.extend(e for e in events[1:] if isinstance(e, Frame))
        yield client


def serve_handler(handler: Callable[..., Handler], **route: Any) -> App:
    """An app with ``handler`` on /t."""
    app = App()
    app.add_route("/t", handler, **route)
    return app


class Probe(Handler):
    """Hands its connection to the test and runs what the test queues."""

    def __init__(self, conns: list[Connection], closes: list[tuple[int, str]]) -> None:
        self.conns = conns
        self.closes = closes

    async def on_connect(self) -> None:
        self.conns.append(self.conn)

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)

    async def on_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


@asynccontextmanager
async def probed(**route: Any) -> AsyncIterator[tuple[Server, list[Connection], list[Any]]]:
    """A server whose /t connections are :class:`Probe` handlers."""
    conns: list[Connection] = []
    closes: list[tuple[int, str]] = []
    config = route.pop("config", {})
    app = serve_handler(Probe, kwargs={"conns": conns, "closes": closes}, **route)
    async with running_server(app, **config) as server:
        yield server, conns, closes


# --- sending --------------------------------------------------------------------------------------


async def test_send_keeps_the_type_and_counts() -> None:
    """str goes out as text and bytes as binary; message and byte counters follow."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("hé")
        await client.send(b"\x00\x01")
        assert await client.recv() == "hé"
        assert await client.recv() == b"\x00\x01"
        (conn,) = conns
        assert conn.messages_in == 2
        assert conn.messages_out == 2
        assert conn.state is ConnectionState.OPEN
        assert conn.subprotocol is None
        assert conn.remote_address[0] == "127.0.0.1"
        assert sample(server, "wsup_messages_sent_total", kind="text") == 1
        assert sample(server, "wsup_messages_sent_total", kind="binary") == 1


async def test_empty_messages_are_messages() -> None:
    """A zero-byte message is delivered, echoed and counted like any other."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("")
        await client.send(b"")
        assert await client.recv() == ""
        assert await client.recv() == b""
        assert conns[0].messages_in == 2
        assert sample(server, "wsup_messages_received_total", kind="text") == 1
        assert sample(server, "wsup_messages_received_total", kind="binary") == 1
        assert sample(server, "wsup_messages_sent_total", kind="text") == 1


async def test_send_takes_bytearray_and_memoryview_as_binary() -> None:
    """Typed ``str | bytes``, but other bytes-like objects also go out as binary."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("hi")
        await client.recv()
        (conn,) = conns
        await conn.send(bytearray(b"ab"))  # type: ignore[arg-type]
        await conn.send(memoryview(b"cd"))  # type: ignore[arg-type]
        assert await client.recv() == b"ab"
        assert await client.recv() == b"cd"


async def test_send_refuses_what_is_not_a_message() -> None:
    """Anything but str or bytes is a TypeError, in send and in send_nowait."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("hi")
        await client.recv()
        (conn,) = conns
        with pytest.raises(TypeError, match="not dict"):
            conn.send_nowait({"a": 1})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not int"):
            await conn.send(42)  # type: ignore[arg-type]


async def test_send_after_the_peer_closed_raises_connection_closed_ok() -> None:
    """Once the client closed with 1000, sending raises ConnectionClosedOK with its code."""
    async with probed() as (server, conns, closes), peer(server, "/t") as client:
        await client.send("x")
        await client.recv()
        (conn,) = conns
        await client.close(1000, "bye")
        close = await client.closed()
        assert close is not None
        assert close.code == 1000
        await eventually(lambda: conn.state is ConnectionState.CLOSED)
        with pytest.raises(ConnectionClosedOK) as info:
            conn.send_nowait("late")
        assert (info.value.code, info.value.reason, info.value.initiator) == (1000, "bye", "client")
        assert info.value.address == conn.address
        assert conn.close_info() == (1000, "bye")
    assert closes == [(1000, "bye")]


async def test_send_after_an_error_close_raises_connection_closed_error() -> None:
    """A close with an error code makes later sends raise ConnectionClosedError."""
    async with probed() as (server, conns, closes), peer(server, "/t") as client:
        await client.send("x")
        await client.recv()
        (conn,) = conns
        await client.close(4002, "app error")
        await client.closed()
        await eventually(lambda: conn.state is ConnectionState.CLOSED)
        with pytest.raises(ConnectionClosedError) as info:
            await conn.send("late")
        assert info.value.code == 4002
    assert closes == [(4002, "app error")]


async def test_a_send_that_meets_a_closed_connection_is_not_a_crash() -> None:
    """A handler whose send finds the connection closed just stops: no crash, no restart."""
    sent = anyio.Event()
    go_on = anyio.Event()

    class Slow(Handler):
        async def on_message(self, message: str | bytes) -> None:
            sent.set()
            await go_on.wait()
            await self.conn.send("too late")

    async with running_server(serve_handler(Slow)) as server:
        async with peer(server, "/t") as client:
            await client.send("go")
            with anyio.fail_after(10):
                await sent.wait()
            await client.close()
            await client.closed()
        await eventually(lambda: not server.connections)
        go_on.set()
        await eventually(lambda: server.runtime.statistics().actors.get("connection", 0) == 0)
        assert sample(server, "wsup_actor_crashes_total", kind="connection") == 0
        assert sample(server, "wsup_actor_restarts_total", kind="connection") == 0


async def test_plain_def_callbacks_run_in_a_worker_thread() -> None:
    """A handler written with plain ``def`` callbacks works (they run off the event loop)."""
    threads: list[bool] = []

    class Blocking(Handler):
        def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
            import threading

            threads.append(threading.current_thread() is threading.main_thread())
            anyio.from_thread.run(self.conn.send, f"sync {message!r}")

    async with running_server(serve_handler(Blocking)) as server, peer(server, "/t") as client:
        await client.send("a")
        assert await client.recv() == "sync 'a'"
    assert threads == [False]


async def test_messages_from_other_actors_are_forwarded_to_the_client() -> None:
    """By default, what others send to a connection's address reaches the client
    (str as text, bytes as binary, anything else as JSON)."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("hello")
        await client.recv()
        (conn,) = conns
        await server.app.send(conn.address, "text")
        await server.app.send(conn.address, b"bin")
        await server.app.broadcast({"n": 1})
        assert await client.recv() == "text"
        assert await client.recv() == b"bin"
        assert json.loads(await client.recv()) == {"n": 1}


async def test_bytes_like_messages_from_actors_are_binary_on_every_path() -> None:
    """A bytearray or memoryview from another actor reaches the client as binary,
    whether it skips the mailbox (a send to the address) or goes through it and
    the default ``on_receive`` (a tell to the actor's reference)."""
    async with probed() as (server, conns, _), peer(server, "/t") as client:
        await client.send("hello")
        await client.recv()
        (conn,) = conns
        assert conn.ref is not None
        await server.app.send(conn.address, bytearray(b"sent"))
        await conn.ref.tell(bytearray(b"told"))
        await conn.ref.tell(memoryview(b"view"))
        await conn.ref.tell({"n": 2})
        assert await client.recv() == b"sent"
        assert await client.recv() == b"told"
        assert await client.recv() == b"view"
        assert json.loads(await client.recv()) == {"n": 2}
        assert sample(server, "wsup_actor_crashes_total", kind="connection") == 0


# --- closing from the server side -----------------------------------------------------------------


async def test_close_flushes_then_closes_with_the_code() -> None:
    """conn.close(code, reason) sends what is queued, then the close frame; it returns
    once the socket is closed, and on_close sees the code."""
    async with probed() as (server, conns, closes), peer(server, "/t") as client:
        await client.send("x")
        await client.recv()
        (conn,) = conns
        conn.send_nowait("one")
        conn.send_nowait(b"two")
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.close, 4000, "done here")
            assert await client.recv() == "one"
            assert await client.recv() == b"two"
            close = await client.closed()
        assert close is not None
        assert (close.code, close.reason) == (4000, "done here")
        await eventually(lambda: conn.state is ConnectionState.CLOSED)
        with pytest.raises(ConnectionClosedError):
            conn.send_nowait("after")
        await conn.close()  # idempotent: returns at once
    assert closes == [(4000, "done here")]


async def test_stopping_the_actor_closes_with_1000() -> None:
    """ref.stop() ends the actor and the connection closes normally with 1000."""
    async with probed() as (server, conns, closes), peer(server, "/t") as client:
        await client.send("x")
        await client.recv()
        (conn,) = conns
        assert conn.ref is not None
        conn.ref.stop()
        close = await client.closed()
        assert close is not None
        assert close.code == 1000
        await eventually(lambda: not server.connections)
    assert closes == [(1000, "")]


async def test_drain_finishes_the_mailbox_then_closes_with_1001() -> None:
    """Server shutdown: queued messages are handled and flushed, then close 1001."""
    release = anyio.Event()
    handled: list[str | bytes] = []

    class Busy(Handler):
        async def on_message(self, message: str | bytes) -> None:
            await release.wait()
            handled.append(message)
            await self.conn.send(message)

    closes: list[int] = []
    async with running_server(serve_handler(Busy)) as server, peer(server, "/t") as client:
        for n in range(3):
            await client.send(str(n))
        await eventually(lambda: sample(server, "wsup_messages_received_total", kind="text") == 3)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown)
            await eventually(lambda: server.draining)
            release.set()
            replies = [await client.recv() for _ in range(3)]
            close = await client.closed()
            assert close is not None
            closes.append(close.code)
    assert replies == ["0", "1", "2"]
    assert handled == ["0", "1", "2"]
    assert closes == [1001]


async def test_idle_timeout_closes_a_silent_connection_with_1001() -> None:
    """With idle_timeout, a client that sends no message is closed with 1001."""
    keepalive = KeepaliveConfig(ping_interval=None, idle_timeout=0.2)
    async with probed(config={"keepalive": keepalive}) as (server, _, closes):
        async with peer(server, "/t") as client:
            close = await client.closed()
        assert close is not None
        assert (close.code, close.reason) == (1001, "idle timeout")
        await eventually(lambda: not server.connections)
        assert sample(server, "wsup_connections_closed_total", reason="timeout", initiator="server")
    assert closes == [(1001, "idle timeout")]


# --- slow consumers -------------------------------------------------------------------------------


async def test_block_policy_makes_the_sender_wait_and_loses_nothing() -> None:
    """Under ``block``, send waits for room while the client does not read; nothing is
    dropped and everything arrives in order once it reads."""
    finished = anyio.Event()
    peak: list[int] = []

    class Flood(Handler):
        async def on_message(self, message: str | bytes) -> None:
            for n in range(400):
                await self.conn.send(n.to_bytes(4, "big") + bytes(20_000))
                peak.append(self.conn.buffered_bytes)
            finished.set()

    app = serve_handler(Flood, outbound_limit=50_000, slow_consumer=SlowConsumerPolicy.BLOCK)
    async with running_server(app) as server, peer(server, "/t") as client:
        await client.send("go")
        # The sender is held back while nobody reads (8 MB will not fit in socket buffers).
        await eventually(lambda: len(peak) > 0)
        assert not finished.is_set()
        received = [await client.recv() for _ in range(400)]
        with anyio.fail_after(10):
            await finished.wait()
    numbers = [int.from_bytes(m[:4], "big") for m in received if isinstance(m, bytes)]
    assert numbers == list(range(400))
    assert max(peak) <= 50_000
    assert sample(server, "wsup_messages_dropped_total", policy="block_timeout") == 0


async def test_send_nowait_raises_outbound_full_under_block() -> None:
    """Under ``block``, send_nowait on a full buffer raises OutboundFull instead of waiting."""
    errors: list[OutboundFull] = []

    class Eager(Handler):
        async def on_message(self, message: str | bytes) -> None:
            try:
                for _ in range(10_000):
                    self.conn.send_nowait(bytes(10_000))
            except OutboundFull as exc:
                errors.append(exc)

    app = serve_handler(Eager, outbound_limit=30_000, slow_consumer=SlowConsumerPolicy.BLOCK)
    async with running_server(app) as server, peer(server, "/t") as client:
        await client.send("go")
        await eventually(lambda: bool(errors))
    (error,) = errors
    assert error.limit == 30_000


class Flood(Handler):
    """On any message, sends numbered 10 kB binary messages to a peer that does not read,
    until ``until(conn)`` holds (or a bound is reached), then reports."""

    def __init__(self, until: Callable[[Connection], bool], report: dict[str, int]) -> None:
        self.until = until
        self.report = report

    async def on_message(self, message: str | bytes) -> None:
        sent = 0
        while sent < 10_000 and not self.until(self.conn):
            await self.conn.send(sent.to_bytes(4, "big") + bytes(10_000))
            sent += 1
        self.report["buffered"] = self.conn.buffered_bytes
        for _ in range(5):  # more after the condition held
            await self.conn.send(sent.to_bytes(4, "big") + bytes(10_000))
            sent += 1
        self.report["sent"] = sent


async def test_drop_newest_drops_what_does_not_fit() -> None:
    """Under ``drop_newest``, messages that do not fit are dropped and counted: a peer that
    does not read gets exactly the messages sent before the buffer filled, in order."""
    report: dict[str, int] = {}

    def dropping(conn: Connection) -> bool:
        assert app.server is not None
        return sample(app.server, "wsup_messages_dropped_total", policy="drop_newest") > 0

    app = serve_handler(
        Flood,
        kwargs={"until": dropping, "report": report},
        outbound_limit=50_000,
        slow_consumer=SlowConsumerPolicy.DROP_NEWEST,
    )
    async with running_server(app) as server, peer(server, "/t") as client:
        await client.send("go")
        await eventually(lambda: "sent" in report)
        dropped = sample(server, "wsup_messages_dropped_total", policy="drop_newest")
        assert dropped >= 6
        received = [await client.recv() for _ in range(report["sent"] - int(dropped))]
    numbers = [int.from_bytes(m[:4], "big") for m in received if isinstance(m, bytes)]
    assert numbers == list(range(len(received)))
    assert sample(server, "wsup_dead_letters_total", reason="dropped") == dropped


async def test_buffered_bytes_follow_the_outbound_buffer() -> None:
    """buffered_bytes grows while the peer does not read, never past the limit, and
    returns to zero once the peer has read everything."""
    report: dict[str, int] = {}
    conns: list[Connection] = []

    def buffering(conn: Connection) -> bool:
        conns.append(conn)
        return conn.buffered_bytes > 0

    app = serve_handler(
        Flood,
        kwargs={"until": buffering, "report": report},
        outbound_limit=1_000_000,
        slow_consumer=SlowConsumerPolicy.BLOCK,
    )
    async with running_server(app) as server, peer(server, "/t") as client:
        await client.send("go")
        await eventually(lambda: "buffered" in report)
        assert 0 < report["buffered"] <= 1_000_000
        await eventually(lambda: "sent" in report)
        received = [await client.recv() for _ in range(report["sent"])]
        assert len(received) == report["sent"]
        await eventually(lambda: conns[0].buffered_bytes == 0)
        assert sample(server, "wsup_outbound_buffer_bytes") == 0


async def test_connection_states_are_counted_in_the_gauge() -> None:
    """wsup_connections{state} shows an open connection, then nothing once it closed."""
    async with probed() as (server, conns, _):
        async with peer(server, "/t") as client:
            await client.send("x")
            await client.recv()
            assert sample(server, "wsup_connections", state="open") == 1
            await client.close()
            await client.closed()
        await eventually(lambda: not server.connections)
        for state in ("handshaking", "open", "draining", "closing"):
            assert sample(server, "wsup_connections", state=state) == 0
        (conn,) = conns
        assert conn.state is ConnectionState.CLOSED
        with pytest.raises(ConnectionClosed):
            conn.send_nowait("x")


class _Silent(Handler):
    """No hooks: its actor is parked until a message comes (it ends unstarted)."""


class _Hooked(Handler):
    """The same with an ``on_close``: its actor runs, and drains on the close."""

    async def on_close(self, code: int, reason: str) -> None:
        pass


@pytest.mark.parametrize("handler", [_Silent, _Hooked])
async def test_a_client_close_ends_a_never_started_actor_as_a_running_one(
    handler: type[Handler],
) -> None:
    """A client's close ends a connection whose actor never ran (parked) exactly as
    one whose actor ran: the echo, the close counted by code and initiator, the
    gauges back to zero, the actor's address freed and its watcher told."""
    async with running_server(serve_handler(handler)) as server:
        watcher = server.runtime.create_cell(_Silent)
        async with peer(server, "/t") as client:
            await eventually(lambda: len(server.connections) == 1)
            (conn,) = server.connections
            assert conn.cell is not None
            watcher.watch(conn.cell)
            await client.close(4000, "bye")
            echo = await client.closed()
        assert echo is not None
        assert (echo.code, echo.reason) == (4000, "bye")
        await eventually(lambda: not server.connections)
        assert conn.state is ConnectionState.CLOSED
        assert conn.close_info() == (4000, "bye")
        assert sample(server, "wsup_connections_closed_total", reason="other", initiator="client")
        assert sample(server, "wsup_actors", kind="connection") == 0
        for state in ("handshaking", "open", "draining", "closing"):
            assert sample(server, "wsup_connections", state=state) == 0
        assert server.runtime.lookup(conn.address) is None
        assert conn.cell.termination is not None
        assert conn.cell.termination.kind == "drained"
        down = watcher.mailbox.get_nowait()
        assert isinstance(down, Envelope)
        assert isinstance(down.message, Down)
        assert down.message.address == conn.address
