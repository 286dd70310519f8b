"""One WebSocket connection: the socket side of a connection actor.

Theory of operation: after the handshake, a connection runs two loops. The
*reader* (the connection's own task) feeds bytes from the socket into
websockets' Sans-I/O ``ServerProtocol``, assembles fragmented messages, and
puts each complete message into the actor's mailbox; when that mailbox is full
under ``block``, the reader stops reading, which is TCP backpressure on the
client. The *writer* is the only code that writes to the socket: it takes the
queued outbound messages, about 64 KiB of them at a time, frames them through
the protocol (or copies a pre-encoded frame), and writes each batch with a
single ``send``; what the socket has not taken yet stays in the buffer, where a
slow-consumer disconnect can still drop it. Control frames the protocol
produces while reading (pongs to the client's pings) go into the same buffer,
ahead of the messages, and count against its limit: while the buffer is over
its limit the reader reads nothing, or a client sending pings and reading
nothing would grow the server without end.

On asyncio (plain TCP), the socket side runs without tasks: after the
handshake the transport is handed a small :class:`asyncio.Protocol` whose
callbacks feed the parser (``data_received``) and write synchronously; the
transport's flow control (``pause_writing``/``resume_writing``, with a high-water
mark of zero) decides when messages wait in the outbound buffer instead. A
connection then costs one task (its actor) and one task switch per inbound
message. A full ``block`` mailbox pauses reading and hands the rest of the
batch to a short-lived task that waits for room. TLS and trio use the two loops.

Closing: whoever closes, the connection ends up telling its actor to drain
(finish its mailbox, then ``on_close``); and whenever the actor ends for good,
the connection closes — with 1011 if the actor crashed past its restart
intensity, 1001 while the server drains, 1000 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import ByteStream
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors import (
    ActorRef,
    Cell,
    DeadLetter,
    Exit,
    ExitKind,
    MailboxClosed,
    MailboxFull,
    MonotonicClock,
)
from actors._backend import Waiter, primitives

from ._aio import enter_callback, exit_callback
from ._app import FromClient, Handler, Request, RouteOptions
from ._exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, OutboundFull
from ._keepalive import Keepalive
from ._outbound import (
    WRITE_BATCH,
    OutboundBuffer,
    OutboundItem,
    OutboundVerdict,
    frame_header,
    wire_message,
)
from .metrics import close_reason_for_code

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Connection", "ConnectionState", "ConnectionStatistics"]

_log = structlog.get_logger("wsup.connection")

_CLOSED_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
_READ_SIZE = 1 << 16
# Enum members as module constants: on Python 3.11 each ``Opcode.TEXT`` costs a
# lookup of about 0.2 µs, and the per-frame paths below make several.
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_PONG, _CLOSE = Opcode.PONG, Opcode.CLOSE
_OPEN = State.OPEN
_ACCEPT = OutboundVerdict.ACCEPT
#: In callback mode, send() yields once per this many calls (not per call: cheaper).
_SEND_BATCH = 32


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life."""

    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection: its traffic, and what the server holds for it.

    Attributes:
        messages_in: complete messages received from the client.
        messages_out: messages written to the client.
        bytes_in: bytes read from the socket.
        bytes_out: bytes written to the socket.
        buffered_bytes: bytes waiting in the outbound buffer (see
            :attr:`Connection.buffered_bytes`).
        partial_bytes: bytes of the fragmented message being assembled.
        partial_fragments: how many fragments of it have arrived.
        reading_paused: whether the server has stopped reading from the client:
            its mailbox is full under ``block``, or the outbound buffer is over
            its limit.
        inline_steps: messages whose handler step began in the read callback
            itself, without the mailbox (asyncio, plain TCP: see
            ``docs/architecture.md``).
    """

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    buffered_bytes: int
    partial_bytes: int
    partial_fragments: int
    reading_paused: bool
    inline_steps: int


class Connection:
    """One open WebSocket connection, as its actor and the app see it.

    Attributes:
        request: the handshake request (path, params, query, headers, cookies,
            client address).
        subprotocol: the negotiated subprotocol, if any.
        address: the connection actor's address (``conn:<node>.<n>``).
        state: the :class:`ConnectionState`.
    """

    __slots__ = (
        "_batch_binary",
        "_batch_bytes",
        "_batch_text",
        "_blocked",
        "_checkpoint",
        "_close_info",
        "_close_request",
        "_close_timer_started",
        "_eof_received",
        "_eof_sent",
        "_failing",
        "_finished",
        "_flush_scheduled",
        "_fragment_count",
        "_fragment_text",
        "_fragments",
        "_loop",
        "_new_event",
        "_outbound",
        "_output_paused",
        "_paused",
        "_protocol",
        "_reading",
        "_reason_label",
        "_sends",
        "_space",
        "_stream",
        "_tg",
        "_timer",
        "_transport",
        "_writer_done",
        "_writer_wake",
        "address",
        "bytes_in",
        "bytes_out",
        "cell",
        "keepalive",
        "messages_in",
        "messages_out",
        "opened_at",
        "ref",
        "request",
        "route",
        "server",
        "state",
        "subprotocol",
    )

    def __init__(
        self,
        server: Server,
        stream: ByteStream,
        protocol: ServerProtocol,
        request: Request,
        route: RouteOptions,
        subprotocol: str | None,
        *,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.server = server
        self.request = request
        self.route = route
        self.subprotocol = subprotocol
        self.address = ""
        self.state = ConnectionState.OPEN
        self.opened_at = server.clock.now()
        self._stream = stream
        self._protocol = protocol
        self._outbound = OutboundBuffer(route.outbound_limit, route.slow_consumer)
        self._writer_wake: Waiter | None = None
        self._space: anyio.Event | None = None
        self._checkpoint, self._new_event = primitives()
        # asyncio, plain TCP: callbacks on the transport instead of reader/writer tasks.
        self._transport = transport
        self._paused = False  # the transport asked us to stop writing (pause_writing)
        self._output_paused = False  # reading stopped: the outbound buffer is over its limit
        self._flush_scheduled = False
        self._reading = False  # in a read callback (callback mode): see _on_data
        self._loop = asyncio.get_running_loop() if self._transport is not None else None
        self._sends = 0
        self._blocked: tuple[FromClient, list[Frame]] | None = None
        self._timer: anyio.CancelScope | asyncio.TimerHandle | None = None
        self._finished = False
        self._close_request: tuple[int, str] | None = None
        self._close_info: tuple[int, str, str] | None = None
        self._reason_label: str | None = None
        self._failing = False  # fail(): nothing more is queued in front of the close frame
        # The message being assembled: its bytes in one buffer (not one object per
        # fragment, which costs ~45 bytes each however small the fragment).
        self._fragments: bytearray | None = None
        self._fragment_count = 0
        self._fragment_text = False
        # Stream mode: set when the writer ends. Callback mode: made on demand by close().
        self._writer_done = anyio.Event() if self._transport is None else None
        self._close_timer_started = False
        self._eof_sent = self._eof_received = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.cell: Cell | None = None
        self.ref: ActorRef | None = None
        self.keepalive = Keepalive(server.config.keepalive, server.clock.now())
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self._batch_text = self._batch_binary = self._batch_bytes = 0

    # -- what handlers call ------------------------------------------------------------

    @property
    def params(self) -> Any:
        """The route parameters (``/chat/{room}`` → ``conn.params["room"]``)."""
        return self.request.params

    @property
    def remote_address(self) -> tuple[str, int]:
        """The peer's address as the socket sees it."""
        return self.request.remote_address

    @property
    def client_address(self) -> str:
        """The real client IP (the forwarded one behind trusted proxies)."""
        return self.request.client_address

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting in the outbound buffer: messages, and control frames (pongs)."""
        return self._outbound.bytes

    def statistics(self) -> ConnectionStatistics:
        """Return a snapshot of the connection's counters and buffers. Cost: O(1)."""
        fragments = self._fragments
        transport = self._transport
        if transport is not None:
            paused = not transport.is_reading() and not transport.is_closing()
        else:
            paused = self._output_paused or self._blocked is not None
        return ConnectionStatistics(
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            buffered_bytes=self._outbound.bytes,
            partial_bytes=0 if fragments is None else len(fragments),
            partial_fragments=0 if fragments is None else self._fragment_count,
            reading_paused=paused,
            inline_steps=0 if self.cell is None else self.cell.inline_steps,
        )

    def _closed_error(self) -> ConnectionClosed:
        code, reason, initiator = self._close_info or (
            *(self._close_request or (1006, "")),
            "server",
        )
        cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
        return cls(self.address, code=code, reason=reason, initiator=initiator)

    def close_info(self) -> tuple[int, str]:
        """Return the close code and reason, as known now (``(1000, "")`` if not closing)."""
        if self._close_info is not None:
            return self._close_info[0], self._close_info[1]
        if self._close_request is not None:
            return self._close_request
        if self.state is ConnectionState.DRAINING:
            return 1001, "server shutting down"
        return 1000, ""

    def _encode(self, message: str | bytes | bytearray | memoryview) -> OutboundItem:
        if isinstance(message, str):
            return OutboundItem(message.encode(), True)
        if isinstance(message, bytes):
            return OutboundItem(message, False)
        # A tuple, not ``bytearray | memoryview``, which would build a union per call.
        if isinstance(message, (bytearray, memoryview)):
            return OutboundItem(bytes(message), False)
        raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")

    def _check_open(self) -> None:
        if self._close_request is not None or self._close_info is not None:
            raise self._closed_error()

    def send_nowait(self, message: str | bytes) -> None:
        """Queue ``message`` for the client without waiting (str → text, bytes → binary).

        A message that does not fit the outbound buffer meets the route's
        slow-consumer policy.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            OutboundFull: the buffer is full and the policy is ``block``.
            TypeError: ``message`` is neither str nor bytes.
        """
        self._check_open()
        self.enqueue(self._encode(message), wait_ok=False)

    async def send(self, message: str | bytes) -> None:
        """Queue ``message`` for the client.

        Under the ``block`` policy, waits until the buffer has room; other
        policies never wait (see :meth:`send_nowait`). A checkpoint at least
        every 32nd call: a loop that only sends still lets other tasks run and
        can be cancelled.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: ``message`` is neither str nor bytes.
        """
        self._check_open()
        item = self._encode(message)
        while not self.enqueue(item, wait_ok=True):
            # anyio's Event: several tasks may wait for room on one connection.
            space = self._space = self._space or anyio.Event()
            await space.wait()
            self._check_open()
        self._sends += 1
        if self._sends >= _SEND_BATCH or self._transport is None:
            # Stream mode: the writer task must get its turn.
            self._sends = 0
            await self._checkpoint()

    def enqueue(self, item: OutboundItem, *, wait_ok: bool) -> bool:
        """Apply the slow-consumer policy to ``item``; return False if the caller must wait.

        Used by :meth:`send` and by group fan-out with pre-encoded frames.
        """
        buffer = self._outbound
        size = len(item.payload)
        verdict = _ACCEPT if buffer.bytes + size <= buffer.limit else buffer.verdict(size)
        if verdict is not _ACCEPT and self._flush_scheduled and not self._paused:
            # Callback mode: what waits for the scheduled write is not a backlog;
            # write it now, and the limit applies to what the socket cannot take.
            self._flush()
            verdict = buffer.verdict(size)
        if verdict is _ACCEPT:
            pass
        elif verdict is OutboundVerdict.EVICT_OLDEST:
            evicted = buffer.evict_for(size)
            self._dropped("drop_oldest", evicted)
        elif verdict is OutboundVerdict.DROP_NEWEST:
            self._dropped("drop_newest", 1)
            return True
        elif verdict is OutboundVerdict.DISCONNECT:
            self._dropped("disconnect", 1)
            self.fail(self.route.slow_consumer_code, "slow consumer", label="slow_consumer")
            return True
        else:
            if wait_ok:
                return False
            raise OutboundFull(self.address, limit=buffer.limit)
        buffer.append(item)
        if self._transport is None:
            self._wake_writer()
        elif not self._flush_scheduled and not self._paused and self._loop is not None:
            # Everything sent before the loop's next turn goes out in one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)
        return True

    def _dropped(self, policy: str, count: int) -> None:
        if count:
            self.server.metrics.messages_dropped.labels(policy=policy).inc(count)
            for _ in range(count):
                self.server.runtime.dead_letters.post(
                    DeadLetter(self.address, None, "dropped", f"outbound {policy}")
                )

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after flushing what is queued; returns when the socket is closed.

        Idempotent: later calls only wait.
        """
        self.close_nowait(code, reason)
        if self._finished:
            return
        if self._writer_done is None:
            self._writer_done = anyio.Event()
        await self._writer_done.wait()

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake after what is queued has been written."""
        if self._close_request is None and self._close_info is None:
            self._close_request = (code, reason)
            self._set_state(ConnectionState.CLOSING)
            self._wake_writer()

    def fail(self, code: int, reason: str = "", *, label: str | None = None) -> None:
        """Close at once: discard the outbound buffer, then start the closing handshake.

        What was queued is dropped (and counted) now, so that the close frame is
        the next thing written after the batch the socket is taking, if any
        (about 64 KiB at most). What the kernel's socket buffer already holds
        cannot be taken back: a peer sees the close frame only once it has read
        that. The peer gets ``close_timeout`` seconds from now to complete the
        closing handshake; after that the socket is closed, with or without a
        close frame.
        """
        if self._close_request is None and self._close_info is None:
            self._failing = True
            self._dropped("disconnect", self._outbound.clear())
            self._room()
            self._reason_label = label
            self.close_nowait(code, reason)
        # A peer that stopped reading leaves the writer stuck in a send: the close
        # frame never goes out, so the writer would never start the close timer.
        self._start_close_timer()

    async def recv(self) -> str | bytes:
        """Return the next message from the client (websockets-style handlers only).

        Messages other actors send meanwhile go to ``on_receive`` (by default:
        forwarded to the client).

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        behaviour = self.cell.behaviour if self.cell is not None else None
        if behaviour is None:
            raise self._closed_error()
        while True:
            try:
                message = await behaviour.context.next_message()
            except anyio.EndOfStream:
                raise self._closed_error() from None
            if message.__class__ is FromClient:
                data: str | bytes = message.data
                return data
            await behaviour._receiver()(message)

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    # -- wiring to the actor -------------------------------------------------------------

    def attach(self, ref: ActorRef, cell: Cell) -> None:
        """Bind the connection actor (called once, right after it is spawned)."""
        self.ref = ref
        self.cell = cell
        self.address = ref.address
        cell.on_terminate = self._actor_ended
        if getattr(self.route.handler, "on_receive", None) is Handler.on_receive:
            # The handler only forwards what other actors send: skip its mailbox.
            cell.direct = self._deliver_direct

    def _deliver_direct(self, message: Any, cache: dict[str, Any]) -> bool:
        """Queue a message from another actor straight into the outbound buffer.

        Encodes once per fan-out: the first recipient stores the payload (and,
        for uncompressed connections, the complete frame) in ``cache``; the
        others reuse the same bytes.
        """
        if self._close_request is not None or self._close_info is not None:
            self.server.runtime.dead_letters.post(
                DeadLetter(self.address, message, "stopped", "connection closing")
            )
            return True
        item = cache.get("item")
        if item is None:
            try:
                item = self._encode(wire_message(message))
            except (TypeError, ValueError):
                return False  # let on_receive deal with it (and fail loudly)
            cache["item"] = item
        if not self._protocol.extensions:
            framed = cache.get("frame")
            if framed is None:
                framed = cache["frame"] = OutboundItem(
                    frame_header(item.text, len(item.payload)) + item.payload,
                    item.text,
                    frame=True,
                    size=len(item.payload),
                )
            item = framed
            transport = self._transport
            if (
                transport is not None
                and not self._outbound
                and not self._paused
                and not self._flush_scheduled
                and self._protocol.state is _OPEN
                and not transport.is_closing()
            ):
                # Fan-out in callback mode: one write per member, nothing queued
                # in between (a later send in the same turn coalesces as usual).
                transport.write(item.payload)
                self.bytes_out += len(item.payload)
                self.messages_out += 1
                counters = self.server.counters
                (counters.sent_text if item.text else counters.sent_binary).inc(1)
                counters.sent_bytes.inc(item.size)
                return True
        try:
            self.enqueue(item, wait_ok=False)
        except OutboundFull:
            self._dropped("block_timeout", 1)
        return True

    def _actor_ended(self, exit_: Exit) -> None:
        if exit_.kind is ExitKind.CRASHED:
            # Unlike a dead peer, a crash keeps what the handler sent before it: flush, then 1011.
            self.close_nowait(1011, "internal error")
        elif self.state is ConnectionState.DRAINING:
            self.close_nowait(1001, "server shutting down")
        else:
            self.close_nowait(1000, "")

    def drain(self) -> None:
        """Server shutdown: let the actor finish its mailbox, then close with 1001."""
        if self.state is ConnectionState.OPEN:
            self._set_state(ConnectionState.DRAINING)
            if self.cell is not None and not self.cell.is_terminated:
                self.cell.request_drain()
            else:
                self.close_nowait(1001, "server shutting down")

    def _set_state(self, state: ConnectionState) -> None:
        gauges = self.server.states
        gauges[self.state].dec()
        self.state = state
        if state is not ConnectionState.CLOSED:
            gauges[state].inc()

    # -- I/O -------------------------------------------------------------------------------

    def _wake_writer(self) -> None:
        if self._transport is not None:
            self._flush()
        elif self._writer_wake is not None:
            self._writer_wake.set()
            self._writer_wake = None

    @property
    def uses_callbacks(self) -> bool:
        """Whether the socket side runs in transport callbacks (asyncio, plain TCP)."""
        return self._transport is not None

    def start(self, *, resume: bool = True) -> None:
        """Callback mode: take the transport over from the handshake's protocol.

        What arrived past the request is already in the parser. ``resume``:
        reading was paused while the handshake was decided in a task.
        """
        transport = self._transport
        assert transport is not None
        transport.set_protocol(_TransportProtocol(self))
        self._process(self._protocol.events_received())
        if transport.is_closing():
            self._on_lost()  # the peer left while the handshake was decided
        elif resume and self._blocked is None and not self._output_paused:
            transport.resume_reading()

    async def run(self) -> None:
        """Stream mode: read until the connection ends; the writer runs beside.

        Never raises for I/O.
        """
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                await self._reader()
                # The peer is gone or closing: give the writer close_timeout to finish.
                assert self._writer_done is not None
                with anyio.move_on_after(self.server.config.close_timeout):
                    await self._writer_done.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._finish()

    async def _reader(self) -> None:
        stream = self._stream
        protocol = self._protocol
        await self._handle_events()
        # Read until the peer closes TCP or the writer closes the socket: after a
        # failure the writer only half-closes (see _half_close).
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except _CLOSED_STREAM_ERRORS:
                protocol.receive_eof()
                await self._handle_events()
                break
            self.bytes_in += len(data)
            protocol.receive_data(data)
            await self._handle_events()
            buffer = self._outbound
            if buffer.bytes > buffer.limit:
                await self._wait_for_outbound_room()

    async def _handle_events(self) -> None:
        events = self._protocol.events_received()
        if events:
            # Complete frames only: bytes of an unfinished frame are no sign of life.
            self.keepalive.on_frame(self.server.clock.now())
        blocked = self._consume(events)
        if blocked is not None:
            while blocked is not None:
                # Full under ``block``: stop reading until there is room (TCP backpressure).
                self._blocked = blocked  # (for statistics() only)
                blocked = await self._wait_for_room(*blocked)
            self._blocked = None
        self._after_events()

    async def _wait_for_outbound_room(self) -> None:
        """Stream mode: read nothing more until the writer has brought the outbound
        buffer back within its limit, or has ended (reading is what queues pongs)."""
        buffer = self._outbound
        done = self._writer_done
        assert done is not None
        self._output_paused = True
        try:
            while buffer.bytes > buffer.limit and not done.is_set():
                space = self._space = self._space or anyio.Event()
                await space.wait()
        finally:
            self._output_paused = False

    async def _wait_for_room(
        self, envelope: FromClient, rest: list[Frame]
    ) -> tuple[FromClient, list[Frame]] | None:
        ref = self.ref
        assert ref is not None
        with contextlib.suppress(MailboxFull, MailboxClosed):
            await ref.tell(envelope)
        return self._consume(rest)

    # -- callback mode (asyncio transport) ------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            # Complete frames only: bytes of an unfinished frame are no sign of life.
            self.keepalive.on_frame(self.server.clock.now())
        self._reading = True
        try:
            self._process(events)
        finally:
            self._reading = False

    def _on_eof(self) -> bool:
        self._eof_received = True
        self._protocol.receive_eof()
        self._process(self._protocol.events_received())
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._eof_sent:
                transport.close()  # both sides are done
            else:
                # Keep the transport for writing (a close frame may still be due),
                # but only for close_timeout.
                self._start_close_timer()
        return True

    def _on_lost(self) -> None:
        self._record_close("network")
        self._finalize()

    def _process(self, events: list[Any]) -> None:
        if self._blocked is not None:
            # Reading is paused but this batch was already read: keep the order.
            envelope, rest = self._blocked
            self._blocked = (envelope, [*rest, *events])
            return
        blocked = self._consume(events)
        if blocked is not None:
            self._blocked = blocked
            assert self._transport is not None
            self._transport.pause_reading()
            if not self.server.start_soon(self._unblock):
                self._blocked = None
        self._after_events()
        buffer = self._outbound
        if buffer.bytes > buffer.limit and not self._output_paused:
            # The socket does not take what reading queued (pongs): read nothing
            # more until it has (_flush resumes).
            self._output_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    async def _unblock(self) -> None:
        while self._blocked is not None:
            blocked = self._blocked
            self._blocked = None
            self._blocked = await self._wait_for_room(*blocked)
            self._after_events()
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._output_paused:
            transport.resume_reading()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        previous = enter_callback()
        try:
            self._flush()
        except Exception:
            _log.exception("connection.failed", conn=self.address)
            self.abort()
        finally:
            exit_callback(previous)

    def _flush(self) -> None:
        """Callback mode's writer: frame what is queued and write it, a batch at a
        time, until the socket stops taking it (``pause_writing``) or all is written."""
        transport = self._transport
        assert transport is not None
        buffer = self._outbound
        while not (self._paused or self._finished or self._eof_sent):
            chunks = self._outgoing()
            if chunks:
                if transport.is_closing():
                    self._record_close("network")
                    return
                payload = b"".join(chunks)
                if payload:
                    # Calls pause_writing() at once if the socket does not take it all.
                    transport.write(payload)
                    self.bytes_out += len(payload)
                if chunks[-1] == b"":
                    self._write_eof(transport)
                    return
            if not buffer:
                break
        if self._output_paused and buffer.bytes <= buffer.limit:
            self._output_paused = False
            if self._blocked is None and not transport.is_closing():
                transport.resume_reading()

    def _write_eof(self, transport: asyncio.Transport) -> None:
        self._eof_sent = True
        if self._protocol.close_rcvd is not None or self._eof_received:
            # The closing handshake is complete: the server closes TCP first.
            transport.close()
            return
        # After failing the connection: half-close, keep reading until the peer
        # closes (see _half_close); the close timer bounds the wait.
        try:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        except (RuntimeError, OSError):
            transport.abort()
        self._start_close_timer()

    def _consume(self, events: list[Any]) -> tuple[FromClient, list[Frame]] | None:
        """Handle frames from the parser, in order.

        Returns the message that found the mailbox full under ``block`` and the
        frames after it; the caller waits for room, then goes on with them.
        """
        for index, event in enumerate(events):
            frame: Frame = event  # after the handshake, every event is a frame
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                if opcode is not _CONT:
                    self._fragment_text = opcode is _TEXT
                fragments = self._fragments
                if fragments is None:
                    if not frame.fin:
                        self._fragments = bytearray(frame.data)
                        self._fragment_count = 1
                        continue
                    data = bytes(frame.data)
                else:
                    fragments += frame.data
                    self._fragment_count += 1
                    if self._fragment_count > self.server.config.max_fragments:
                        self._too_many_fragments()
                        break
                    if not frame.fin:
                        continue
                    data = bytes(fragments)
                    self._fragments = None
                delivered = self._deliver(data)
                if delivered is False:
                    break  # the connection failed: what the peer sent after it is ignored
                if delivered is not True:
                    return delivered, events[index + 1 :]
            elif opcode is _PONG:
                rtt = self.keepalive.on_pong(bytes(frame.data), self.server.clock.now())
                if rtt is not None:
                    self.server.counters.ping_rtt.observe(rtt)
                    # The next ping is now due before the pong deadline the server waits for.
                    self.server.schedule_keepalive(self)
            elif opcode is _CLOSE:
                self._record_close("client")
        return None

    def _too_many_fragments(self) -> None:
        # Empty continuation frames never reach max_size: without a count, one
        # message could keep a connection busy and its reader fed forever.
        limit = self.server.config.max_fragments
        self._fragments = None
        self._protocol.fail(1009, f"more than {limit} fragments in one message (max_fragments)")

    def _after_events(self) -> None:
        if self._batch_text or self._batch_binary:
            counters = self.server.counters
            if self._batch_text:
                counters.received_text.inc(self._batch_text)
            if self._batch_binary:
                counters.received_binary.inc(self._batch_binary)
            counters.received_bytes.inc(self._batch_bytes)
            self._batch_text = self._batch_binary = self._batch_bytes = 0
            # Once per read, not per message: the idle deadline moves all the same.
            self.keepalive.on_message(self.server.clock.now())
        protocol = self._protocol
        if protocol.close_rcvd is not None or protocol.eof_sent:
            self._record_close("client")
        if protocol.writes:
            if self._queue_control() is OutboundVerdict.DISCONNECT:
                self.fail(self.route.slow_consumer_code, "slow consumer", label="slow_consumer")
            self._wake_writer()

    def _queue_control(self) -> OutboundVerdict:
        """Move the control frames the protocol produced (pongs, pings) into the
        outbound buffer, where they count against its limit; return the verdict.

        The end of the connection (a close frame, then EOF) stays with the
        protocol: it goes out after what is queued. Once the connection is
        failing, pongs are dropped: the close frame goes first.
        """
        protocol = self._protocol
        if protocol.writes[-1] == b"":
            return _ACCEPT
        frames = b"".join(protocol.data_to_send())
        if self._failing:
            return _ACCEPT
        return self._outbound.append_control(frames)

    def _deliver(self, data: bytes) -> bool | FromClient:
        """Hand one complete message to the actor.

        Returns True when it is in the mailbox (or nobody will read it), False
        if the message failed the connection, or the envelope when the mailbox
        is full under ``block``.
        """
        text = self._fragment_text
        message: str | bytes
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._protocol.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self._reason_label = "invalid_data"
                return False
        else:
            message = data
        self.messages_in += 1
        # Counted per read batch in _after_events, not per message.
        if text:
            self._batch_text += 1
        else:
            self._batch_binary += 1
        self._batch_bytes += len(data)
        ref = self.ref
        if ref is None:
            return True
        envelope = FromClient(message)
        cell = self.cell
        if self._reading and cell is not None and cell.step_inline(envelope):
            # Request/response: the idle actor's step ran here, in the read
            # callback; no mailbox, no task switch (see actors/_inline.py).
            return True
        try:
            # The reader already yields at every socket read: no extra checkpoint here.
            ref.tell_nowait(envelope)
        except MailboxFull:
            return envelope
        except MailboxClosed:
            pass  # the actor ended and the connection is closing: nobody will read it
        return True

    def _record_close(self, initiator: str) -> None:
        if self._close_info is not None:
            return
        protocol = self._protocol
        if protocol.close_sent is not None and (
            protocol.close_rcvd is None or not protocol.close_rcvd_then_sent
        ):
            sent = protocol.close_sent
            self._close_info = (sent.code, sent.reason, "server")
        elif protocol.close_rcvd is not None:
            rcvd = protocol.close_rcvd
            self._close_info = (rcvd.code, rcvd.reason, initiator)
        elif self._close_request is not None and initiator == "network":
            # We were closing (e.g. a slow consumer) but our close frame never got out.
            self._close_info = (*self._close_request, "server")
        elif protocol.eof_sent or initiator == "network":
            self._close_info = (1006, "", "network")
        else:
            return
        if self.state not in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            self._set_state(ConnectionState.CLOSING)
        if self.cell is not None and not self.cell.is_terminated:
            self.cell.request_drain()
        self._room()

    def _room(self) -> None:
        """Wake whoever waits for the outbound buffer to shrink (a ``send`` under
        ``block``, a reader paused by it) or for the connection to close."""
        space = self._space
        if space is not None:
            self._space = None
            space.set()

    async def _writer(self) -> None:
        protocol = self._protocol
        stream = self._stream
        buffer = self._outbound
        try:
            while True:
                if not buffer and not protocol.writes and not self._close_pending():
                    wake = self._writer_wake = self._new_event()
                    await wake.wait()
                    continue
                chunks = self._outgoing()
                eof = bool(chunks) and chunks[-1] == b""
                payload = b"".join(chunks)
                if payload:
                    await stream.send(payload)
                    self.bytes_out += len(payload)
                if eof:
                    if protocol.close_rcvd is not None:
                        # The closing handshake is complete: the server closes TCP first.
                        with anyio.CancelScope(shield=True):
                            await stream.aclose()
                    else:
                        await self._half_close()
                    break
        except _CLOSED_STREAM_ERRORS:
            self._record_close("network")
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        finally:
            if self._writer_done is not None:
                self._writer_done.set()
            self._room()  # a reader waiting for the writer must not wait forever

    async def _half_close(self) -> None:
        """After failing the connection: send EOF but keep reading until the peer closes.

        Closing with unread input makes the kernel reset the connection, and a
        peer still sending could lose our close frame (e.g. its 1009). The close
        timer bounds the wait.
        """
        try:
            await self._stream.send_eof()
        except (NotImplementedError, TypeError, RuntimeError, *_CLOSED_STREAM_ERRORS):
            # anyio cannot half-close TLS (NotImplementedError, or TypeError once the
            # TLS session is gone), and uvloop raises RuntimeError on a transport the
            # peer already reset: close outright.
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        self._start_close_timer()

    def _outgoing(self) -> list[bytes]:
        """What is due on the wire now, in order: the queued control frames (pongs,
        pings); the oldest queued messages, framed, about WRITE_BATCH bytes of them.
        Once nothing is left queued: the close frame if a close was asked for, and
        what the protocol produced (the close echo). A final ``b""`` means:
        half-close the socket after these."""
        buffer = self._outbound
        protocol = self._protocol
        if buffer:
            control = buffer.take_control(WRITE_BATCH) if buffer.control_bytes else b""
            # Past OPEN, _frame drops messages: take them all at once.
            chunks = self._frame(
                buffer.take(WRITE_BATCH - len(control))
                if protocol.state is _OPEN
                else buffer.take_all()
            )
            if control:
                chunks.insert(0, control)
            if self._space is not None:
                self._room()
            if buffer:
                return chunks  # the rest in the next batch
        else:
            chunks = []
        if self._close_pending():
            code, reason = self._close_request or (1000, "")
            try:
                protocol.send_close(code, reason)
            except InvalidState:
                pass
            else:
                self._record_close("server")
                self._start_close_timer()
        chunks.extend(protocol.data_to_send())
        return chunks

    def _close_pending(self) -> bool:
        return self._close_request is not None and self._protocol.close_sent is None

    def _frame(self, items: list[OutboundItem]) -> list[bytes]:
        if not items:
            return []
        protocol = self._protocol
        chunks: list[bytes] = []
        text_sent = binary_sent = size = 0
        if protocol.state is not _OPEN:
            self._dropped("disconnect", len(items))
        else:
            # Without extensions a frame is a header and the payload: no need
            # for the protocol's serializer (see frame_header).
            plain = not protocol.extensions
            for item in items:
                size += item.size if item.frame else len(item.payload)
                if item.frame or plain:
                    if protocol.writes:
                        # Control frames the protocol queued first go first.
                        chunks.extend(protocol.data_to_send())
                    if not item.frame:
                        chunks.append(frame_header(item.text, len(item.payload)))
                    if item.payload:  # never b"": a final b"" means end of stream
                        chunks.append(item.payload)
                elif item.text:
                    protocol.send_text(item.payload)
                else:
                    protocol.send_binary(item.payload)
                if item.text:
                    text_sent += 1
                else:
                    binary_sent += 1
            if not plain:
                chunks.extend(protocol.data_to_send())  # the frames send_text/binary made
        counters = self.server.counters
        if text_sent:
            counters.sent_text.inc(text_sent)
        if binary_sent:
            counters.sent_binary.inc(binary_sent)
        if size:
            counters.sent_bytes.inc(size)
        self.messages_out += text_sent + binary_sent
        return chunks

    def _start_close_timer(self) -> None:
        if self._close_timer_started or self._finished:
            return
        if self._tg is not None:
            self._close_timer_started = True
            self._tg.start_soon(self._close_timer)
        elif self._transport is not None:
            self._close_timer_started = True
            if self._loop is not None and isinstance(self.server.clock, MonotonicClock):
                # A loop timer, not a task: a drain starts one per connection.
                self._timer = self._loop.call_later(
                    self.server.config.close_timeout, self._close_timed_out
                )
            elif not self.server.start_soon(self._close_timer):
                self.abort()  # the server is stopping: no time left to wait

    def _close_timed_out(self) -> None:
        previous = enter_callback()
        try:
            self._timer = None
            self.abort()
        finally:
            exit_callback(previous)

    async def _close_timer(self) -> None:
        # The peer has close_timeout seconds to answer our close frame.
        with anyio.CancelScope() as scope:
            if self._transport is not None:
                if self._finished:
                    return
                self._timer = scope
            await self.server.clock.sleep(self.server.config.close_timeout)
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            elif self._transport is not None:
                self.abort()

    def send_ping(self) -> None:
        """Send a keepalive ping now (called by the server's keepalive task)."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_ping(self.keepalive.ping_payload)
            self._queue_control()  # ahead of queued messages; ours, so never refused
            self._wake_writer()

    def abort(self) -> None:
        """Stop all I/O at once (close timeout, forced shutdown)."""
        self._record_close("network")
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._transport is not None:
            self._transport.abort()
            self._finalize()

    async def _finish(self) -> None:
        await self._stream.aclose()
        self._finalize()

    def _finalize(self) -> None:
        """Account for the end of the connection (once)."""
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._record_close("network")
        code, reason, initiator = self._close_info or (1006, "", "network")
        label = self._reason_label or close_reason_for_code(code)
        if self.state is not ConnectionState.CLOSED:
            self._set_state(ConnectionState.CLOSED)
        if self.cell is not None and not self.cell.is_terminated:
            self.cell.request_drain()
        discarded = self._outbound.clear()
        if discarded:
            self._dropped("disconnect", discarded)
        self._fragments = None
        if self._writer_done is not None:
            self._writer_done.set()
        # Ends websockets' parser, a generator that refers back to its protocol (as
        # websockets' own connections do when the socket goes): no cycle is left.
        self._protocol.receive_eof()
        self.server.connection_closed(self, code, reason, initiator, label)


class _TransportProtocol(asyncio.Protocol):
    """Forwards an asyncio transport's callbacks to its :class:`Connection`.

    An unexpected error in a callback is logged and aborts that connection only.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def data_received(self, data: bytes) -> None:
        previous = enter_callback()
        try:
            self._conn._on_data(data)
        except Exception:
            self._failed()
        finally:
            exit_callback(previous)

    def eof_received(self) -> bool:
        previous = enter_callback()
        try:
            return self._conn._on_eof()
        except Exception:
            self._failed()
            return False
        finally:
            exit_callback(previous)

    def connection_lost(self, exc: Exception | None) -> None:
        previous = enter_callback()
        try:
            self._conn._on_lost()
        finally:
            exit_callback(previous)

    def pause_writing(self) -> None:
        self._conn._paused = True

    def resume_writing(self) -> None:
        self._conn._paused = False
        self._conn._scheduled_flush()

    def _failed(self) -> None:
        _log.exception("connection.failed", conn=self._conn.address)
        self._conn.abort()
