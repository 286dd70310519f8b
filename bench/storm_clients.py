"""Reconnecting clients for the storm scenario (``python -m bench.storm_clients``).

Theory of operation: the harness starts a few of these processes
(``--url`` is the server that will be stopped, ``--reconnect-url`` the one
that takes the clients back). Each opens ``--conns`` connections to the first
server, prints ``{"event": "ready", ...}`` like :mod:`bench.loadgen`, and
holds them: keepalive pings are answered. When a connection ends (the server's
close frame, or the TCP connection lost), its client comes back the way a
well-behaved client does, as the chat page of ``examples/chat.html`` does:
exponential backoff with full jitter (attempt *n* waits a random time between
0 and ``min(10, 0.5 x 2^n)`` seconds, the first attempt included), to
``--reconnect-url``; a ``503`` with ``Retry-After`` adds the time it asks for
to the next wait. Each attempt (connect, opening handshake) gets
:data:`ATTEMPT_TIMEOUT` seconds. Failed attempts are counted by reason
(:data:`REASONS`). With ``--source-addresses``, the clients connect from those
local addresses in turn, each with the whole ephemeral port range.

The opening handshake and the frames are websockets' Sans-I/O
``ClientProtocol`` over a bare asyncio protocol: callbacks rather than a task
per connection, so a process holds thousands of connections cheaply, and a
connection reset or refused is seen as such (``connection_lost`` gets the
error), which a higher-level client would fold into one exception.

Commands, one JSON object per line on standard input:

* ``{"cmd": "watch", "timeout": S}``: answers ``{"event": "watching"}`` at
  once (the harness sends SIGTERM after it), then waits until every client
  is connected to the second server again, or S seconds, and answers
  ``{"event": "storm", ...}`` with the fields of :meth:`Book.report`.
* ``{"cmd": "status"}``: ``{"event": "status", "open": N}`` (connections open
  now, to either server).
* ``{"cmd": "quit"}``, or the end of input: drop everything and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import random
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import uvloop
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from bench.latency import Histogram
from bench.loadgen import emit, next_command, stdin_reader

#: Reconnect backoff: attempt n waits uniform(0, min(CAP, BASE * 2**n)) seconds.
BASE = 0.5
CAP = 10.0
#: Seconds one attempt (TCP connect and opening handshake) may take.
ATTEMPT_TIMEOUT = 10.0
#: Why an attempt failed, in report order.
REASONS = (
    "refused",  # ECONNREFUSED: nothing listens (or the backlog said no)
    "reset",  # ECONNRESET before an answer
    "timeout",  # no answer within ATTEMPT_TIMEOUT
    "closed",  # the server closed the connection without answering
    "503_retry_after",  # 503 with a Retry-After header
    "503",  # 503 without one
    "other_status",  # any other HTTP status than 101
    "other_error",  # anything else (an invalid answer, another OSError)
)
#: ``IP_BIND_ADDRESS_NO_PORT`` from ``<linux/in.h>`` (the socket module has it from 3.12).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Attempts at the first connection of each client, and how many at a time.
FIRST_ATTEMPTS = 3
FIRST_CONCURRENCY = 64


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: ``reason`` is ``None`` for a 101, else one of :data:`REASONS`."""

    reason: str | None
    retry_after: float | None = None
    detail: str = ""


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempt`` (0-based): full jitter."""
    return rng.uniform(0.0, min(CAP, BASE * 2**attempt))


def retry_after(response: Response) -> float | None:
    """The ``Retry-After`` of a response in seconds (delta-seconds or an HTTP date), or ``None``."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def refusal(response: Response) -> Outcome:
    """The outcome of an answer other than 101."""
    detail = f"HTTP {response.status_code}"
    if response.status_code != 503:
        return Outcome("other_status", detail=detail)
    wait = retry_after(response)
    return Outcome("503" if wait is None else "503_retry_after", wait, detail)


def source_socket(source: str | None) -> socket.socket:
    """A non-blocking TCP socket, bound to the address ``source`` if given.

    The port is left to ``connect`` (``IP_BIND_ADDRESS_NO_PORT``), which may
    reuse a local port for another destination: each source address then has
    the whole ephemeral range for each server, as an unbound socket has.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        except OSError:
            sock.close()
            raise
    return sock


class Connection(asyncio.Protocol):
    """One TCP connection of a client: the opening handshake, then pongs and the close."""

    def __init__(self, uri: WebSocketURI, on_drop: Callable[[], None]) -> None:
        self.protocol = ClientProtocol(uri, max_size=2**16)
        self.answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.on_drop = on_drop
        self.transport: asyncio.Transport | None = None
        self.opened = False
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        # uvloop's transports do not subclass asyncio's, hence a cast, not a check.
        self.transport = cast(asyncio.Transport, transport)
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Feed the protocol: the answer to the handshake, then pings and the close."""
        self.protocol.receive_data(data)
        self._flush()
        self._after_events()

    def eof_received(self) -> bool:
        """The server closed its side: let the protocol know, then close ours."""
        self.protocol.receive_eof()
        self._flush()
        self._after_events()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Before an answer, a failed attempt; after the 101, a dropped connection."""
        if not self.answer.done():
            reason = "reset" if isinstance(exc, ConnectionResetError) else "closed"
            self.answer.set_result(Outcome(reason, detail=repr(exc) if exc else "EOF"))
        else:
            self._drop()

    def abort(self) -> None:
        """Drop the connection at once (no close frame: the run is over)."""
        self.ended = True
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                # The protocol is done with the connection (after the close handshake).
                transport.close()

    def _after_events(self) -> None:
        self.protocol.events_received()  # pings are answered by the protocol itself
        if not self.answer.done():
            if self.protocol.state is State.OPEN:
                self.opened = True
                self.answer.set_result(Outcome(None))
            elif self.protocol.handshake_exc is not None:
                exc = self.protocol.handshake_exc
                if isinstance(exc, InvalidStatus):
                    self.answer.set_result(refusal(exc.response))
                elif isinstance(exc.__cause__, EOFError):
                    self.answer.set_result(Outcome("closed", detail=str(exc.__cause__)))
                else:
                    self.answer.set_result(Outcome("other_error", detail=repr(exc)))
                if self.transport is not None:
                    self.transport.close()
        elif self.protocol.close_rcvd is not None or self.protocol.state is State.CLOSED:
            self._drop()

    def _drop(self) -> None:
        if self.opened and not self.ended:
            self.ended = True
            self.on_drop()


class Book:
    """What this process's clients went through; :meth:`report` is the ``storm`` event."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.watching = False
        self.open_first = 0
        self.open_second = 0
        self.drops = 0
        self.early = 0
        self.again = 0
        self.attempts = 0
        self.first_drop = 0.0
        self.last_drop = 0.0
        self.last_back = 0.0
        self.reasons: Counter[str] = Counter()
        self.details: dict[str, str] = {}
        self.reconnect = Histogram()
        self.all_back = asyncio.Event()

    def dropped(self, *, second: bool) -> None:
        """A connection ended (``second``: it was on the second server)."""
        now = time.monotonic()
        self.drops += 1
        if second:
            self.open_second -= 1
            self.again += 1
            self.all_back.clear()
        else:
            self.open_first -= 1
        if not self.watching:
            self.early += 1
        self.first_drop = self.first_drop or now
        self.last_drop = now

    def failed(self, outcome: Outcome) -> None:
        """One failed attempt."""
        assert outcome.reason is not None
        self.reasons[outcome.reason] += 1
        self.details.setdefault(outcome.reason, outcome.detail)

    def back(self, dropped_at: float) -> None:
        """A client is connected to the second server again."""
        now = time.monotonic()
        self.open_second += 1
        self.last_back = now
        self.reconnect.record(int((now - dropped_at) * 1e9))
        if self.open_second == self.clients:
            self.all_back.set()

    def report(self) -> dict[str, Any]:
        """The fields of the ``storm`` event."""
        return {
            "clients": self.clients,
            "back": self.open_second,
            "drops": self.drops,
            "early": self.early,
            "again": self.again,
            "attempts": self.attempts,
            "first_drop": self.first_drop,
            "last_drop": self.last_drop,
            "last_back": self.last_back,
            "reasons": {reason: self.reasons[reason] for reason in REASONS},
            "details": self.details,
            "reconnect": self.reconnect.to_json(),
        }


class Client:
    """One client: a connection to the first server, then (after it ends) to the second."""

    def __init__(
        self, book: Book, first: WebSocketURI, second: WebSocketURI, source: str | None = None
    ) -> None:
        self.book = book
        self.first = first
        self.second = second
        self.source = source
        self.connection: Connection | None = None
        self.on_second = False
        self.dropped_at = 0.0
        self.task: asyncio.Task[None] | None = None
        self.rng = random.Random()

    async def attempt(self, uri: WebSocketURI) -> Outcome:
        """One connect and opening handshake to ``uri``; keeps the connection on a 101."""
        loop = asyncio.get_running_loop()
        on_second = uri is self.second
        connection = Connection(uri, lambda: self._dropped(on_second))
        sock = source_socket(self.source)
        handed = False
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                await loop.sock_connect(sock, (uri.host, uri.port))
                await loop.create_connection(lambda: connection, sock=sock)
                handed = True
                outcome = await asyncio.shield(connection.answer)
        except (TimeoutError, OSError) as exc:
            if handed:
                connection.abort()
            else:
                sock.close()
            if isinstance(exc, TimeoutError):
                return Outcome("timeout", detail=f"no answer in {ATTEMPT_TIMEOUT:g} s")
            if isinstance(exc, ConnectionRefusedError):
                return Outcome("refused", detail=repr(exc))
            if isinstance(exc, ConnectionResetError):
                return Outcome("reset", detail=repr(exc))
            return Outcome("other_error", detail=repr(exc))
        except BaseException:
            if handed:
                connection.abort()
            else:
                sock.close()
            raise
        if outcome.reason is None:
            self.connection = connection
            self.on_second = on_second
        return outcome

    async def connect_first(self, gate: asyncio.Semaphore) -> Outcome:
        """The first connection, to the server that will be stopped.

        A few tries; a 503 with ``Retry-After`` (admission control under test)
        is waited out and does not count as one.
        """
        outcome = Outcome("other_error")
        tries = 0
        while tries < FIRST_ATTEMPTS:
            async with gate:
                outcome = await self.attempt(self.first)
            if outcome.reason is None:
                self.book.open_first += 1
                return outcome
            if outcome.retry_after is not None:
                await asyncio.sleep(outcome.retry_after + self.rng.uniform(0.0, BASE))
                continue
            tries += 1
            await asyncio.sleep(0.1 * tries)
        return outcome

    def _dropped(self, second: bool) -> None:
        self.book.dropped(second=second)
        self.connection = None
        self.dropped_at = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self.come_back())

    async def come_back(self) -> None:
        """Reconnect to the second server: backoff with full jitter, Retry-After honoured."""
        extra = 0.0
        attempt = 0
        while True:
            await asyncio.sleep(extra + backoff(attempt, self.rng))
            self.book.attempts += 1
            outcome = await self.attempt(self.second)
            if outcome.reason is None:
                self.book.back(self.dropped_at)
                return
            self.book.failed(outcome)
            extra = outcome.retry_after or 0.0
            attempt += 1

    def stop(self) -> None:
        """Drop the connection and stop reconnecting."""
        if self.task is not None:
            self.task.cancel()
        if self.connection is not None:
            self.connection.abort()


async def run(args: argparse.Namespace) -> None:
    """Connect, report ready, obey commands until told to quit."""
    commands = await stdin_reader()
    book = Book(args.conns)
    first, second = parse_uri(args.url), parse_uri(args.reconnect_url)
    sources = args.source_addresses or [None]
    clients = [
        Client(book, first, second, sources[index % len(sources)]) for index in range(args.conns)
    ]
    gate = asyncio.Semaphore(FIRST_CONCURRENCY)
    outcomes = await asyncio.gather(*(client.connect_first(gate) for client in clients))
    failures = [outcome for outcome in outcomes if outcome.reason is not None]
    emit(
        "ready",
        connected=len(outcomes) - len(failures),
        failed=len(failures),
        error=f"{failures[0].reason}: {failures[0].detail}" if failures else None,
    )
    try:
        while (command := await next_command(commands))["cmd"] != "quit":
            if command["cmd"] == "status":
                emit("status", open=book.open_first + book.open_second)
            elif command["cmd"] == "watch":
                book.watching = True
                emit("watching")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(book.all_back.wait(), command["timeout"])
                emit("storm", **book.report())
            else:
                emit("error", message=f"unknown command {command['cmd']!r}")
    finally:
        for client in clients:
            client.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.storm_clients", description=__doc__)
    parser.add_argument("--url", required=True, help="the server to connect to first")
    parser.add_argument("--reconnect-url", required=True, help="the server to come back to")
    parser.add_argument("--conns", type=int, default=1, help="clients in this process")
    parser.add_argument(
        "--source-addresses",
        type=lambda value: value.split(","),
        help="comma-separated local addresses (127.0.0.x) the clients connect from, in turn",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        uvloop.run(run(parse_args()))
    except Exception as exc:
        emit("error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
