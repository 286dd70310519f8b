"""The hostile clients of :mod:`bench.attacks`, one attack per process.

``python -m bench.attack_clients KIND --port P --count N --seconds S`` opens
``N`` connections to 127.0.0.1:``P`` (never anywhere else), misbehaves on each
for at most ``S`` seconds in the way ``KIND`` names, and prints one JSON object:
what the server answered (``outcomes``: close codes, HTTP statuses, or
``open`` for a connection the server still held at the end), how long the
server took to end each connection (``ended_after``, seconds, when it did),
and what the client managed to send (``sent``: bytes, frames).

Each kind answers one limit (see :data:`KINDS`); every client is written with
raw frames (websockets' serializer, masked) and reuses the soak's
:class:`bench.soak_clients.Client` for the opening handshake and for reading
what the server sends, pongs included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import uvloop
from websockets.frames import Frame, Opcode

from bench.soak_clients import CONNECTION_ERRORS, Client

PATH = "/echo"


def frame(opcode: Opcode, data: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame (masked), as it goes on the wire."""
    return Frame(opcode, data, fin).serialize(mask=True)


@dataclass
class Report:
    """What one attack process saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    ended_after: list[float] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)

    def ended(self, outcome: str, started: float) -> None:
        """The server ended a connection (or refused it) with ``outcome``."""
        self.outcomes[outcome] += 1
        self.ended_after.append(time.monotonic() - started)

    def as_json(self) -> str:
        """One line of JSON, the median time to end included."""
        ended = sorted(self.ended_after)
        return json.dumps(
            {
                "outcomes": dict(self.outcomes),
                "sent": dict(self.sent),
                "ended_median_s": round(statistics.median(ended), 2) if ended else None,
            }
        )


def _close_outcome(client: Client) -> str:
    """How the server ended ``client``'s connection: ``close NNNN`` or ``eof``."""
    received = client.protocol.close_rcvd
    return f"close {received.code}" if received is not None else "eof"


async def _until_ended(client: Client, deadline: float) -> bool:
    """Read (answering pings) until the server ends the connection or ``deadline``;
    whether it ended it."""
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                await client.receive()
    except TimeoutError:  # before CONNECTION_ERRORS, which holds it too
        return False
    except CONNECTION_ERRORS:
        return True


async def _watch(client: Client, deadline: float, report: Report, started: float) -> None:
    """Count how the server ends ``client``, or ``open`` if it held it to ``deadline``."""
    if await _until_ended(client, deadline):
        report.ended(_close_outcome(client), started)
    else:
        report.outcomes["open"] += 1


async def _send(client: Client, data: bytes, report: Report, frames: int) -> bool:
    """Write ``data``; False once the server closed or the write did not drain in 5 s."""
    try:
        client.writer.write(data)
        await asyncio.wait_for(client.writer.drain(), 5)
    except (TimeoutError, *CONNECTION_ERRORS):
        return False
    report.sent["bytes"] += len(data)
    report.sent["frames"] += frames
    return True


# -- the attacks, one connection each ---------------------------------------------------------


async def big_message(port: int, deadline: float, report: Report) -> None:
    """max_size: one binary frame announcing 64 MiB, its payload streamed."""
    client = await Client.open(port, PATH)
    started = time.monotonic()
    size = 64 << 20
    # The header by hand: FIN + BINARY, MASK + 127, the 8-byte length, the mask key.
    head = bytes([0x82, 0xFF]) + size.to_bytes(8, "big") + b"\0\0\0\0"
    watcher = asyncio.create_task(_watch(client, deadline, report, started))
    chunk = b"x" * 65536
    if await _send(client, head, report, 1):
        while time.monotonic() < deadline and not watcher.done():
            if not await _send(client, chunk, report, 0):
                break
    await watcher
    client.abort()


async def fragments(port: int, deadline: float, report: Report) -> None:
    """max_fragments: a text message in 1,000,000 one-byte fragments (7 MB on the wire)."""
    client = await Client.open(port, PATH)
    started = time.monotonic()
    watcher = asyncio.create_task(_watch(client, deadline, report, started))
    batch = frame(Opcode.CONT, b"a", fin=False) * 1000
    if await _send(client, frame(Opcode.TEXT, b"a", fin=False), report, 1):
        for _ in range(1000):
            if time.monotonic() >= deadline or watcher.done():
                break
            if not await _send(client, batch, report, 1000):
                break
    await watcher
    client.abort()


async def ping_flood(port: int, deadline: float, report: Report) -> None:
    """Pongs against the outbound limit: pings with 125-byte payloads, never reading."""
    client = await Client.open(port, PATH)
    started = time.monotonic()
    batch = frame(Opcode.PING, b"p" * 125) * 100
    while time.monotonic() < deadline:
        if not await _send(client, batch, report, 100):
            break
    # Whether the server still holds it: read what it queued, until it ends.
    if await _until_ended(client, time.monotonic() + 1):
        report.ended(_close_outcome(client), started)
    else:
        report.outcomes["open"] += 1
    client.abort()


async def _trickle(client: Client, data: bytes, deadline: float, report: Report) -> None:
    """Send ``data`` one byte every 2 s until ``deadline`` or the server ends it."""
    started = time.monotonic()
    watcher = asyncio.create_task(_watch(client, deadline, report, started))
    for byte in data:
        if watcher.done() or not await _send(client, bytes([byte]), report, 0):
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(min(deadline, time.monotonic() + 2)):
                await asyncio.shield(watcher)
        if time.monotonic() >= deadline:
            break
    await watcher
    client.abort()


async def trickle_frame(port: int, deadline: float, report: Report) -> None:
    """Keepalive: one frame trickled a byte every 2 s, never complete."""
    client = await Client.open(port, PATH)
    await _trickle(client, frame(Opcode.BINARY, b"x" * 125), deadline, report)


async def slowloris(port: int, deadline: float, report: Report) -> None:
    """handshake_timeout: a request head trickled a byte every 2 s, never complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200
    answered = asyncio.create_task(reader.read(4096))
    try:
        for byte in head:
            writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, time.monotonic() + 2)):
                    await asyncio.shield(answered)
            if answered.done() or time.monotonic() >= deadline:
                break
        with contextlib.suppress(TimeoutError, *CONNECTION_ERRORS):
            async with asyncio.timeout_at(max(deadline, time.monotonic() + 0.1)):
                await answered
        if answered.done() and not answered.cancelled() and answered.exception() is None:
            status = answered.result().split(b" ", 2)[1:2]
            report.ended(f"HTTP {status[0].decode()}" if status else "eof", started)
        else:
            report.outcomes["open"] += 1
    except CONNECTION_ERRORS:
        report.ended("reset", started)
    finally:
        answered.cancel()
        writer.transport.abort()


async def flood(port: int, deadline: float, report: Report) -> None:
    """Inbound rate: 64-byte messages as fast as the server takes them, echoes read."""
    client = await Client.open(port, PATH)
    batch = frame(Opcode.TEXT, b"m" * 64) * 100

    async def read() -> None:
        with contextlib.suppress(EOFError, *CONNECTION_ERRORS):
            while True:
                for received in await client.receive():
                    report.sent["echoed"] += received.opcode is Opcode.TEXT

    reader = asyncio.create_task(read())
    while time.monotonic() < deadline and not reader.done():
        if not await _send(client, batch, report, 100):
            break
    reader.cancel()
    report.outcomes[_close_outcome(client) if reader.done() else "open"] += 1
    client.abort()


async def big_head(port: int, deadline: float, report: Report) -> None:
    """Request head size: the largest head the parser takes (100 fields of 8,000
    bytes) on an upgrade, then the connection held, pings answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    fields = b"".join(b"X-Big-%d: %s\r\n" % (n, b"a" * 8000) for n in range(100))
    writer.write(
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + fields
        + b"\r\n"
    )
    report.sent["bytes"] += len(fields)
    try:
        async with asyncio.timeout_at(deadline):
            head = await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, *CONNECTION_ERRORS):
        report.ended("reset", started)
        writer.transport.abort()
        return
    status = head.split(b" ", 2)[1].decode()
    if status != "101":
        report.ended(f"HTTP {status}", started)
        writer.transport.abort()
        return
    client = Client(reader, writer, f"ws://127.0.0.1:{port}/echo")
    await _watch(client, deadline, report, started)
    client.abort()


async def hold(port: int, deadline: float, report: Report) -> None:
    """max_connections: a connection opened and held, doing nothing."""
    started = time.monotonic()
    try:
        client = await Client.open(port, PATH)
    except OSError as exc:
        status = str(exc).split(" ")[3] if "HTTP/1.1" in str(exc) else "error"
        report.ended(f"HTTP {status}", started)
        return
    await _watch(client, deadline, report, started)
    client.abort()


async def unfinished_message(port: int, deadline: float, report: Report) -> None:
    """Completion deadline: a message begun, then an empty continuation frame every
    2 s, pings answered: alive, never done."""
    client = await Client.open(port, PATH)
    started = time.monotonic()
    watcher = asyncio.create_task(_watch(client, deadline, report, started))
    data = frame(Opcode.TEXT, b"a", fin=False)
    while not watcher.done() and await _send(client, data, report, 1):
        data = frame(Opcode.CONT, b"", fin=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(min(deadline, time.monotonic() + 2)):
                await asyncio.shield(watcher)
    await watcher
    client.abort()


KINDS: dict[str, Callable[[int, float, Report], Awaitable[None]]] = {
    "big_message": big_message,
    "fragments": fragments,
    "ping_flood": ping_flood,
    "trickle_frame": trickle_frame,
    "slowloris": slowloris,
    "flood": flood,
    "big_head": big_head,
    "hold": hold,
    "unfinished_message": unfinished_message,
}


async def run(kind: str, port: int, seconds: float, count: int) -> Report:
    """Run ``count`` connections of ``kind`` for at most ``seconds``."""
    report = Report()
    deadline = time.monotonic() + seconds
    attack = KINDS[kind]

    async def one() -> None:
        try:
            await attack(port, deadline, report)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            report.outcomes[f"error: {type(exc).__name__}"] += 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(one())
            await asyncio.sleep(0)  # let connects start in order
    return report


def main(argv: list[str] | None = None) -> None:
    """Run one attack; print its report as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = uvloop.run(run(args.kind, args.port, args.seconds, args.count))
    print(report.as_json(), flush=True)


if __name__ == "__main__":
    main()
