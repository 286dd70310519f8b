"""Graceful drain, forced stop and "stop accepting": real signals, real sockets.

The signal tests run ``python -m supervisor serve tests.e2e.apps.slow_app:app``
as a child process so that SIGTERM, SIGINT and SIGUSR1 are real, and follow its
JSON log. The slow app (see its docstring) guarantees that every ``/load``
connection still has all its messages queued when the drain starts; a silent
``/gate`` client, which never answers the server's close frame, holds the drain
open while the tests try to connect to the draining server. The last tests
drive ``Server.shutdown()`` and ``Server.stop_accepting()`` in-process on
asyncio (uvloop) and trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.sync.client import ClientConnection as SyncClientConnection
from websockets.sync.client import connect as sync_connect
from websockets.uri import parse_uri

from actors import Clock, FakeClock
from examples.echo import app as echo_app
from supervisor import (
    ActorSystem,
    App,
    Handler,
    Server,
    ServerConfig,
    Supervisor,
    SupervisorSpec,
)
from supervisor.metrics import Metrics
from tests.e2e.apps import slow_app
from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.clients import http_get
from tests.helpers.raw import kept_alive

pytestmark = pytest.mark.e2e

SLOW_APP = "tests.e2e.apps.slow_app:app"
CLIENTS = 1000
"""Connections open when SIGTERM arrives (each is one file descriptor here and one there)."""
LOAD = 25
"""Messages each of them still has queued then."""


# --- Clients ------------------------------------------------------------------------


class BlockingClient:
    """A WebSocket client on a blocking socket, driven by websockets' Sans-I/O protocol.

    It never writes on its own: frames the protocol wants to send (a pong, the
    answer to the server's close frame) are sent only by :meth:`flush`. So a
    test decides whether the server's closing handshake ever completes.
    """

    def __init__(self, url: str, *, timeout: float = 20.0) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri)
        self.sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        self._events: deque[Any] = deque()
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        response = self._next_event()
        assert isinstance(response, Response), response
        assert response.status_code == 101, response

    def flush(self) -> None:
        """Send what the protocol has queued (the end-of-stream marker is ignored)."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def _next_event(self) -> Any:
        while not self._events:
            data = self.sock.recv(1 << 16)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self._events.extend(self.protocol.events_received())
            if not data and not self._events:
                raise EOFError("the server closed the connection")
        return self._events.popleft()

    def read_close_code(self) -> int:
        """Read frames until the server's close frame; return its code (not answered)."""
        while True:
            event = self._next_event()
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                assert self.protocol.close_rcvd is not None
                return self.protocol.close_rcvd.code

    def close(self) -> None:
        """Close the socket without a closing handshake."""
        self.sock.close()


def http_exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send a raw HTTP request on an open socket; return the status and body of the answer.

    The answer ends at EOF, or once whole when the server keeps the connection alive.
    """
    sock.sendall(request)
    data = b""
    while not kept_alive(data) and (chunk := sock.recv(1 << 16)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def upgrade_request(url: str) -> bytes:
    """Return the bytes of a WebSocket opening handshake request for ``url``."""
    protocol = ClientProtocol(parse_uri(url))
    protocol.send_request(protocol.connect())
    return b"".join(protocol.data_to_send())


def metric_values(exposition: str) -> dict[str, float]:
    """Map each sample of a Prometheus text exposition (``name{labels}``) to its value."""
    values: dict[str, float] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            values[sample] = float(value)
    return values


@dataclass
class LoadOutcome:
    """What one ``/load`` client saw after it asked for its messages."""

    answer: str | bytes
    messages: list[str | bytes]
    close_code: int | None


async def _load_clients(
    url: str, clients: int, load: int, loaded: threading.Event
) -> list[LoadOutcome]:
    """Open ``clients`` connections that each ask for ``load`` messages.

    Sets ``loaded`` once all of them were answered ``loaded N`` (or opening
    failed: the caller then reads the error from the result), then collects
    every message until each connection closes.
    """
    handshakes = asyncio.Semaphore(100)

    async def open_one() -> tuple[ClientConnection, str | bytes]:
        async with handshakes:
            ws = await ws_connect(url, open_timeout=30, ping_interval=None, close_timeout=30)
            await ws.send(f"load {load}")
            return ws, await ws.recv()

    async def collect(ws: ClientConnection, answer: str | bytes) -> LoadOutcome:
        messages: list[str | bytes] = []
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                messages.append(message)
        return LoadOutcome(answer, messages, ws.close_code)

    try:
        opened = await asyncio.gather(*(open_one() for _ in range(clients)))
    finally:
        loaded.set()
    return await asyncio.gather(*(collect(ws, answer) for ws, answer in opened))


@contextlib.contextmanager
def closing_all(*socks: socket.socket | BlockingClient) -> Iterator[None]:
    """Close every socket on exit."""
    try:
        yield
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def ws_sync_client(url: str) -> Iterator[SyncClientConnection]:
    """Open a websockets sync client (no keepalive pings) and close it on exit."""
    with sync_connect(url, open_timeout=20, close_timeout=10, ping_interval=None) as ws:
        yield ws


# --- SIGTERM: the drain -----------------------------------------------------------


def test_sigterm_drains_every_queued_message_then_closes_with_1001() -> None:
    """On SIGTERM, 1,000 clients get all their queued messages in order, then 1001; exit 0."""
    with (
        ThreadPoolExecutor(1) as pool,
        ServerProcess(SLOW_APP, "--drain-timeout", "20") as server,
    ):
        server.wait_started()
        gate = BlockingClient(server.url("/gate"))
        loaded = threading.Event()
        clients = pool.submit(
            asyncio.run, _load_clients(server.url("/load"), CLIENTS, LOAD, loaded)
        )
        assert loaded.wait(45), "the clients did not connect within 45 s"
        if clients.done():
            clients.result()  # raises why opening failed
        # Handshakes in flight: connected, accepted, request not yet sent. The accept
        # queue is FIFO, so once /healthz (connected after them) has answered, both
        # sockets have been accepted and wait in their handshake.
        upgrade_pending = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        readyz_pending = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        with closing_all(gate, upgrade_pending, readyz_pending):
            assert http_get(server.port, "/healthz") == (200, "ok\n")
            assert http_get(server.port, "/readyz") == (200, "ready\n")
            # Each /load actor is stuck on its first message, the rest wait in its mailbox.
            metrics = metric_values(http_get(server.port, "/metrics")[1])
            assert metrics["wsup_mailbox_messages"] >= CLIENTS * (LOAD - 1)
            assert metrics['wsup_connections{state="open"}'] == CLIENTS + 1

            server.signal(signal.SIGTERM)
            outcomes = clients.result(timeout=45)

            expected = [str(i) for i in range(LOAD)]
            assert len(outcomes) == CLIENTS
            assert {o.answer for o in outcomes} == {f"loaded {LOAD}"}
            wrong = [o for o in outcomes if o.messages != expected or o.close_code != 1001]
            assert not wrong, f"{len(wrong)} clients saw e.g. {wrong[0]}"

            # The gate client has not answered its close frame: the drain is still on.
            assert server.returncode is None
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
            status, body = http_exchange(upgrade_pending, upgrade_request(server.url("/load")))
            assert (status, body) == (503, b"server is shutting down\n")
            status, body = http_exchange(
                readyz_pending, b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            assert (status, body) == (503, b"draining\n")

            assert gate.read_close_code() == 1001
            gate.close()  # the server sees EOF: the last connection is gone

            assert server.wait(20) == 0
        completed = server.wait_for_event("server.drain_completed")
        assert completed["cancelled"] == 0
        assert server.wait_for_event("server.drain_started")["connections"] == CLIENTS + 1
        closed = server.events("connection.closed")
        assert len(closed) == CLIENTS + 1
        assert {c["code"] for c in closed} == {1001}
        load_closed = [c for c in closed if c["path"] == "/load"]
        assert {c["messages_out"] for c in load_closed} == {LOAD + 1}
        server.wait_for_event("server.stopped")


def test_second_sigterm_during_a_long_drain_forces_exit() -> None:
    """A second SIGTERM while a connection holds the drain aborts it and exits 0 at once."""
    with ServerProcess(SLOW_APP, "--drain-timeout", "20") as server:
        server.wait_started()
        gate = BlockingClient(server.url("/gate"))
        with closing_all(gate):
            server.signal(signal.SIGTERM)
            server.wait_for_event("server.drain_started")
            assert gate.read_close_code() == 1001  # never answered: the drain waits for it
            server.signal(signal.SIGTERM)
            # Well before the 20 s drain deadline and the 30 s close timeout.
            assert server.wait(10) == 0
        # The forced stop counts what it aborted.
        assert server.wait_for_event("server.forced_stop")["connections"] == 1
        closed = server.wait_for_event("connection.closed")
        assert closed["path"] == "/gate"
        assert closed["code"] == 1001


def test_sigint_drains_like_sigterm() -> None:
    """SIGINT (Ctrl-C) starts the same graceful drain and the process exits 0."""
    with ServerProcess(SLOW_APP, "--drain-timeout", "20") as server:
        server.wait_started()
        with ws_sync_client(server.url("/echo")) as ws:
            server.signal(signal.SIGINT)
            assert server.wait_for_event("server.signal_received")["signal"] == "SIGINT"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
            assert ws.close_code == 1001
        assert server.wait(20) == 0
        assert server.wait_for_event("server.drain_completed")["cancelled"] == 0


async def _drained_clients(url: str, clients: int, opened: threading.Event) -> list[int | None]:
    """Open ``clients`` connections, set ``opened``, and return each one's close code."""
    connections: list[ClientConnection] = []
    try:
        for _ in range(clients):
            connections.append(await ws_connect(url, open_timeout=30, ping_interval=None))
    finally:
        opened.set()

    async def closed(ws: ClientConnection) -> int | None:
        await ws.wait_closed()
        return ws.close_code

    return await asyncio.gather(*(closed(ws) for ws in connections))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_paced_drain_closes_in_batches_with_1001(backend: str) -> None:
    """``wsup serve --drain-window 2 --drain-batch-size 5``: SIGTERM closes 20 real
    clients in four logged batches, each client with 1001, none cut at the deadline."""
    clients = 20
    with (
        ThreadPoolExecutor(1) as pool,
        ServerProcess(
            "examples.echo:app",
            *("--backend", backend, "--log-level", "debug"),
            *("--drain-window", "2", "--drain-batch-size", "5", "--drain-timeout", "20"),
        ) as server,
    ):
        server.wait_started()
        opened = threading.Event()
        codes = pool.submit(asyncio.run, _drained_clients(server.url("/echo"), clients, opened))
        assert opened.wait(45), "the clients did not connect within 45 s"
        if codes.done():
            codes.result()  # raises why opening failed
        server.signal(signal.SIGTERM)
        assert codes.result(timeout=45) == [1001] * clients
        assert server.wait(30) == 0
        batches = server.events("server.drain_batch")
        assert [(b["batch"], b["batches"], b["connections"]) for b in batches] == [
            (1, 4, 5),
            (2, 4, 5),
            (3, 4, 5),
            (4, 4, 5),
        ]
        # Real time here: only the order of the batches is checked, never a duration.
        elapsed = [b["elapsed"] for b in batches]
        assert elapsed == sorted(elapsed)
        completed = server.wait_for_event("server.drain_completed")
        assert (completed["connections"], completed["batches"]) == (clients, 4)
        assert completed["cancelled"] == 0
        closed = server.events("connection.closed")
        assert [(c["code"], c["reason"]) for c in closed] == [
            (1001, "server shutting down")
        ] * clients


def test_sigusr1_stops_accepting_and_keeps_serving() -> None:
    """After SIGUSR1 new connections are refused, open ones keep working; SIGTERM still drains."""
    with ServerProcess(SLOW_APP, "--drain-timeout", "20") as server:
        server.wait_started()
        with ws_sync_client(server.url("/echo")) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            server.signal(signal.SIGUSR1)
            assert server.wait_for_event("server.stopped_accepting")["connections"] == 1
            ws.send("after")
            assert ws.recv(timeout=10) == "after"
            ws.send(b"\x00binary")
            assert ws.recv(timeout=10) == b"\x00binary"
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
            assert server.returncode is None

            server.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=20)
            assert ws.close_code == 1001
        assert server.wait(20) == 0
        assert server.events("server.drain_completed")[0]["cancelled"] == 0


# --- In-process: Server.shutdown() and Server.stop_accepting() ---------------------


class AnyioClient:
    """A WebSocket client on anyio streams (websockets' Sans-I/O protocol): runs on trio too."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self._events: deque[Any] = deque()
        self._eof = False

    @classmethod
    async def connect(cls, url: str) -> AnyioClient:
        """Connect and complete the opening handshake.

        Raises:
            OSError: the TCP connection failed (refused while not accepting).
            AssertionError: the server did not answer 101.
        """
        uri = parse_uri(url)
        stream = await anyio.connect_tcp(uri.host, uri.port)
        client = cls(stream, ClientProtocol(uri))
        client.protocol.send_request(client.protocol.connect())
        await client.flush()
        response = await client._next_event()
        assert isinstance(response, Response), response
        assert response.status_code == 101, response
        return client

    async def flush(self) -> None:
        """Send what the protocol has queued (pongs, the close answer)."""
        data = b"".join(self.protocol.data_to_send())
        if data:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.stream.send(data)

    async def _next_event(self) -> Any:
        while not self._events:
            if self._eof:
                return None
            try:
                data = await self.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self._eof = True
                self.protocol.receive_eof()
            else:
                self.protocol.receive_data(data)
            self._events.extend(self.protocol.events_received())
        return self._events.popleft()

    async def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self.flush()

    async def recv(self) -> str | bytes:
        """Return the next message.

        Raises:
            EOFError: the connection closed first.
        """
        while True:
            event = await self._next_event()
            if event is None or (isinstance(event, Frame) and event.opcode is Opcode.CLOSE):
                await self.flush()
                raise EOFError(f"closed with {self.close_code}")
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                return bytes(event.data).decode()
            if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                return bytes(event.data)
            await self.flush()  # a ping: the protocol queued the pong

    async def until_closed(self, *, answer: bool = True) -> list[str | bytes]:
        """Collect messages until the server's close frame; answer it if ``answer``."""
        messages: list[str | bytes] = []
        while True:
            event = await self._next_event()
            if event is None or (isinstance(event, Frame) and event.opcode is Opcode.CLOSE):
                break
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                messages.append(bytes(event.data).decode())
            elif isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                messages.append(bytes(event.data))
        if answer:
            await self.flush()
        return messages

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame, once received."""
        rcvd = self.protocol.close_rcvd
        return None if rcvd is None else rcvd.code

    async def wait_eof(self) -> None:
        """Read until the server closes the TCP connection."""
        while await self._next_event() is not None:
            pass

    async def aclose(self) -> None:
        """Close the TCP connection (no closing handshake)."""
        await self.stream.aclose()


@asynccontextmanager
async def serving(
    app: App, *, clock: Clock | None = None, **config: Any
) -> AsyncIterator[tuple[Server, str]]:
    """Serve ``app`` in-process on a free loopback port; yield it and its ``ws://`` base URL.

    On exit the server is stopped (at once, if the test did not shut it down) and
    ``serve()`` returns by itself: the scope is not cancelled under it.
    """
    import dataclasses

    settings: ServerConfig = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0, **config)
    server = Server(app, settings, metrics=Metrics(), clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        host, port = server.ports[0]
        try:
            yield server, f"ws://{host}:{port}"
        finally:
            server.force_stop()  # after a completed shutdown() it only logs


def _gauge(server: Server, name: str) -> float | None:
    return server.metrics.registry.get_sample_value(name)


@pytest.mark.anyio
async def test_shutdown_drains_queued_messages_in_process() -> None:
    """``Server.shutdown()`` delivers every queued message, closes with 1001, then returns."""
    async with serving(slow_app.app) as (server, base):
        load = await AnyioClient.connect(f"{base}/load")
        await load.send("load 50")
        assert await load.recv() == "loaded 50"
        gate = await AnyioClient.connect(f"{base}/gate")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                assert await load.until_closed() == [str(i) for i in range(50)]
                assert load.close_code == 1001
                assert await gate.until_closed() == []
                assert gate.close_code == 1001
        # shutdown() has returned: every connection closed cleanly, none was cancelled.
        assert not server.connections
        assert server.draining
        assert not server.accepting
        assert server.readiness() == (False, "draining")
        assert _gauge(server, "wsup_draining") == 0
        going_away = server.metrics.registry.get_sample_value(
            "wsup_connections_closed_total", {"reason": "going_away", "initiator": "server"}
        )
        assert going_away == 2
        with pytest.raises(OSError, match="All connection attempts failed"):
            await AnyioClient.connect(f"{base}/echo")
        await load.aclose()
        await gate.aclose()


@pytest.mark.anyio
async def test_shutdown_cancels_what_is_left_at_the_deadline_in_process() -> None:
    """At the drain deadline a connection still closing is aborted and counted."""
    clock = FakeClock()
    async with serving(slow_app.app, clock=clock) as (server, base):
        gate = await AnyioClient.connect(f"{base}/gate")
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(server.shutdown, drain_timeout=5.0))
            # The server sent 1001; the client does not answer, so the drain waits.
            assert await gate.until_closed(answer=False) == []
            assert gate.close_code == 1001
            await anyio.wait_all_tasks_blocked()
            assert len(server.connections) == 1
            assert _gauge(server, "wsup_draining") == 1
            await clock.step(5.0)  # the drain deadline, well before the 30 s close timeout
        assert not server.connections
        # The drain is over (the cancellations are counted in the drain_completed log).
        assert _gauge(server, "wsup_draining") == 0
        await gate.wait_eof()
        await gate.aclose()


@pytest.mark.anyio
async def test_shutdown_is_idempotent_in_process() -> None:
    """A second ``shutdown()`` while one drains waits for the same drain."""
    async with serving(echo_app) as (server, base):
        client = await AnyioClient.connect(f"{base}/echo")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                tg.start_soon(server.shutdown)
                assert await client.until_closed() == []
        assert client.close_code == 1001
        assert not server.connections
        await client.aclose()


@pytest.mark.anyio
async def test_stop_accepting_keeps_open_connections_in_process() -> None:
    """``stop_accepting()`` refuses new connections; open ones keep echoing; readiness is 503."""
    async with serving(echo_app) as (server, base):
        client = await AnyioClient.connect(f"{base}/echo")
        await client.send("before")
        assert await client.recv() == "before"
        assert server.readiness() == (True, "ready")

        server.stop_accepting()
        await anyio.wait_all_tasks_blocked()  # the listeners are closed now

        assert not server.accepting
        assert not server.draining
        assert server.readiness() == (False, "not accepting connections")
        with pytest.raises(OSError, match="All connection attempts failed"):
            await AnyioClient.connect(f"{base}/echo")
        await client.send("after")
        assert await client.recv() == "after"
        await client.send(b"\x00\xff")
        assert await client.recv() == b"\x00\xff"
        assert len(server.connections) == 1

        server.stop_accepting()  # idempotent
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                assert await client.until_closed() == []
        assert client.close_code == 1001
        await client.aclose()


@pytest.mark.anyio
async def test_stop_accepting_rejects_handshakes_in_flight_in_process() -> None:
    """A handshake accepted before ``stop_accepting()`` and finished after it gets 503."""
    async with serving(echo_app) as (server, base):
        host, port = server.ports[0]
        pending = await anyio.connect_tcp(host, port)
        await anyio.wait_all_tasks_blocked()  # accepted: its handshake waits for the request
        server.stop_accepting()
        await anyio.wait_all_tasks_blocked()
        await pending.send(upgrade_request(f"{base}/echo"))
        data = b""
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                data += await pending.receive()
        assert data.startswith(b"HTTP/1.1 503 ")
        assert data.endswith(b"\r\n\r\nnot accepting new connections\n")
        await pending.aclose()


@pytest.mark.anyio
async def test_shutdown_closes_sockets_that_never_sent_a_request_in_process() -> None:
    """A socket accepted but silent (a browser's preconnect) does not outlive the server:
    ``serve()`` returns, the socket ends, and nothing is left on the event loop."""
    async with serving(echo_app, handshake_timeout=60.0) as (server, _):
        host, port = server.ports[0]
        silent = await anyio.connect_tcp(host, port)
        await anyio.wait_all_tasks_blocked()  # accepted: its handshake waits for the request
        with anyio.fail_after(10):
            await server.shutdown()
            data = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    data += await silent.receive()
        assert data == b""
        await silent.aclose()


@pytest.mark.anyio
async def test_shutdown_of_a_cancelled_supervisor_is_a_no_op() -> None:
    """``Supervisor.shutdown()`` (documented idempotent) is quiet after ``run()`` was cancelled."""
    # The server gets here when its task is cancelled while the actor system shuts
    # down: the root supervisor then stops a connections supervisor whose run() was
    # already cancelled (seen on trio, whose scheduling order varies from run to run).
    async with ActorSystem() as system, anyio.create_task_group() as tg:
        supervisor = Supervisor(system.runtime, SupervisorSpec(id="cancelled"))
        await tg.start(supervisor.run)
        tg.cancel_scope.cancel()
    assert supervisor.stopped.is_set()
    supervisor.shutdown()


@pytest.mark.anyio
async def test_on_close_sees_the_drain_close_code_in_process() -> None:
    """A handler's ``on_close`` during a drain gets the 1001 the client receives."""
    seen: list[tuple[int, str]] = []
    app = App()

    @app.route("/watch")
    class Watch(Handler):
        """Records the code and reason ``on_close`` gets."""

        async def on_close(self, code: int, reason: str) -> None:
            """Record them."""
            seen.append((code, reason))

    async with serving(app) as (server, base):
        client = await AnyioClient.connect(f"{base}/watch")
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                assert await client.until_closed() == []
        await client.aclose()
    assert client.close_code == 1001
    assert seen == [(1001, "server shutting down")]
