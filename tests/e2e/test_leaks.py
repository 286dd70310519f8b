"""End to end: thousands of connections come and go and leave nothing behind.

No connection objects, no connection actors, no tasks, no file descriptors,
no addresses and no gauge readings survive the clients that caused them.
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import struct

import anyio
import pytest

from examples.echo import app as echo_app
from supervisor import Connection, Server
from tests.helpers.metrics import sample
from tests.helpers.server import running_server
from tests.helpers.tasks import live_tasks
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

CYCLES = 5_000
THREADS = 8
# A little room for descriptors the event loop or the thread pool may open lazily.
FD_SLACK = 4


def _masked(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data[:80]!r}")
        data += chunk
    return data


def _drain(sock: socket.socket) -> None:
    while sock.recv(65536):
        pass


def one_cycle(port: int, style: int) -> bool:
    """Connect, do something, go away; return whether the handshake completed.

    Styles: 0 clean close, 1 a message then a clean close, 2 FIN without a
    close frame, 3 RST without a close frame, 4 gone in the middle of the handshake.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if style == 4:
            sock.sendall(request[: len(request) // 2])
            return False
        sock.sendall(request)
        head = _read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head[:80]
        if style == 1:
            sock.sendall(_masked(0x1, b"ping me"))
            _read_until(sock, b"ping me")
        if style in (0, 1):
            sock.sendall(_masked(0x8, struct.pack("!H", 1000)))
            _drain(sock)  # the server answers the close and closes the socket
        elif style == 3:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return True


def run_cycles(port: int, start: int, count: int, step: int) -> int:
    """Run cycles ``start, start + step, ...`` below ``count``; return completed handshakes."""
    return sum(one_cycle(port, i % 5) for i in range(start, count, step))


def live_connections(server: Server) -> int:
    """How many of ``server``'s Connection objects are alive after a full garbage collection."""
    gc.collect()
    return sum(isinstance(o, Connection) and o._host is server for o in gc.get_objects())


def open_fds() -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir("/proc/self/fd"))


async def cycles(server: Server, count: int) -> int:
    """Run ``count`` cycles from THREADS client threads; return completed handshakes."""
    port = server.ports[0][1]
    done: list[int] = []

    async def worker(start: int) -> None:
        done.append(await anyio.to_thread.run_sync(run_cycles, port, start, count, THREADS))

    async with anyio.create_task_group() as tg:
        for start in range(THREADS):
            tg.start_soon(worker, start)
    return sum(done)


def settled(server: Server) -> bool:
    """Whether the server holds no connection, no socket and no connection actor."""
    return (
        not server.connections
        and server.runtime.statistics().actors.get("connection", 0) == 0
        and sample(server, "wsup_connections", state="handshaking") == 0
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors")
async def test_many_connect_disconnect_cycles_leak_nothing() -> None:
    """5,000 connections (clean, abrupt, reset, half a handshake) leave no connection,
    actor, task, file descriptor, address, buffered byte or Connection object behind."""
    async with running_server(echo_app) as server:
        # Warm up: the thread pool, lazy imports, the loop's own descriptors.
        await cycles(server, 5 * THREADS)
        await eventually(lambda: settled(server), timeout=20.0)
        base_tasks = live_tasks()
        base_fds = open_fds()
        base_addresses = server.runtime.statistics().addresses
        accepted_before = sample(server, "wsup_connections_accepted_total")
        upgraded_before = sample(server, "wsup_handshakes_total", result="accepted")

        completed = await cycles(server, CYCLES)

        assert completed == CYCLES * 4 // 5
        await eventually(lambda: settled(server), timeout=20.0)
        await eventually(lambda: live_tasks() <= base_tasks, timeout=20.0)
        await eventually(lambda: open_fds() <= base_fds + FD_SLACK, timeout=20.0)
        stats = server.runtime.statistics()
        assert stats.addresses == base_addresses
        assert stats.mailbox_messages == 0
        # Every cycle is one TCP connection; four in five complete their upgrade.
        assert sample(server, "wsup_connections_accepted_total") - accepted_before == CYCLES
        upgraded = sample(server, "wsup_handshakes_total", result="accepted") - upgraded_before
        assert upgraded == completed
        for state in ("open", "draining", "closing"):
            assert sample(server, "wsup_connections", state=state) == 0
        assert sample(server, "wsup_actors", kind="connection") == 0
        assert sample(server, "wsup_outbound_buffer_bytes") == 0
        # Nothing holds on to closed connections (a loop variable may keep the last one).
        assert live_connections(server) <= 2


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop")]
)
async def test_closed_connections_are_freed_without_the_garbage_collector() -> None:
    """A closed connection is in no reference cycle (its driver and it let go of each
    other): with the collector off, a few hundred cycles leave no Connection behind.

    The transport driver's path, where the server keeps no task per connection; on
    trio the connection's own tasks and cancel scopes end in cycles of their own.
    """
    async with running_server(echo_app) as server:
        await cycles(server, 5 * THREADS)
        await eventually(lambda: settled(server), timeout=20.0)
        gc.collect()
        gc.disable()
        try:
            await cycles(server, 200)
            await eventually(lambda: settled(server), timeout=20.0)
            alive = sum(isinstance(o, Connection) and o._host is server for o in gc.get_objects())
        finally:
            gc.enable()
        assert alive <= 2  # a loop variable may keep the last one
