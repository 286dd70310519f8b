"""Load generator: picows clients on uvloop, driven by the harness over pipes.

Theory of operation: the harness starts one or more of these processes per
measurement (``python -m bench.loadgen MODE ...``), pinned to their own CPU. A
process opens its connections, prints ``{"event": "ready", ...}`` and then
obeys JSON commands read line by line from standard input, answering with JSON
events on standard output. Timestamps are ``time.monotonic()``, which is the
system-wide ``CLOCK_MONOTONIC`` on Linux, so the harness can compare times
taken in different processes. End of input means the harness is gone: the
process drops its connections and exits, so nothing outlives a run.

The client must cost less than any server it measures. Connections that stay
open are picows clients (compiled framing, a callback per frame rather than a
task per message); echo clients write pre-masked frames in batches (see
:class:`EchoClient`), request/response clients write one pre-masked frame per
round trip (see :class:`RoundTripClient`); the handshake mode uses a bare
asyncio protocol with a prepared request (see :class:`HandshakeProbe`).

Modes and their commands:

* ``echo``: ``{"cmd": "run", "duration": S}`` keeps ``--window`` messages of
  ``--size`` bytes in flight per connection for S seconds, then answers
  ``{"event": "result", "messages": N, "elapsed": S, "errors": E, "lost": L}``
  (L: connections lost).
* ``rr`` (request/response): ``{"cmd": "run", "duration": S}`` has every
  connection send one message of ``--size`` bytes, wait for its echo and send
  the next, for S seconds; it then waits for the echoes still in flight and
  answers like ``echo`` with two more fields: ``"stalled"``, the connections
  whose echo never came back, and ``"rtt"``, the histogram of every round
  trip's time in nanoseconds (see :class:`bench.latency.Histogram`).
* ``fanout``: every connection subscribes; ``{"cmd": "publish", "round": R}``
  (publisher process only) sends one message from the first connection and
  answers ``{"event": "published", "round": R, "t": T}``; every process answers
  ``{"event": "delivered", "round": R, "t": T}`` once all of its connections
  have received round R (T is the last arrival).
* ``handshake``: ``{"cmd": "run", "duration": S}`` runs ``--concurrency``
  loops of connect, opening handshake, close handshake, and answers
  ``{"event": "result", "handshakes": N, "elapsed": S, "errors": E}``.
* ``hold``: connections stay open and answer pings. ``{"cmd": "status"}``
  answers ``{"event": "status", "open": N}``; ``{"cmd": "watch", "timeout": S}``
  waits until the server has closed every connection and answers
  ``{"event": "closed", "closed": N, "clean": C, "last": T, "open": M}``.

Every mode accepts ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import uvloop
from picows import (
    WSError,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from bench.latency import Histogram

Command = dict[str, Any]

# picows would otherwise allocate 16 KiB per connection up front; held and
# fan-out connections only ever see small frames.
SMALL_READ_BUFFER = 1024
CONNECT_ATTEMPTS = 3
DEFLATE_OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


def emit(event: str, **fields: Any) -> None:
    """Write one event line for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    """Standard input as an asyncio stream."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def next_command(reader: asyncio.StreamReader) -> Command:
    """The next command; end of input reads as ``quit``."""
    line = await reader.readline()
    if not line:
        return {"cmd": "quit"}
    command: Command = json.loads(line)
    return command


ListenerT = TypeVar("ListenerT", bound=WSListener)


async def connect_many(
    url: str,
    count: int,
    factory: Callable[[], WSListener],
    *,
    concurrency: int,
    deflate: bool = False,
    read_buffer: int = 16 * 1024,
) -> tuple[list[WSTransport], str | None]:
    """Open ``count`` connections, at most ``concurrency`` handshakes at a time.

    A connection that fails is retried a few times (a burst of connects can
    overflow the server's listen backlog); the first error of those that never
    succeed is returned alongside the open transports.
    """
    gate = asyncio.Semaphore(concurrency)
    headers = DEFLATE_OFFER if deflate else None
    first_error: list[str] = []

    async def one() -> WSTransport | None:
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with gate:
                    transport, _ = await ws_connect(
                        factory,
                        url,
                        websocket_handshake_timeout=30,
                        extra_headers=headers,
                        read_buffer_init_size=read_buffer,
                    )
                return transport
            except (TimeoutError, OSError, WSError) as exc:
                if attempt == CONNECT_ATTEMPTS - 1:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1 * (attempt + 1))
        return None

    results = await asyncio.gather(*(one() for _ in range(count)))
    transports = [t for t in results if t is not None]
    return transports, (first_error[0] if first_error else None)


def answer_close(transport: WSTransport, frame: WSFrame) -> None:
    """Complete a close handshake the server started, then disconnect."""
    transport.send_close(frame.get_close_code())
    transport.disconnect()


def disconnect_all(transports: list[WSTransport]) -> None:
    """Drop every connection without a close handshake (the run is over)."""
    for transport in transports:
        transport.disconnect(graceful=False)


# --- echo ---------------------------------------------------------------------------


class EchoStats:
    """Counters shared by every echo connection of this process."""

    def __init__(self) -> None:
        self.running = False
        self.received = 0
        self.errors = 0


def masked_frame(payload: bytes) -> bytes:
    """One complete client-to-server binary frame carrying ``payload``.

    The frame is masked once (with a random key, as RFC 6455 requires of a
    client) and then written as is for every message: masking 4 KiB per
    message in Python would make the client, not the server, the bottleneck.
    """
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x82, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x82, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x82, 0x80 | 127)) + length.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


class EchoClient(WSListener):
    """Count echoes and keep the window full while the run lasts.

    Replacements for the echoes of one read are written together when picows
    reports the last frame of its buffer: one system call per batch instead of
    one per message, so the client stays cheaper than any server it measures.
    """

    def __init__(self, stats: EchoStats, frame: bytes, size: int) -> None:
        self.stats = stats
        self.frame = frame
        self.size = size
        self.pending = 0
        self.raw: asyncio.Transport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Keep the raw transport for batched writes."""
        self.raw = transport.underlying_transport

    def fill(self, window: int) -> None:
        """Put ``window`` messages in flight."""
        self.pending = 0
        if self.raw is not None:
            self.raw.write(self.frame * window)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Count an echo and send the next message in its place."""
        if frame.msg_type == WSMsgType.BINARY:
            stats = self.stats
            stats.received += 1
            if frame.payload_size != self.size:
                stats.errors += 1
            if stats.running:
                self.pending += 1
                if frame.last_in_buffer and self.raw is not None:
                    self.raw.write(self.frame * self.pending)
                    self.pending = 0
        elif frame.msg_type == WSMsgType.TEXT:
            # The server changed the message type: that is an echo failure.
            self.stats.errors += 1
        elif frame.msg_type == WSMsgType.CLOSE:
            answer_close(transport, frame)


def echo_payload(size: int) -> bytes:
    """The message an echo client sends: ``size`` bytes of a repeating pattern."""
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


async def connect_echo_clients(
    args: argparse.Namespace, make: Callable[[], ListenerT]
) -> tuple[list[ListenerT], list[WSTransport]]:
    """Open ``args.conns`` connections with listeners from ``make``; report ``ready``."""
    clients: list[ListenerT] = []

    def factory() -> ListenerT:
        client = make()
        clients.append(client)
        return client

    transports, error = await connect_many(
        args.url, args.conns, factory, concurrency=args.connect_concurrency
    )
    emit("ready", connected=len(transports), failed=args.conns - len(transports), error=error)
    return clients, transports


async def run_echo(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    """Echo mode (see the module docstring)."""
    stats = EchoStats()
    frame = masked_frame(echo_payload(args.size))
    clients, transports = await connect_echo_clients(
        args, lambda: EchoClient(stats, frame, args.size)
    )

    async def run(duration: float) -> dict[str, Any]:
        stats.received = stats.errors = 0
        stats.running = True
        start = time.monotonic()
        for client in clients:
            client.fill(args.window)
        await asyncio.sleep(duration)
        received, errors = stats.received, stats.errors
        elapsed = time.monotonic() - start
        stats.running = False
        return {"messages": received, "elapsed": elapsed, "errors": errors}

    await obey_runs(commands, transports, run)


async def obey_runs(
    commands: asyncio.StreamReader,
    transports: list[WSTransport],
    run: Callable[[float], Awaitable[dict[str, Any]]],
) -> None:
    """Answer every ``run`` command with a result event until told to quit.

    ``run`` takes the duration in seconds and returns the result's fields; the
    number of connections lost is added to them. Disconnects at the end.
    """
    try:
        while (command := await next_command(commands))["cmd"] != "quit":
            if command["cmd"] != "run":
                emit("error", message=f"unknown command {command['cmd']!r}")
                continue
            result = await run(command["duration"])
            lost = sum(1 for t in transports if t.is_disconnected)
            emit("result", **result, lost=lost)
    finally:
        disconnect_all(transports)


# --- request/response ---------------------------------------------------------------

#: Seconds a request/response run waits, after its end, for the echoes still in flight.
DRAIN_TIMEOUT = 5.0


class RoundTrips:
    """State shared by every request/response connection of this process."""

    def __init__(self) -> None:
        self.running = False
        self.received = 0
        self.errors = 0
        self.in_flight = 0
        self.drained = asyncio.Event()
        """Set when a run is over and no message is in flight any more."""
        self.rtt = Histogram()


class RoundTripClient(WSListener):
    """One message in flight: send it, time its echo, send the next.

    Every echo is timed from the moment its message was written to the moment
    picows hands its frame over, with ``time.perf_counter_ns()``; one clock
    reading serves as the end of one round trip and the start of the next.
    """

    def __init__(self, trips: RoundTrips, frame: bytes, size: int) -> None:
        self.trips = trips
        self.frame = frame
        self.size = size
        self.sent_at = 0
        self.waiting = False
        self.raw: asyncio.Transport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Keep the raw transport: pre-masked frames are written on it directly."""
        self.raw = transport.underlying_transport

    def start(self) -> None:
        """Send the first message of a run."""
        if self.raw is not None and not self.waiting:
            self.trips.in_flight += 1
            self.waiting = True
            self.sent_at = time.perf_counter_ns()
            self.raw.write(self.frame)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Time an echo and, while the run lasts, send the next message."""
        if frame.msg_type == WSMsgType.BINARY:
            now = time.perf_counter_ns()
            trips = self.trips
            if not self.waiting or frame.payload_size != self.size:
                # An echo of nothing, or of the wrong size.
                trips.errors += 1
                return
            if not trips.running:
                self.waiting = False
                trips.in_flight -= 1
                if not trips.in_flight:
                    trips.drained.set()
                return
            trips.received += 1
            trips.rtt.record(now - self.sent_at)
            self.sent_at = now
            if self.raw is not None:
                self.raw.write(self.frame)
        elif frame.msg_type == WSMsgType.TEXT:
            # The server changed the message type: that is an echo failure.
            self.trips.errors += 1
        elif frame.msg_type == WSMsgType.CLOSE:
            answer_close(transport, frame)


async def run_rr(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    """Request/response mode (see the module docstring)."""
    trips = RoundTrips()
    frame = masked_frame(echo_payload(args.size))
    clients, transports = await connect_echo_clients(
        args, lambda: RoundTripClient(trips, frame, args.size)
    )

    async def run(duration: float) -> dict[str, Any]:
        trips.received = trips.errors = 0
        trips.rtt = Histogram()
        trips.drained.clear()
        trips.running = True
        start = time.monotonic()
        for client in clients:
            client.start()
        await asyncio.sleep(duration)
        received, errors, rtt = trips.received, trips.errors, trips.rtt
        elapsed = time.monotonic() - start
        trips.running = False
        # The next run must not start with an echo of this one still on its way.
        if trips.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trips.drained.wait(), DRAIN_TIMEOUT)
        return {
            "messages": received,
            "elapsed": elapsed,
            "errors": errors,
            "stalled": trips.in_flight,
            "rtt": rtt.to_json(),
        }

    await obey_runs(commands, transports, run)


# --- fan-out ------------------------------------------------------------------------


class Tally:
    """Per-round arrival counts for this process's subscribers."""

    def __init__(self) -> None:
        self.expected = 0
        self.counts: dict[int, int] = {}

    def arrived(self, round_id: int) -> None:
        """Count one arrival; report the round when every subscriber has it."""
        count = self.counts.get(round_id, 0) + 1
        self.counts[round_id] = count
        if count == self.expected:
            emit("delivered", round=round_id, t=time.monotonic())
            del self.counts[round_id]


class Subscriber(WSListener):
    """Count arrivals by the round number in the first eight bytes."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Count a broadcast message."""
        if frame.msg_type == WSMsgType.BINARY and frame.payload_size >= 8:
            self.tally.arrived(int.from_bytes(frame.get_payload_as_memoryview()[:8], "big"))
        elif frame.msg_type == WSMsgType.CLOSE:
            answer_close(transport, frame)


async def run_fanout(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    """Fan-out mode (see the module docstring)."""
    tally = Tally()
    transports, error = await connect_many(
        args.url,
        args.conns,
        lambda: Subscriber(tally),
        concurrency=args.connect_concurrency,
        read_buffer=SMALL_READ_BUFFER,
    )
    tally.expected = len(transports)
    emit("ready", connected=len(transports), failed=args.conns - len(transports), error=error)
    padding = bytes(max(0, args.size - 8))
    try:
        while (command := await next_command(commands))["cmd"] != "quit":
            if command["cmd"] != "publish" or not transports:
                emit("error", message=f"cannot obey {command['cmd']!r}")
                continue
            round_id: int = command["round"]
            message = round_id.to_bytes(8, "big") + padding
            sent_at = time.monotonic()
            transports[0].send(WSMsgType.BINARY, message)
            emit("published", round=round_id, t=sent_at)
    finally:
        disconnect_all(transports)


# --- handshakes ---------------------------------------------------------------------

# RFC 6455's sample key and its accept value: the server's answer is checked
# against a constant instead of hashing per connection.
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
# A masked close frame with code 1000 (masking key 0, so the payload is plain).
CLOSE_FRAME = bytes((0x88, 0x82, 0, 0, 0, 0)) + (1000).to_bytes(2, "big")


class HandshakeProbe(asyncio.Protocol):
    """One connection: opening handshake, close handshake, then the server closes TCP.

    A bare protocol with a prepared request rather than a WebSocket client
    library: the client must cost less per handshake than any server, and a
    general-purpose client spends most of its time on things this does not need.
    """

    def __init__(self, request: bytes, outcome: asyncio.Future[str | None]) -> None:
        self.request = request
        self.outcome = outcome
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        # uvloop's transports do not subclass asyncio's, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Check the 101 response, then start the close handshake."""
        if self.upgraded:
            return  # the server's close frame; it closes TCP next
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        transport = self.transport
        assert transport is not None
        if not head.startswith(b"HTTP/1.1 101") or HANDSHAKE_ACCEPT not in head:
            self._finish(f"unexpected handshake response {head[:40]!r}")
            transport.abort()
            return
        self.upgraded = True
        transport.write(CLOSE_FRAME)

    def connection_lost(self, exc: Exception | None) -> None:
        """Done: the server closed TCP after the close handshake (or failed)."""
        self._finish(None if self.upgraded else f"connection lost during the handshake ({exc})")

    def _finish(self, error: str | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(error)


async def handshake_once(host: str, port: int, request: bytes) -> str | None:
    """One connect, opening handshake and close handshake; an error message or ``None``."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[str | None] = loop.create_future()
    transport: asyncio.Transport | None = None
    try:
        transport, _ = await loop.create_connection(
            lambda: HandshakeProbe(request, outcome), host, port
        )
        # The server answers the close frame and closes TCP first, so TIME_WAIT
        # lands on its side and client ports are not used up.
        return await asyncio.wait_for(outcome, 10)
    except (TimeoutError, OSError) as exc:
        if transport is not None:
            transport.abort()
        return f"{type(exc).__name__}: {exc}"


async def run_handshake(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    """Handshake mode (see the module docstring)."""
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"GET {url.path or '/'} HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    emit("ready", connected=0, failed=0, error=None)
    while (command := await next_command(commands))["cmd"] != "quit":
        if command["cmd"] != "run":
            emit("error", message=f"unknown command {command['cmd']!r}")
            continue
        done = 0
        errors: list[str] = []
        start = time.monotonic()

        async def connector(deadline: float, errors: list[str]) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                error = await handshake_once(host, port, request)
                if error is None:
                    done += 1
                else:
                    errors.append(error)
                    await asyncio.sleep(0.01)

        deadline = start + command["duration"]
        await asyncio.gather(*(connector(deadline, errors) for _ in range(args.concurrency)))
        emit(
            "result",
            handshakes=done,
            elapsed=time.monotonic() - start,
            errors=len(errors),
            error=errors[0] if errors else None,
        )


# --- hold ---------------------------------------------------------------------------


class CloseBook:
    """Who has been closed by the server, how, and when the last one was."""

    def __init__(self) -> None:
        self.expected = 0
        self.closed = 0
        self.clean = 0
        self.last = 0.0
        self.all_closed = asyncio.Event()

    def record(self, clean: bool) -> None:
        """Record one connection closed by the server."""
        self.closed += 1
        self.clean += clean
        self.last = time.monotonic()
        if self.closed >= self.expected:
            self.all_closed.set()


class Holder(WSListener):
    """Stay open, answer pings (picows does it), and record how the server closes."""

    def __init__(self, book: CloseBook) -> None:
        self.book = book
        self.seen_close = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Answer a close frame, record it and disconnect."""
        if frame.msg_type == WSMsgType.CLOSE and not self.seen_close:
            self.seen_close = True
            self.book.record(clean=True)
            answer_close(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Record a connection lost without a close frame."""
        if not self.seen_close:
            self.seen_close = True
            self.book.record(clean=False)


async def run_hold(args: argparse.Namespace, commands: asyncio.StreamReader) -> None:
    """Hold mode (see the module docstring)."""
    book = CloseBook()
    transports, error = await connect_many(
        args.url,
        args.conns,
        lambda: Holder(book),
        concurrency=args.connect_concurrency,
        deflate=args.deflate,
        read_buffer=SMALL_READ_BUFFER,
    )
    book.expected = len(transports)
    negotiated = sum(
        1
        for t in transports
        if "permessage-deflate" in t.response.headers.get("Sec-WebSocket-Extensions", "")
    )
    emit(
        "ready",
        connected=len(transports),
        failed=args.conns - len(transports),
        deflate=negotiated,
        error=error,
    )
    try:
        while (command := await next_command(commands))["cmd"] != "quit":
            if command["cmd"] == "status":
                emit("status", open=len(transports) - book.closed)
            elif command["cmd"] == "watch":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(book.all_closed.wait(), command["timeout"])
                emit(
                    "closed",
                    closed=book.closed,
                    clean=book.clean,
                    last=book.last,
                    open=len(transports) - book.closed,
                )
            else:
                emit("error", message=f"unknown command {command['cmd']!r}")
    finally:
        disconnect_all(transports)


MODES: dict[str, Callable[[argparse.Namespace, asyncio.StreamReader], Awaitable[None]]] = {
    "echo": run_echo,
    "fanout": run_fanout,
    "handshake": run_handshake,
    "hold": run_hold,
    "rr": run_rr,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the load generator's command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--conns", type=int, default=1, help="connections to open")
    parser.add_argument("--size", type=int, default=32, help="message size in bytes")
    parser.add_argument("--window", type=int, default=32, help="echo messages in flight")
    parser.add_argument("--concurrency", type=int, default=16, help="handshake loops")
    parser.add_argument("--connect-concurrency", type=int, default=64)
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    """Run one mode until told to quit or until standard input closes."""
    commands = await stdin_reader()
    try:
        await MODES[args.mode](args, commands)
    except Exception as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(parse_args()))
