"""Property-based fuzzing against a running server: time budgets, raw wire I/O, health checks.

Theory of operation:
    A fuzz test is a synchronous pytest test. The server runs in a blocking
    portal (its own event loop thread, on each anyio backend) and the test
    talks to it over blocking sockets, so hypothesis drives plain functions.
    Each example opens its own connection; the server stays up for the whole
    test, so that damage one input leaves behind shows in the next one.

    Two hypothesis profiles set how long a fuzz test runs:

    * ``fuzz-quick`` (the default): a few dozen examples per test, so the fuzz
      tests run with the normal suite.
    * ``fuzz`` (``make fuzz``, chosen by the ``WSUP_FUZZ_SECONDS`` environment
      variable): hypothesis runs in rounds of many examples, each round with a
      fresh random seed and sized from the speed of the previous one, until
      the test's share of the time budget is spent.

    A round is a complete hypothesis run, so a failure is shrunk and reported
    as usual (with the ``@reproduce_failure`` blob to replay it).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, MutableMapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.uri import parse_uri

from supervisor import Server
from supervisor.metrics import CONNECTION_STATES
from tests.helpers.metrics import sample
from tests.helpers.raw import complete_response
from tests.helpers.server import ws_url

#: Environment variable that switches the fuzz tests to the ``fuzz`` profile:
#: the total time budget in seconds, shared equally by the fuzz tests run.
BUDGET_VARIABLE = "WSUP_FUZZ_SECONDS"

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("fuzz-quick", max_examples=30, **_COMMON)
settings.register_profile("fuzz", max_examples=100, **_COMMON)

#: Examples in the first round of the ``fuzz`` profile, before the speed is known.
FIRST_ROUND = 50
#: Bounds on the examples of one later round (a round must end to restart with a new seed).
ROUND_BOUNDS = (20, 5_000)

T = TypeVar("T")


def budget_seconds() -> float | None:
    """The total fuzz budget from the environment, or ``None`` for the quick profile.

    Raises:
        ValueError: the variable is set but is not a positive number.
    """
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not text:
        return None
    seconds = float(text)
    if not seconds > 0:
        raise ValueError(f"{BUDGET_VARIABLE} must be a positive number of seconds, got {text!r}")
    return seconds


@dataclass
class FuzzRun:
    """What one fuzz test ran: examples (shrinking included), rounds, seconds."""

    name: str
    examples: int = 0
    rounds: int = 0
    seconds: float = 0.0


@dataclass
class Fuzzer:
    """Runs a property under the active profile; one per test (the ``fuzz`` fixture).

    Attributes:
        share: seconds this test may run under the ``fuzz`` profile, or
            ``None`` under ``fuzz-quick`` (one round of its examples).
        run_record: what ran, for the session's summary.
    """

    share: float | None
    run_record: FuzzRun

    def run(self, strategy: st.SearchStrategy[T], check: Callable[[T], None]) -> FuzzRun:
        """Check ``check(example)`` on examples of ``strategy`` until the profile is done.

        Raises:
            AssertionError: (or whatever ``check`` raises) for the shrunk failing
                example, which hypothesis prints.
        """
        record = self.run_record

        def counted(example: T) -> None:
            record.examples += 1
            check(example)

        started = time.monotonic()
        try:
            if self.share is None:
                self._round(strategy, counted, settings.get_profile("fuzz-quick").max_examples)
                return record
            deadline = started + self.share
            size = FIRST_ROUND
            while deadline - time.monotonic() > 0:
                round_started, before = time.monotonic(), record.examples
                self._round(strategy, counted, size)
                per_example = (time.monotonic() - round_started) / max(1, record.examples - before)
                # Half of what is left: examples slow down as a run goes on, and
                # the last round may overrun the budget by its own length only.
                remaining = deadline - time.monotonic()
                low, high = ROUND_BOUNDS
                size = max(low, min(high, int(remaining / 2 / per_example)))
            return record
        finally:
            record.seconds += time.monotonic() - started

    def _round(self, strategy: st.SearchStrategy[T], test: Callable[[T], None], size: int) -> None:
        self.run_record.rounds += 1
        profile = "fuzz-quick" if self.share is None else "fuzz"
        settings(settings.get_profile(profile), max_examples=size)(given(strategy)(test))()


# --- raw frames -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawFrame:
    """One WebSocket frame as a client may write it, wrong in any of its fields.

    Attributes:
        opcode: 0-15 (only 0, 1, 2, 8, 9 and 10 are defined).
        payload: the unmasked payload.
        fin: the FIN bit.
        rsv: the three RSV bits (0-7).
        masked: whether the frame is masked (clients must mask).
        length_form: ``"minimal"``, or ``"16"``/``"64"`` to write the length
            in a longer form than needed.
        declared: a payload length to write instead of the real one (the
            payload then does not match its header).
    """

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    length_form: str = "minimal"
    declared: int | None = None

    def encode(self, key: bytes = b"\x00\x00\x00\x00") -> bytes:
        """The bytes on the wire, masked with ``key`` when :attr:`masked`."""
        first = (0x80 if self.fin else 0) | (self.rsv & 7) << 4 | (self.opcode & 0x0F)
        size = len(self.payload) if self.declared is None else self.declared
        mask_bit = 0x80 if self.masked else 0
        if size < 126 and self.length_form == "minimal":
            head = bytes([first, mask_bit | size])
        elif size < 1 << 16 and self.length_form != "64":
            head = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
        else:
            head = bytes([first, mask_bit | 127]) + struct.pack("!Q", size)
        if not self.masked:
            return head + self.payload
        return head + key + mask(self.payload, key)


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the four-byte ``key`` (RFC 6455 §5.3)."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame with ``code`` and raw ``reason`` bytes."""
    return struct.pack("!H", code) + reason


# --- the opening handshake ------------------------------------------------------------------------


def websocket_key() -> str:
    """A fresh ``Sec-WebSocket-Key``."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_value(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer for ``key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    return base64.b64encode(digest).decode()


def upgrade_lines(path: str = "/echo", key: str | None = None) -> list[bytes]:
    """The lines of a valid opening handshake request for ``path`` (no line endings)."""
    return [
        f"GET {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        f"Sec-WebSocket-Key: {key or websocket_key()}".encode(),
        b"Sec-WebSocket-Version: 13",
    ]


def join_head(lines: Sequence[bytes]) -> bytes:
    """Lines joined into a request head, with its terminating blank line."""
    return b"\r\n".join(lines) + b"\r\n\r\n"


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e]*")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*)")


@dataclass
class Response:
    """An HTTP response as read off a socket.

    Attributes:
        status: the status code.
        headers: (lower-cased name, value) in order.
        body: what followed the head (for a 101: the first WebSocket bytes).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        """Every value of header ``name``."""
        return [value for key, value in self.headers if key == name.lower()]


def parse_response(data: bytes) -> Response:
    """Parse a complete response head strictly (RFC 9112 §2-5).

    Raises:
        AssertionError: the bytes are not a well-formed HTTP/1.1 response head,
            or the body does not have the length ``Content-Length`` announces.
    """
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no end of head in {data[:200]!r}"
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match, f"malformed status line {status_line!r}"
    response = Response(int(match.group(1)), body=body)
    for line in lines:
        header = _HEADER_LINE.fullmatch(line)
        assert header, f"malformed header line {line!r}"
        response.headers.append((header.group(1).decode().lower(), header.group(2).decode()))
    lengths = response.header("content-length")
    if response.status != 101:
        assert len(lengths) <= 1, f"several Content-Length: {lengths}"
        if lengths:
            assert len(body) == int(lengths[0]), (len(body), lengths)
    return response


def read_response(sock: socket.socket) -> tuple[bytes, str]:
    """Read one response; return the bytes and how reading ended.

    The end is ``"eof"`` or ``"reset"`` when the server closed first, or
    ``"complete"`` once a whole response arrived (a 101 head, after which the
    connection is a WebSocket, or a head and its ``Content-Length`` body)
    while the connection is still open.
    """
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return answer, "reset"
        if not chunk:
            return answer, "eof"
        answer += chunk
        if complete_response(answer):
            return answer, "complete"


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; ``False`` if the server had already closed (its answer may still be read)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def http_get(address: tuple[str, int], path: str) -> Response:
    """One ``GET path`` on a fresh connection; the parsed response."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer, _ = read_response(sock)
    return parse_response(answer)


# --- what the server sends after the handshake ---------------------------------------------------


@dataclass
class Received:
    """What the server sent on a WebSocket connection, parsed by websockets' client.

    Attributes:
        messages: data messages as ``(opcode, payload)``, fragments assembled.
        pongs: the payload of every pong.
        close: the server's close frame, if one arrived.
        end: ``"message"`` (the awaited message arrived), ``"close"``,
            ``"eof"`` or ``"reset"``.
    """

    messages: list[tuple[Opcode, bytes]] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)
    close: Close | None = None
    end: str = ""


def open_parser(host: str, port: int, path: str = "/echo") -> ClientProtocol:
    """A client-side parser for a connection already past its opening handshake."""
    return ClientProtocol(parse_uri(f"ws://{host}:{port}{path}"), state=State.OPEN, max_size=None)


def read_frames(
    sock: socket.socket,
    parser: ClientProtocol,
    first: bytes = b"",
    until: Callable[[Received], bool] = lambda _: False,
) -> Received:
    """Read frames until ``until(received)`` holds, a close frame arrives or the socket ends.

    ``first`` is what was already read past the handshake's head.

    Raises:
        AssertionError: the server sent something that is not valid RFC 6455.
    """
    received = Received()
    opcode: Opcode | None = None
    parts: list[bytes] = []
    data = first
    while True:
        parser.receive_data(data)
        for frame in parser.events_received():
            assert isinstance(frame, Frame)
            if frame.opcode is Opcode.PONG:
                received.pongs.append(bytes(frame.data))
            elif frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                opcode = frame.opcode if frame.opcode is not Opcode.CONT else opcode
                parts.append(bytes(frame.data))
                if frame.fin:
                    assert opcode is not None
                    received.messages.append((opcode, b"".join(parts)))
                    opcode, parts = None, []
        assert parser.parser_exc is None, f"the server sent an invalid frame: {parser.parser_exc}"
        if parser.close_rcvd is not None:
            received.close, received.end = parser.close_rcvd, "close"
            return received
        if until(received):
            received.end = "message"
            return received
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            received.end = "reset"
            return received
        if not data:
            received.end = "eof"
            return received


def echo_round_trip(sock: socket.socket, parser: ClientProtocol, first: bytes = b"") -> None:
    """Send one text message on an open connection and check that it comes back.

    Raises:
        AssertionError: it did not come back unchanged.
    """
    text = b"fuzz: echo " + os.urandom(4).hex().encode()
    sock.sendall(RawFrame(Opcode.TEXT.value, text).encode(os.urandom(4)))
    received = read_frames(sock, parser, first, until=lambda got: bool(got.messages))
    assert received.messages == [(Opcode.TEXT, text)], received


# --- a server in a portal -----------------------------------------------------------------------


class ErrorRecords(logging.Handler):
    """Keeps standard-library log records at ERROR and above (asyncio's, trio's...)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Served:
    """A server running in a portal, seen from the test's thread.

    Attributes:
        portal: runs coroutines in the server's event loop.
        server: the server (read it through :attr:`portal`).
        events: structlog events captured while it runs.
        errors: standard-library log records at ERROR or above.
    """

    portal: anyio.from_thread.BlockingPortal
    server: Server
    events: list[MutableMapping[str, Any]]
    errors: list[logging.LogRecord]

    @property
    def address(self) -> tuple[str, int]:
        """Host and port of the server's first listener."""
        host, port = self.server.ports[0]
        return host, port

    def assert_healthy(self) -> None:
        """``/healthz`` answers 200 and a new client gets its message echoed."""
        assert http_get(self.address, "/healthz").status == 200
        with connect(ws_url(self.server, "/echo"), open_timeout=10, close_timeout=10) as client:
            client.send("still there?")
            assert client.recv(timeout=10) == "still there?"

    def assert_quiet(self) -> None:
        """No ERROR log line or traceback since the last call (checked lines are dropped)."""
        checked = len(self.events)
        problems = log_problems(self.events[:checked])
        del self.events[:checked]
        assert problems == [], problems
        assert self.errors == [], [record.getMessage() for record in self.errors]

    def assert_all_closed(self) -> None:
        """Every connection is gone in the end, in every state."""

        def held() -> float:
            return sum(
                sample(self.server, "wsup_connections", state=state) for state in CONNECTION_STATES
            )

        async def settle() -> None:
            with anyio.fail_after(15):
                while held():  # noqa: ASYNC110 - metrics change without an event to wait on
                    await anyio.sleep(0.01)

        self.portal.call(settle)


#: What the ``serve`` fixture returns: ``serve(app=echo_app, **config)``.
ServeFactory = Callable[..., AbstractContextManager[Served]]


# --- logs -----------------------------------------------------------------------------------------


def log_problems(events: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """Captured structlog events at ERROR or above, or carrying a traceback."""
    return [
        event
        for event in events
        if event.get("log_level") in ("error", "critical", "exception")
        or "exc_info" in event
        or "exception" in event
    ]
