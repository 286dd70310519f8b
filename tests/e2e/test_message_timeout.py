"""``KeepaliveConfig.message_timeout`` on a real socket, with the server's injected clock.

The client misbehaves on purpose, so it writes raw frames: it starts a message
and trickles empty continuation frames, each one a complete frame (a sign of
life for the keepalive), never the last one. The clock is a FakeClock: the test
moves time on once the server has read each frame, so nothing depends on how
fast the machine is.
"""

from __future__ import annotations

import socket

import anyio
import pytest
from websockets.frames import Close, Frame, Opcode

from actors import FakeClock
from examples.echo import app
from supervisor import KeepaliveConfig
from tests.helpers.metrics import sample
from tests.helpers.server import running_server
from tests.helpers.waiting import eventually, in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

UPGRADE = (
    b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(opcode: Opcode, data: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame (masked), as it goes on the wire."""
    return Frame(opcode, data, fin).serialize(mask=True)


def opened(port: int) -> socket.socket:
    """A raw socket past the opening handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def close_frame(sock: socket.socket) -> Close:
    """Read until the server's close frame (nothing else is sent here); parse it."""
    data = b""
    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the socket without a close frame"
        data += chunk
    assert data[0] & 0x0F == Opcode.CLOSE.value, data
    return Close.parse(data[2 : 2 + (data[1] & 0x7F)])


async def test_a_message_trickled_in_fragments_is_closed_with_1008_at_its_deadline() -> None:
    """Fragments that keep the keepalive content do not keep the message open: at
    message_timeout after its first frame the connection closes with 1008, counted."""
    clock = FakeClock()
    keepalive = KeepaliveConfig(message_timeout=30.0)
    async with running_server(app, clock=clock, keepalive=keepalive) as server:
        _, port = server.ports[0]
        sock = await in_thread(opened, port)
        try:
            await eventually(lambda: len(server.connections) == 1)
            (conn,) = server.connections

            def fragments() -> int:
                return conn.statistics().partial_fragments

            await in_thread(sock.sendall, frame(Opcode.TEXT, b"a", fin=False))
            for read in range(1, 4):
                await eventually(lambda: fragments() == read)  # noqa: B023 - awaited here
                clock.advance(9.0)
                await in_thread(sock.sendall, frame(Opcode.CONT, fin=False))
            await eventually(lambda: fragments() == 4)
            assert conn in server.connections  # 27 s in, each frame a sign of life
            clock.advance(3.0)
            close = await in_thread(close_frame, sock)
            assert (close.code, close.reason) == (1008, "message not finished within 30 s")
            await eventually(
                lambda: sample(server, "wsup_limited_total", limit="message_timeout") == 1
            )
        finally:
            with anyio.CancelScope(shield=True):
                await in_thread(sock.close)
