"""One WebSocket connection: the socket side of a connection actor.

Theory of operation: after the handshake, a connection runs two loops. The
*reader* (the connection's own task) feeds bytes from the socket into
websockets' Sans-I/O ``ServerProtocol``, assembles fragmented messages, and
puts each complete message into the actor's mailbox; when that mailbox is full
under ``block``, the reader stops reading, which is TCP backpressure on the
client. The *writer* is the only code that writes to the socket: it takes every
queued outbound message at once, frames them through the protocol (or copies a
pre-encoded frame), and writes the batch with a single ``send``. Control frames
the protocol produces while reading (pongs, the close echo) ride along.

Closing: whoever closes, the connection ends up telling its actor to drain
(finish its mailbox, then ``on_close``); and whenever the actor ends for good,
the connection closes — with 1011 if the actor crashed past its restart
intensity, 1001 while the server drains, 1000 otherwise.
"""

from __future__ import annotations

import contextlib
import enum
import json
from typing import TYPE_CHECKING, Any, cast

import anyio
import structlog
from anyio.abc import ByteStream
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors import ActorRef, Cell, DeadLetter, Exit, ExitKind, MailboxClosed, MailboxFull
from actors._backend import Waiter, primitives

from ._app import FromClient, Handler, Request, RouteOptions
from ._exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, OutboundFull
from ._keepalive import Keepalive
from ._outbound import OutboundBuffer, OutboundItem, OutboundVerdict
from .metrics import close_reason_for_code

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Connection", "ConnectionState"]

_log = structlog.get_logger("wsup.connection")

_CLOSED_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
_READ_SIZE = 1 << 16


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life."""

    HANDSHAKING = "handshaking"
    OPEN = "open"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


class Connection:
    """One open WebSocket connection, as its actor and the app see it.

    Attributes:
        request: the handshake request (path, params, query, headers, cookies,
            client address).
        subprotocol: the negotiated subprotocol, if any.
        address: the connection actor's address (``conn:<node>.<n>``).
        state: the :class:`ConnectionState`.
    """

    def __init__(
        self,
        server: Server,
        stream: ByteStream,
        protocol: ServerProtocol,
        request: Request,
        route: RouteOptions,
        subprotocol: str | None,
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
        # asyncio fast path: write a message straight to the transport when nothing
        # is queued or being written, instead of waking the writer task.
        transport = getattr(stream, "_transport", None)
        self._transport = transport if hasattr(transport, "get_write_buffer_size") else None
        self._writing = False
        self._close_request: tuple[int, str] | None = None
        self._close_info: tuple[int, str, str] | None = None
        self._abort_buffer = False
        self._reason_label: str | None = None
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._writer_done = anyio.Event()
        self._close_timer_started = False
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
        """Bytes waiting in the outbound buffer."""
        return self._outbound.bytes

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
        if isinstance(message, bytes | bytearray | memoryview):
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
        """Queue ``message`` for the client; a checkpoint.

        Under the ``block`` policy, waits until the buffer has room; other
        policies never wait (see :meth:`send_nowait`).

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
        await self._checkpoint()

    def enqueue(self, item: OutboundItem, *, wait_ok: bool) -> bool:
        """Apply the slow-consumer policy to ``item``; return False if the caller must wait.

        Used by :meth:`send` and by group fan-out with pre-encoded frames.
        """
        buffer = self._outbound
        size = len(item.payload)
        verdict = buffer.verdict(size)
        if verdict is OutboundVerdict.ACCEPT:
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
        transport = self._transport
        if (
            transport is not None
            and not buffer
            and not self._writing
            and self._close_request is None
            and self._protocol.state is State.OPEN
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        ):
            chunks = self._frame([item])
            chunks.extend(self._protocol.data_to_send())
            data = b"".join(chunks)
            transport.write(data)
            self.bytes_out += len(data)
            return True
        buffer.append(item)
        self._wake_writer()
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
        await self._writer_done.wait()

    def close_nowait(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake after what is queued has been written."""
        if self._close_request is None and self._close_info is None:
            self._close_request = (code, reason)
            self._set_state(ConnectionState.CLOSING)
            self._wake_writer()

    def fail(self, code: int, reason: str = "", *, label: str | None = None) -> None:
        """Close at once: discard the outbound buffer, then start the closing handshake.

        The peer gets ``close_timeout`` seconds from now to complete it; after
        that the socket is closed, with or without a close frame.
        """
        if self._close_request is None and self._close_info is None:
            self._abort_buffer = True
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
            await behaviour.receive(message)

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
                item = self._encode(message)
            except TypeError:
                try:
                    item = OutboundItem(json.dumps(message).encode(), True)
                except (TypeError, ValueError):
                    return False  # let on_receive deal with it (and fail loudly)
            cache["item"] = item
        if not self._protocol.extensions:
            framed = cache.get("frame")
            if framed is None:
                opcode = Opcode.TEXT if item.text else Opcode.BINARY
                framed = cache["frame"] = OutboundItem(
                    Frame(opcode, item.payload).serialize(mask=False),
                    item.text,
                    frame=True,
                    size=len(item.payload),
                )
            item = framed
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
        if self._writer_wake is not None:
            self._writer_wake.set()
            self._writer_wake = None

    async def run(self) -> None:
        """Read until the connection ends; the writer runs beside. Never raises for I/O."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                await self._reader()
                # The peer is gone or closing: give the writer close_timeout to finish.
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
        clock = self.server.clock
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
            self.keepalive.on_data(clock.now())
            await self._handle_events()

    async def _handle_events(self) -> None:
        protocol = self._protocol
        events = protocol.events_received()
        for event in events:
            frame = cast(Frame, event)  # after the handshake, every event is a frame
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if opcode is not Opcode.CONT:
                    self._fragment_text = opcode is Opcode.TEXT
                data = bytes(frame.data)
                if not frame.fin:
                    self._fragments.append(data)
                    continue
                if self._fragments:
                    self._fragments.append(data)
                    data = b"".join(self._fragments)
                    self._fragments = []
                if not await self._deliver(data):
                    break  # the connection failed: what the peer sent after it is ignored
            elif opcode is Opcode.PONG:
                rtt = self.keepalive.on_pong(bytes(frame.data), self.server.clock.now())
                if rtt is not None:
                    self.server.metrics.ping_rtt.observe(rtt)
                    # The next ping is now due before the pong deadline the server waits for.
                    self.server.schedule_keepalive(self)
            elif opcode is Opcode.CLOSE:
                self._record_close("client")
        if self._batch_bytes:
            counters = self.server.counters
            if self._batch_text:
                counters.received_text.inc(self._batch_text)
            if self._batch_binary:
                counters.received_binary.inc(self._batch_binary)
            counters.received_bytes.inc(self._batch_bytes)
            self._batch_text = self._batch_binary = self._batch_bytes = 0
        if protocol.close_rcvd is not None or protocol.eof_sent:
            self._record_close("client")
        if protocol.writes:
            self._wake_writer()

    async def _deliver(self, data: bytes) -> bool:
        """Hand one complete message to the actor; return False if it failed the connection."""
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
        # Counted per read batch in _handle_events, not per message.
        if text:
            self._batch_text += 1
        else:
            self._batch_binary += 1
        self._batch_bytes += len(data)
        self.keepalive.on_message(self.server.clock.now())
        ref = self.ref
        if ref is None:
            return True
        # MailboxClosed: the actor ended and the connection is closing; nobody will read it.
        envelope = FromClient(message)
        try:
            # The reader already yields at every socket read: no extra checkpoint here.
            ref.tell_nowait(envelope)
        except MailboxFull:
            # Full under ``block``: stop reading until there is room (TCP backpressure).
            with contextlib.suppress(MailboxFull, MailboxClosed):
                await ref.tell(envelope)
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
                if self._abort_buffer:
                    self._abort_buffer = False
                    buffer.clear()
                chunks = self._frame(buffer.take_all())
                if self._close_pending() and not buffer:
                    code, reason = self._close_request or (1000, "")
                    try:
                        protocol.send_close(code, reason)
                    except InvalidState:
                        pass
                    else:
                        self._record_close("server")
                        self._start_close_timer()
                chunks.extend(protocol.data_to_send())
                eof = bool(chunks) and chunks[-1] == b""
                payload = b"".join(chunks)
                if payload:
                    self._writing = True
                    try:
                        await stream.send(payload)
                    finally:
                        self._writing = False
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
            self._writer_done.set()

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

    def _close_pending(self) -> bool:
        return self._close_request is not None and self._protocol.close_sent is None

    def _frame(self, items: list[OutboundItem]) -> list[bytes]:
        if not items:
            return []
        protocol = self._protocol
        chunks: list[bytes] = []
        text_sent = binary_sent = size = 0
        if protocol.state is not State.OPEN:
            self._dropped("disconnect", len(items))
        else:
            for item in items:
                size += item.size if item.frame else len(item.payload)
                if item.frame:
                    chunks.extend(protocol.data_to_send())
                    chunks.append(item.payload)
                elif item.text:
                    protocol.send_text(item.payload)
                else:
                    protocol.send_binary(item.payload)
                if item.text:
                    text_sent += 1
                else:
                    binary_sent += 1
        counters = self.server.counters
        if text_sent:
            counters.sent_text.inc(text_sent)
        if binary_sent:
            counters.sent_binary.inc(binary_sent)
        if size:
            counters.sent_bytes.inc(size)
        self.messages_out += text_sent + binary_sent
        space = self._space
        if space is not None:
            self._space = None
            space.set()
        return chunks

    def _start_close_timer(self) -> None:
        if not self._close_timer_started and self._tg is not None:
            self._close_timer_started = True
            self._tg.start_soon(self._close_timer)

    async def _close_timer(self) -> None:
        # The peer has close_timeout seconds to answer our close frame.
        await self.server.clock.sleep(self.server.config.close_timeout)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def send_ping(self) -> None:
        """Send a keepalive ping now (called by the server's keepalive task)."""
        if self._protocol.state is State.OPEN:
            self._protocol.send_ping(self.keepalive.ping_payload)
            self._wake_writer()

    def abort(self) -> None:
        """Stop all I/O at once (close timeout, forced shutdown)."""
        self._record_close("network")
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _finish(self) -> None:
        await self._stream.aclose()
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
        self.server.connection_closed(self, code, reason, initiator, label)
