"""Soak load: one kind of misbehaving or busy client per process (``python -m bench.soak``).

Usage: ``python -m bench.soak_clients KIND --port P --seconds S --count N``.
The process runs ``N`` clients of one kind for ``S`` seconds, closes them, and
prints one JSON line of counts on standard output. Kinds:

* ``churn``: ``N`` loops of connect, one echoed message, close handshake.
* ``slow``: ``N`` connections (a 4 KiB receive buffer) that send 1 KiB
  messages to the echo routes of every slow-consumer policy and never read;
  each gives up after 5 to 20 s (abort, no close frame) and comes back.
* ``flood``: ``N`` connections sending batches of 100 messages as fast as the
  echoes come back.
* ``ping``: ``N`` connections sending bursts of pings; every fourth never
  reads its pongs (and reconnects every 5 to 20 s like ``slow``).
* ``idle``: ``N`` connections that only answer the server's keepalive pings.

Frames are written and parsed by websockets' Sans-I/O client, so that the
clients are correct even where they are rude.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

KINDS = ("churn", "slow", "flood", "ping", "idle")
SLOW_PATHS = ("/echo", "/echo-drop", "/echo-block", "/echo-disconnect")
#: How long one connection of ``slow`` (and non-reading ``ping``) lives, in seconds.
SLOW_LIFETIME = (5.0, 20.0)
#: Errors that end one connection; the client counts them and goes on.
CONNECTION_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError)


class Client:
    """One WebSocket client connection over asyncio streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(parse_uri(url), state=State.OPEN, max_size=None)

    @classmethod
    async def open(cls, port: int, path: str, receive_buffer: int | None = None) -> Client:
        """Connect and complete the opening handshake.

        Raises:
            OSError: the connection failed or was refused (the status line says why).
        """
        sock = socket.socket()
        sock.setblocking(False)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except BaseException:
            writer.transport.abort()
            raise
        if not head.startswith(b"HTTP/1.1 101 "):
            writer.transport.abort()
            status_line = head.partition(b"\r\n")[0].decode(errors="replace")
            raise OSError(f"handshake refused: {status_line}")
        return cls(reader, writer, f"ws://127.0.0.1:{port}{path}")

    def flush(self) -> None:
        """Write what the protocol has queued (frames, pongs); end of data is left to close."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)

    async def send(self, message: str | bytes) -> None:
        """Send one message and wait until the socket takes it."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        self.flush()
        await self.writer.drain()

    async def ping(self, payload: bytes) -> None:
        """Send one ping without waiting for its pong."""
        self.protocol.send_ping(payload)
        self.flush()
        await self.writer.drain()

    async def receive(self) -> list[Frame]:
        """Read once; the frames that arrived (pongs to the server's pings are sent).

        Raises:
            EOFError: the server closed the connection.
        """
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("closed by the server")
        self.protocol.receive_data(data)
        self.flush()
        frames = [e for e in self.protocol.events_received() if isinstance(e, Frame)]
        if self.protocol.close_rcvd is not None:
            raise EOFError(f"closed by the server: {self.protocol.close_rcvd}")
        return frames

    async def close(self) -> None:
        """Close handshake, bounded; then the socket."""
        with contextlib.suppress(*CONNECTION_ERRORS, RuntimeError):
            self.protocol.send_close(1000)
            self.flush()
            async with asyncio.timeout(5):
                while self.protocol.close_rcvd is None and await self.reader.read(65536):
                    pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a close frame."""
        self.writer.transport.abort()


Counts = Counter[str]


def _error(counts: Counts, exc: BaseException) -> None:
    counts[f"error:{type(exc).__name__}"] += 1


async def churn(port: int, deadline: float, counts: Counts, index: int) -> None:
    """Connect, one echoed message, close; again until the deadline."""
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port, "/echo")
            try:
                await client.send("churn")
                async with asyncio.timeout(30):
                    while not any(f.opcode is Opcode.TEXT for f in await client.receive()):
                        pass
            finally:
                await client.close()
            counts["cycles"] += 1
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            await asyncio.sleep(0.1)


def _until(deadline: float, lifetime: float) -> float:
    return min(deadline, time.monotonic() + lifetime)


async def slow(port: int, deadline: float, counts: Counts, index: int) -> None:
    """Send and never read; give up after a while (abort) and come back."""
    path = SLOW_PATHS[index % len(SLOW_PATHS)]
    message = os.urandom(1024)
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port, path, receive_buffer=4096)
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            await asyncio.sleep(0.5)
            continue
        counts["connections"] += 1
        stop = _until(deadline, random.uniform(*SLOW_LIFETIME))
        try:
            while (left := stop - time.monotonic()) > 0:
                # The server stops reading us sooner or later: a send may wait.
                async with asyncio.timeout(left):
                    await client.send(message)
                counts["messages"] += 1
                await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        except CONNECTION_ERRORS as exc:
            counts["closed_by_server"] += 1
            _error(counts, exc)
        client.abort()


async def flood(port: int, deadline: float, counts: Counts, index: int) -> None:
    """Batches of 100 messages, as fast as the echoes come back."""
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port, "/echo")
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            await asyncio.sleep(0.5)
            continue
        try:
            while time.monotonic() < deadline:
                for _ in range(100):
                    client.protocol.send_text(b"flood" * 20)
                client.flush()
                await client.writer.drain()
                echoed = 0
                async with asyncio.timeout(30):
                    while echoed < 100:
                        echoed += sum(1 for f in await client.receive() if f.fin)
                counts["messages"] += 100
            await client.close()
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            client.abort()


async def ping(port: int, deadline: float, counts: Counts, index: int) -> None:
    """Bursts of pings; every fourth client never reads its pongs."""
    reads = index % 4 != 0
    payload = b"p" * 125
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port, "/echo", receive_buffer=None if reads else 4096)
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            await asyncio.sleep(0.5)
            continue
        stop = deadline if reads else _until(deadline, random.uniform(*SLOW_LIFETIME))
        try:
            while (left := stop - time.monotonic()) > 0:
                async with asyncio.timeout(left):
                    for _ in range(100):
                        client.protocol.send_ping(payload)
                    client.flush()
                    await client.writer.drain()
                    counts["pings"] += 100
                    pongs = 0
                    while reads and pongs < 100:
                        pongs += sum(1 for f in await client.receive() if f.opcode is Opcode.PONG)
                    counts["pongs"] += pongs
                await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
        if reads:
            await client.close()
        else:
            client.abort()


async def idle(port: int, deadline: float, counts: Counts, index: int) -> None:
    """Hold one connection, answering keepalive pings, until the deadline."""
    await asyncio.sleep(index % 100 * 0.01)  # spread the connects
    while time.monotonic() < deadline:
        try:
            client = await Client.open(port, "/echo")
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            await asyncio.sleep(1)
            continue
        counts["connections"] += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                while True:
                    # Read first: ``counts[k] += await ...`` would lose other tasks' updates.
                    frames = await client.receive()
                    counts["pings_answered"] += sum(1 for f in frames if f.opcode is Opcode.PING)
        except TimeoutError:
            await client.close()
        except CONNECTION_ERRORS as exc:
            _error(counts, exc)
            client.abort()


RUNNERS: dict[str, Callable[[int, float, Counts, int], Coroutine[Any, Any, None]]] = {
    "churn": churn,
    "slow": slow,
    "flood": flood,
    "ping": ping,
    "idle": idle,
}


async def run(kind: str, port: int, seconds: float, count: int) -> Counts:
    """Run ``count`` clients of ``kind`` for ``seconds``; their counts."""
    counts: Counts = Counter()
    deadline = time.monotonic() + seconds
    runner = RUNNERS[kind]
    async with asyncio.TaskGroup() as tg:
        for index in range(count):
            tg.create_task(runner(port, deadline, counts, index))
    return counts


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run the clients, print their counts as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak_clients")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    counts = uvloop.run(run(args.kind, args.port, args.seconds, args.count))
    sys.stdout.write(json.dumps({"kind": args.kind, "count": args.count, **counts}) + "\n")


if __name__ == "__main__":
    main()
