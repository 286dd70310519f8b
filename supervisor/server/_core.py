"""The Sans-I/O core of one WebSocket connection: bytes and clock readings in,
messages, events and bytes to write out.

Theory of operation: a :class:`ConnectionCore` owns everything about a
connection that does not need a socket, a task or a clock: websockets'
``ServerProtocol`` (the parser and the closing handshake), the assembly of
fragmented messages and its bounds (``max_fragments``, then 1009; the
keepalive's ``message_timeout`` for a frame or message left unfinished), UTF-8
checks (1007), the outbound buffer and its slow-consumer verdicts, the control
frames the protocol produces (pongs, keepalive pings; they count against the
outbound limit), the keepalive deadlines, and the close bookkeeping (who
closed, with which code). A *driver* (``_drivers.py``: asyncio transport
callbacks, or anyio streams) moves bytes between it and a socket, and the
:class:`~supervisor.server._connection.Connection` around it hands messages to the
actor. Everything here runs synchronously and is tested with bytes alone.

What goes in:

* :meth:`~ConnectionCore.receive_data` / :meth:`~ConnectionCore.receive_eof`:
  bytes read, or the end of the peer's stream; they return the complete
  messages, in order (``str`` for text, ``bytes`` for binary). Then
  :meth:`~ConnectionCore.after_read`, once what was returned has been handed
  on: it settles the read (counters, the idle deadline, the close, the pongs).
* :meth:`~ConnectionCore.offer` (a message under the slow-consumer policy),
  :meth:`~ConnectionCore.close`, :meth:`~ConnectionCore.fail`,
  :meth:`~ConnectionCore.ping`, :meth:`~ConnectionCore.lost` (the socket is
  gone).

What comes out:

* :meth:`~ConnectionCore.data_to_send`: the next bytes to write, a batch at a
  time; a final ``b""`` means: end the stream (half-close) after them.
* :attr:`~ConnectionCore.events`: what the driver or the connection must act on
  (rare, so ``None`` while empty): :class:`CloseRecorded`,
  :class:`MessagesDropped`, :class:`PongReceived`, :data:`ARM_CLOSE_TIMER`,
  :data:`FAILED`, :data:`RESCHEDULE`.
  :meth:`~ConnectionCore.take_events` empties it.
* :meth:`~ConnectionCore.over_limit`: the outbound buffer holds more than its
  limit; stop reading (reading is what queues pongs) until it does not.
* :meth:`~ConnectionCore.wants_write`: something is due on the wire.

A driver whose peer frames the messages itself (an ASGI server's WebSocket:
whole messages, never bytes) feeds the same core with whole messages instead:
:meth:`~ConnectionCore.receive_message` in (``max_size`` applies there; the
fragments, UTF-8, pings and pongs are the peer's), then the same
:meth:`~ConnectionCore.after_read`; :meth:`~ConnectionCore.take_messages` and
:meth:`~ConnectionCore.close_due` out instead of ``data_to_send``; and
:meth:`~ConnectionCore.peer_closed` for the end its server reports. The
protocol then never sees a byte: it keeps the closing handshake's state.

Per-message counters go to a :class:`TrafficCounters` sink given at
construction (numbers only: the server batches them into its metrics).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from .._constants import CloseCode
from ..metrics import close_reason_for_code
from ._keepalive import Keepalive, KeepaliveConfig
from ._limits import InboundLimiter
from ._outbound import (
    WRITE_BATCH,
    OutboundBuffer,
    OutboundItem,
    OutboundVerdict,
    SlowConsumerPolicy,
    frame_header,
)

__all__ = [
    "ARM_CLOSE_TIMER",
    "FAILED",
    "RESCHEDULE",
    "CloseRecorded",
    "InboundLimited",
    "ConnectionCore",
    "CoreEvent",
    "CoreSignal",
    "Counter",
    "MessagesDropped",
    "PongReceived",
    "TrafficCounters",
]

# Enum members as module constants: on Python 3.11 each ``Opcode.TEXT`` costs a
# lookup of about 0.2 µs, and the per-frame paths below make several.
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_PONG, _CLOSE = Opcode.PONG, Opcode.CLOSE
_OPEN = State.OPEN
_ACCEPT = OutboundVerdict.ACCEPT
_DISCONNECT = OutboundVerdict.DISCONNECT
#: What a peer's server reports when no close frame arrived (never on the wire).
_NO_CLOSE_FRAME = (CloseCode.NO_STATUS_RCVD, CloseCode.ABNORMAL_CLOSURE)
#: The code websockets' parser runs while it waits for the first byte of a frame.
_AT_EOF = StreamReader.at_eof.__code__


def _parser_waits(protocol: ServerProtocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame, nothing buffered."""
    reader = protocol.reader
    if reader.buffer or reader.eof:
        return False
    # Between frames parse() waits in at_eof() (ServerProtocol's parse() in
    # Protocol's), within one in Frame.parse().
    waiting: Any = protocol.parser
    while waiting is not None:
        if getattr(waiting, "gi_code", None) is _AT_EOF:
            return True
        waiting = getattr(waiting, "gi_yieldfrom", None)
    return False


class Counter(Protocol):
    """Something that counts (a batched Prometheus counter, in the server)."""

    def inc(self, amount: int = 1) -> None: ...


class TrafficCounters(Protocol):
    """Where a core counts the messages and bytes it receives and sends."""

    @property
    def received_text(self) -> Counter: ...
    @property
    def received_binary(self) -> Counter: ...
    @property
    def received_bytes(self) -> Counter: ...
    @property
    def sent_text(self) -> Counter: ...
    @property
    def sent_binary(self) -> Counter: ...
    @property
    def sent_bytes(self) -> Counter: ...


@dataclass(frozen=True, slots=True)
class InboundLimited:
    """The client went over the route's inbound rate: reading pauses for
    :attr:`ConnectionCore.read_pause`, or (``closed``) the connection fails with 1008."""

    closed: bool


class CloseRecorded(NamedTuple):
    """The connection's end is known from now on (see :attr:`ConnectionCore.close_info`):
    the actor should drain, and whoever waits for the buffer or the close should look again.

    A named tuple, made from ``close_info`` as it is: every connection's end makes
    one, and a frozen dataclass costs more to make (a ``__setattr__`` per field).
    """

    code: int
    reason: str
    initiator: str
    """``client``, ``server`` or ``network``."""


@dataclass(frozen=True, slots=True)
class MessagesDropped:
    """Messages that will never be written (dead letters, metrics)."""

    policy: str
    """``drop_oldest``, ``drop_newest`` or ``disconnect``."""
    count: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered our keepalive ping after ``rtt`` seconds; its next
    deadline moved (the server reschedules it)."""

    rtt: float


class CoreSignal(enum.Enum):
    """Events without data."""

    ARM_CLOSE_TIMER = "arm_close_timer"
    """The peer has ``close_timeout`` seconds from now to end the connection; then
    the driver drops the socket. Emitted whenever a reason to wait appears (our
    close frame went out, the connection failed): the first one counts."""
    FAILED = "failed"
    """The connection fails: what was queued is dropped and the close frame is
    due. The connection is closing from now on (wake whoever waits to send)."""
    RESCHEDULE = "reschedule"
    """A keepalive deadline moved earlier than the one the server waits for (a
    message left unfinished, with ``message_timeout`` shorter than the others)."""


ARM_CLOSE_TIMER = CoreSignal.ARM_CLOSE_TIMER
FAILED = CoreSignal.FAILED
RESCHEDULE = CoreSignal.RESCHEDULE

CoreEvent: TypeAlias = CloseRecorded | MessagesDropped | PongReceived | InboundLimited | CoreSignal


class ConnectionCore:
    """Everything about one WebSocket connection that is not I/O.

    Args:
        protocol: websockets' protocol, past the handshake (what it already
            parsed beyond the request is processed at the first read).
        counters: where messages and bytes are counted.
        keepalive: the keepalive settings; ``now`` starts its deadlines.
        outbound_limit: the outbound buffer's limit in bytes.
        slow_consumer: what to do with a message that does not fit.
        slow_consumer_code: the close code when that is a disconnect.
        max_fragments: the most frames one message may arrive in.
        max_size: the largest whole message :meth:`receive_message` takes (on
            bytes, the protocol applies its own ``max_size``).
        now: the clock reading at the start.

    Attributes:
        protocol: websockets' ``ServerProtocol``.
        outbound: the outbound buffer (messages and control frames).
        keepalive: the keepalive and idle deadlines.
        close_request: ``(code, reason)`` once the server asked to close.
        close_info: ``(code, reason, initiator)`` once the end is known.
        reason_label: the ``reason`` label of the close metric, if not the code's.
        events: what happened that the driver must act on, oldest first; ``None``
            while nothing did.
        messages_in, messages_out, bytes_in, bytes_out: traffic so far.
    """

    __slots__ = (
        "_counters",
        "_failing",
        "_fragment_count",
        "_fragment_text",
        "_fragments",
        "_inbound",
        "_max_fragments",
        "_max_size",
        "_parser_idle",
        "_received_binary",
        "_received_bytes",
        "_received_text",
        "_slow_consumer_code",
        "bytes_in",
        "bytes_out",
        "close_info",
        "close_request",
        "events",
        "keepalive",
        "messages_in",
        "messages_out",
        "outbound",
        "protocol",
        "read_pause",
        "reason_label",
        "room_wanted",
    )

    def __init__(
        self,
        protocol: ServerProtocol,
        counters: TrafficCounters,
        *,
        keepalive: KeepaliveConfig,
        now: float,
        outbound_limit: int,
        slow_consumer: SlowConsumerPolicy,
        slow_consumer_code: int = CloseCode.TRY_AGAIN_LATER,
        max_fragments: int = 1024,
        max_size: int | None = None,
        inbound: InboundLimiter | None = None,
    ) -> None:
        self.protocol = protocol
        self._counters = counters
        self.outbound = OutboundBuffer(outbound_limit, slow_consumer)
        self.keepalive = Keepalive(keepalive, now)
        self._slow_consumer_code = slow_consumer_code
        self._max_fragments = max_fragments
        self._max_size = max_size
        self._inbound = inbound
        #: Seconds to read nothing more (the inbound rate's ``delay``); the driver
        #: takes it (sets it back to 0.0) after :meth:`after_read`.
        self.read_pause = 0.0
        self.close_request: tuple[int, str] | None = None
        self.close_info: tuple[int, str, str] | None = None
        self.reason_label: str | None = None
        self.events: list[CoreEvent] | None = None
        #: Someone waits for the outbound buffer to shrink or the connection to
        #: close (the connection sets it): a driver passes on what it took.
        self.room_wanted = False
        self._failing = False  # fail(): nothing more is queued in front of the close frame
        # The message being assembled: its bytes in one buffer (not one object per
        # fragment, which costs ~45 bytes each however small the fragment).
        self._fragments: bytearray | None = None
        self._fragment_count = 0
        self._fragment_text = False
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        # Received since the last after_read: counted once per read, not per message.
        self._received_text = self._received_binary = self._received_bytes = 0
        #: websockets' parser waits for a frame's first byte with nothing buffered
        #: (see _take_frames); known again whenever the protocol is fed.
        self._parser_idle = _parser_waits(protocol)

    # -- state --------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether the connection is closing or closed: nothing more may be sent."""
        return self.close_request is not None or self.close_info is not None

    @property
    def partial(self) -> tuple[int, int]:
        """The fragmented message being assembled: ``(bytes, fragments)``."""
        fragments = self._fragments
        return (0, 0) if fragments is None else (len(fragments), self._fragment_count)

    def over_limit(self) -> bool:
        """Whether the outbound buffer holds more than its limit (stop reading)."""
        outbound = self.outbound
        return outbound.bytes > outbound.limit

    def holds_input(self) -> bool:
        """Whether anything waits to be read or settled: frames or a close the protocol
        parsed from bytes read with the handshake, control frames it wrote, events,
        an outbound buffer over its limit. When not, ``receive_data(b"", now)``
        returns nothing and :meth:`after_read` does nothing."""
        protocol = self.protocol
        return bool(
            protocol.events
            or protocol.writes
            or protocol.close_rcvd is not None
            or protocol.eof_sent
            or self.events is not None
            or self._received_text
            or self._received_binary
            or self.read_pause
            or self.outbound.bytes > self.outbound.limit
        )

    def wants_write(self) -> bool:
        """Whether :meth:`data_to_send` has something now."""
        return bool(self.outbound) or bool(self.protocol.writes) or self._close_pending()

    def take_events(self) -> list[CoreEvent]:
        """Return and forget the pending :attr:`events`."""
        events = self.events
        self.events = None
        return events or []

    def _emit(self, event: CoreEvent) -> None:
        if self.events is None:
            self.events = [event]
        else:
            self.events.append(event)

    # -- reading ------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[str | bytes]:
        """Feed bytes read from the socket; return the complete messages they finish.

        Call :meth:`after_read` once these messages have been handed on. With
        ``b""``: the messages of what the protocol parsed already (bytes past
        the handshake request, read with it).
        """
        protocol = self.protocol
        keepalive = self.keepalive
        messages: list[str | bytes] = []
        events: Sequence[object] = ()
        if not data:
            events = protocol.events_received()
        else:
            self.bytes_in += len(data)
            taken = self._take_frames(data, messages) if self._parser_idle else 0
            if taken < len(data):
                protocol.receive_data(data[taken:] if taken else data)
                self._parser_idle = _parser_waits(protocol)
                events = protocol.events_received()
            elif protocol.events:  # a close frame, taken at the end of the read
                self._parser_idle = False  # closing: no more frames for the fast path
                events = protocol.events_received()
        if not events:
            if messages:
                # Whole messages that websockets' parser never saw: complete
                # frames, and nothing left unfinished (the parser waits at a frame
                # start, no fragmented message under way).
                keepalive.on_frame(now)
                if keepalive.message_by is not None:
                    keepalive.on_finished()
                self.messages_in += len(messages)
            elif data and keepalive.on_unfinished(now):
                # Bytes of a frame not complete yet: it has message_timeout to end.
                self._emit(RESCHEDULE)
            return messages
        # Complete frames only: bytes of an unfinished frame are no sign of life.
        keepalive.on_frame(now)
        for event in events:
            frame: Frame = event  # type: ignore[assignment]  # after the handshake, frames
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
                    if self._fragment_count > self._max_fragments:
                        self._too_many_fragments()
                        break
                    if not frame.fin:
                        continue
                    data = bytes(fragments)
                    self._fragments = None
                message: str | bytes
                if self._fragment_text:
                    try:
                        message = data.decode()
                    except UnicodeDecodeError as exc:
                        self.protocol.fail(
                            CloseCode.INVALID_DATA, f"invalid UTF-8 at position {exc.start}"
                        )
                        self.reason_label = "invalid_data"
                        break  # what the peer sent after it is ignored
                    self._received_text += 1
                else:
                    message = data
                    self._received_binary += 1
                self._received_bytes += len(data)
                messages.append(message)
            elif opcode is _PONG:
                rtt = self.keepalive.on_pong(bytes(frame.data), now)
                if rtt is not None:
                    self._emit(PongReceived(rtt))
            # A close frame is recorded by after_read, once the messages before it
            # have been handed on.
        if self._fragments is not None:
            # A fragmented message: it has message_timeout from its first frame,
            # however many fragments (each a sign of life) come in between.
            if keepalive.on_unfinished(now):
                self._emit(RESCHEDULE)
        elif keepalive.message_by is not None:
            keepalive.on_finished()
        self.messages_in += len(messages)
        return messages

    def _take_frames(self, data: bytes, messages: list[str | bytes]) -> int:
        """Append the messages of the complete, unfragmented, masked text and binary
        frames at the start of ``data`` (valid UTF-8 for text, within the size
        limit, length in 7 or 16 bits); return how many bytes they took.

        Only while websockets' parser waits for a frame's first byte with nothing
        buffered, the connection open, without extensions, no fragmented message
        under way, no event pending: then these frames would change nothing in
        the protocol but its list of events, so they skip its parser (a
        generator per frame, the largest cost of a small message) and are
        unmasked with its C ``apply_mask``. A close frame that ends the read goes
        to the protocol as a parsed frame (:meth:`_take_close`: the usual end of
        a connection). Whatever follows, from the first frame that is not one of
        them, goes to the protocol's parser.
        ``tests/supervisor/test_core_frames.py`` and the fuzz target
        ``tests/fuzz/test_fuzz_core_frames.py`` hold the two ways equal.
        """
        protocol = self.protocol
        if (
            protocol.state is not _OPEN
            or protocol.extensions
            or protocol.current_size is not None
            or protocol.events
            or protocol.debug
        ):
            return 0
        limit = protocol.max_message_size
        fragment_limit = protocol.max_fragment_size
        if fragment_limit is not None and (limit is None or fragment_limit < limit):
            limit = fragment_limit
        end_of_data = len(data)
        taken = 0
        while end_of_data - taken >= 6:
            head = data[taken]
            if head != 0x82 and head != 0x81:  # FIN, no RSV bit, binary or text
                if head == 0x88:  # FIN, no RSV bit, close
                    taken = self._take_close(data, taken, limit)
                break
            length = data[taken + 1] ^ 0x80  # 128 or more: not masked
            start = taken + 6
            if length > 125:
                if length != 126 or end_of_data - taken < 8:
                    break  # 64-bit length, unmasked, or not all here
                length = (data[taken + 2] << 8) | data[taken + 3]
                start = taken + 8
            end = start + length
            if end > end_of_data or (limit is not None and length > limit):
                break
            payload = apply_mask(data[start:end], data[start - 4 : start])
            message: str | bytes
            if head == 0x81:
                try:
                    message = payload.decode()
                except UnicodeDecodeError:
                    break  # the protocol's way, with the 1007
                self._received_text += 1
            else:
                message = payload
                self._received_binary += 1
            self._received_bytes += length
            messages.append(message)
            taken = end
        return taken

    def _take_close(self, data: bytes, start: int, limit: int | None) -> int:
        """Hand the close frame at ``start`` to the protocol as a parsed frame, when it
        is the last thing read, masked, with a 7-bit length within the size limit
        and a payload ``Close.parse`` accepts; return where what was taken ends.

        The protocol's ``recv_frame`` then does what it does when its parser
        reads that frame (the echo, the end of the stream, the parser replaced
        by its discarder, the frame among its events), without the generators
        that read a frame. Anything else about a close (bytes after it in the
        same read, an invalid code or reason) is left to the parser, which
        fails the connection its own way. See :meth:`_take_frames`.
        """
        length = data[start + 1] ^ 0x80  # 128 or more: not masked
        end = start + 6 + length
        if length > 125 or end != len(data) or (limit is not None and length > limit):
            return start
        payload = apply_mask(data[start + 6 : end], data[start + 2 : start + 6])
        try:
            # Close.parse, recv_frame's first step, raises before anything changes.
            self.protocol.recv_frame(Frame(_CLOSE, payload))
        except (ProtocolError, UnicodeDecodeError):
            return start
        return end

    def receive_eof(self, now: float) -> list[str | bytes]:
        """The peer ended its stream; return the messages still complete before it."""
        self.protocol.receive_eof()
        self._parser_idle = False
        return self.receive_data(b"", now)

    def _too_many_fragments(self) -> None:
        # Empty continuation frames never reach max_size: without a count, one
        # message could keep a connection busy and its reader fed forever.
        self._fragments = None
        self.protocol.fail(
            CloseCode.MESSAGE_TOO_BIG,
            f"more than {self._max_fragments} fragments in one message (max_fragments)",
        )

    def receive_message(self, message: str | bytes, size: int) -> bool:
        """Feed a whole message that a driver's peer assembled (``size``: its
        payload's bytes); call :meth:`after_read` after.

        Returns:
            Whether to hand it on: False once the connection is closing, or for a
            message over ``max_size``, which fails the connection with 1009.
        """
        self.bytes_in += size
        if self.close_request is not None or self.close_info is not None:
            return False
        max_size = self._max_size
        if max_size is not None and size > max_size:
            self.fail(
                CloseCode.MESSAGE_TOO_BIG,
                f"message of {size} bytes is over max_size ({max_size})",
                label="message_too_big",
            )
            return False
        if message.__class__ is str:
            self._received_text += 1
        else:
            self._received_binary += 1
        self._received_bytes += size
        self.messages_in += 1
        return True

    def after_read(self, now: float) -> bool:
        """Settle a read once its messages were handed on: count them, push the idle
        deadline back, record a close from the peer, queue the control frames the
        protocol produced (pongs) against the outbound limit.

        Returns:
            Whether something is now due on the wire (write it soon: a pong, the
            echo of a close, a close frame after a failure).
        """
        if self._received_text or self._received_binary:
            counters = self._counters
            if self._received_text:
                counters.received_text.inc(self._received_text)
            if self._received_binary:
                counters.received_binary.inc(self._received_binary)
            counters.received_bytes.inc(self._received_bytes)
            inbound = self._inbound
            if inbound is not None:
                verdict = inbound.received(
                    now, self._received_text + self._received_binary, self._received_bytes
                )
                if verdict.close:
                    self._emit(InboundLimited(closed=True))
                    self.fail(CloseCode.POLICY_VIOLATION, "inbound rate exceeded")
                elif verdict.pause:
                    self._emit(InboundLimited(closed=False))
                    self.read_pause = verdict.pause
            self._received_text = self._received_binary = self._received_bytes = 0
            # Once per read, not per message: the idle deadline moves all the same.
            self.keepalive.on_message(now)
        protocol = self.protocol
        if protocol.close_rcvd is not None or protocol.eof_sent:
            self._record_close("client")
        if not protocol.writes:
            return False
        if self._queue_control() is _DISCONNECT:
            self.fail(self._slow_consumer_code, "slow consumer", label="slow_consumer")
        return True

    def _queue_control(self) -> OutboundVerdict:
        """Move the control frames the protocol produced (pongs, pings) into the
        outbound buffer, where they count against its limit; return the verdict.

        The end of the connection (a close frame, then EOF) stays with the
        protocol: it goes out after what is queued. Once the connection is
        failing, pongs are dropped: the close frame goes first.
        """
        protocol = self.protocol
        if protocol.writes[-1] == b"":
            return _ACCEPT
        frames = b"".join(protocol.data_to_send())
        if self._failing:
            return _ACCEPT
        return self.outbound.append_control(frames)

    # -- sending ------------------------------------------------------------------------------

    def offer(self, item: OutboundItem) -> OutboundVerdict:
        """Apply the slow-consumer policy to ``item`` and queue it if it may be.

        Returns:
            ``ACCEPT`` (queued), ``EVICT_OLDEST`` (older messages were dropped,
            then it was queued), ``DROP_NEWEST`` (dropped), ``DISCONNECT``
            (dropped, and the connection fails) or ``WAIT`` (nothing done: the
            caller waits for room or refuses).
        """
        outbound = self.outbound
        size = len(item.payload)
        verdict = _ACCEPT if outbound.bytes + size <= outbound.limit else outbound.verdict(size)
        if verdict is _ACCEPT:
            outbound.append(item)
        elif verdict is OutboundVerdict.EVICT_OLDEST:
            self._dropped("drop_oldest", outbound.evict_for(size))
            outbound.append(item)
        elif verdict is OutboundVerdict.DROP_NEWEST:
            self._dropped("drop_newest", 1)
        elif verdict is OutboundVerdict.DISCONNECT:
            self._dropped("disconnect", 1)
            self.fail(self._slow_consumer_code, "slow consumer", label="slow_consumer")
        return verdict

    def send_now(self, item: OutboundItem) -> bytes | None:
        """The bytes of a pre-encoded frame that may go to the wire ahead of the
        buffer, counted as written; ``None`` unless nothing is queued and the
        connection is open (then :meth:`offer` it)."""
        if self.outbound or self.protocol.state is not _OPEN or not item.frame:
            return None
        self.messages_out += 1
        self.bytes_out += len(item.payload)
        counters = self._counters
        (counters.sent_text if item.text else counters.sent_binary).inc(1)
        counters.sent_bytes.inc(item.size)
        return item.payload

    def _dropped(self, policy: str, count: int) -> None:
        if count:
            self._emit(MessagesDropped(policy, count))

    def ping(self, payload: bytes) -> bool:
        """Queue a keepalive ping ahead of the messages; False if the connection is
        not open (nothing queued)."""
        protocol = self.protocol
        if protocol.state is not _OPEN:
            return False
        protocol.send_ping(payload)
        self._queue_control()  # ahead of queued messages; ours, so never refused
        return True

    def close(self, code: int, reason: str) -> bool:
        """Ask for the closing handshake once what is queued has been written.

        Returns:
            True if this started closing (False: it was closing already).
        """
        if self.close_request is not None or self.close_info is not None:
            return False
        self.close_request = (code, reason)
        return True

    def fail(self, code: int, reason: str = "", *, label: str | None = None) -> bool:
        """Close at once: drop what is queued, then the closing handshake.

        Emits :data:`FAILED` if this started closing, and :data:`ARM_CLOSE_TIMER`
        in any case: a peer that stopped reading leaves the close frame
        unwritten, and nothing else would end the wait.

        Returns:
            True if this started closing.
        """
        started = False
        if self.close_request is None and self.close_info is None:
            self._failing = True
            self._dropped("disconnect", self.outbound.clear())
            self.reason_label = label
            self.close_request = (code, reason)
            started = True
            self._emit(FAILED)
        self._emit(ARM_CLOSE_TIMER)
        return started

    def data_to_send(self) -> list[bytes]:
        """What is due on the wire now, in order: the queued control frames (pongs,
        pings); the oldest queued messages, framed, about ``WRITE_BATCH`` bytes of
        them. Once nothing is left queued: the close frame if a close was asked
        for, and what the protocol produced (the close echo). A final ``b""``
        means: half-close the socket after these. Call again while
        :attr:`outbound` is not empty."""
        outbound = self.outbound
        protocol = self.protocol
        if (
            not outbound.control_bytes
            and outbound.bytes <= WRITE_BATCH
            and self.close_request is None
            and protocol.state is _OPEN
            and not protocol.writes
        ):
            # The usual case, in one step: messages only, all of them in this
            # batch, nothing of the protocol's own to write around them.
            return self._frame(outbound.take_all())
        if outbound:
            control = outbound.take_control(WRITE_BATCH) if outbound.control_bytes else b""
            # Past OPEN, _frame drops messages: take them all at once.
            chunks = self._frame(
                outbound.take(WRITE_BATCH - len(control))
                if protocol.state is _OPEN
                else outbound.take_all()
            )
            if control:
                chunks.insert(0, control)
            if outbound:
                return chunks  # the rest in the next batch
        else:
            chunks = []
        if self._close_pending():
            self._send_close()
        if protocol.writes:
            chunks.extend(protocol.data_to_send())
        return chunks

    def take_messages(self) -> list[OutboundItem]:
        """The oldest queued message (or the few empty ones ahead of it), counted
        as sent, for a driver that sends whole messages; empty when none is queued
        (then :meth:`close_due`)."""
        items = self.outbound.take(1)
        if items:
            text_sent = size = 0
            for item in items:
                size += len(item.payload)
                text_sent += item.text
            counters = self._counters
            if text_sent:
                counters.sent_text.inc(text_sent)
            if len(items) > text_sent:
                counters.sent_binary.inc(len(items) - text_sent)
            counters.sent_bytes.inc(size)
            self.messages_out += len(items)
            self.bytes_out += size
        return items

    def close_due(self) -> tuple[int, str] | None:
        """For a driver that sends whole messages, once nothing is queued: the close
        to send now, given once (recorded as the server's); else ``None``."""
        if self.outbound or not self._close_pending() or not self._send_close():
            return None
        self.protocol.data_to_send()  # the close frame: the driver's peer frames its own
        return self.close_request or (CloseCode.NORMAL_CLOSURE, "")

    def _send_close(self) -> bool:
        """Start the closing handshake (a close was asked for and is not sent yet);
        False if the protocol cannot send it any more."""
        code, reason = self.close_request or (CloseCode.NORMAL_CLOSURE, "")
        try:
            self.protocol.send_close(code, reason)
        except InvalidState:
            return False
        self._record_close("server")
        self._emit(ARM_CLOSE_TIMER)
        return True

    def _close_pending(self) -> bool:
        return self.close_request is not None and self.protocol.close_sent is None

    def _frame(self, items: list[OutboundItem]) -> list[bytes]:
        if not items:
            return []
        protocol = self.protocol
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
        counters = self._counters
        if text_sent:
            counters.sent_text.inc(text_sent)
        if binary_sent:
            counters.sent_binary.inc(binary_sent)
        if size:
            counters.sent_bytes.inc(size)
        self.messages_out += text_sent + binary_sent
        return chunks

    # -- the end ------------------------------------------------------------------------------

    def _record_close(self, initiator: str) -> None:
        if self.close_info is not None:
            return
        protocol = self.protocol
        if protocol.close_sent is not None and (
            protocol.close_rcvd is None or not protocol.close_rcvd_then_sent
        ):
            sent = protocol.close_sent
            self.close_info = (sent.code, sent.reason, "server")
        elif protocol.close_rcvd is not None:
            rcvd = protocol.close_rcvd
            self.close_info = (rcvd.code, rcvd.reason, initiator)
        elif self.close_request is not None and initiator == "network":
            # We were closing (e.g. a slow consumer) but our close frame never got out.
            self.close_info = (*self.close_request, "server")
        elif protocol.eof_sent or initiator == "network":
            self.close_info = (CloseCode.ABNORMAL_CLOSURE, "", "network")
        else:
            return
        self._emit(CloseRecorded._make(self.close_info))

    def peer_closed(self, code: int, reason: str) -> None:
        """The end as a driver's peer reports it (ASGI's ``websocket.disconnect``):
        the client's close code, or 1005/1006 when no close frame arrived."""
        if code in _NO_CLOSE_FRAME or self.close_info is not None:
            self._record_close("network")  # ours, if we were closing; else 1006
            return
        self.close_info = (code, reason, "client")
        self._emit(CloseRecorded(code, reason, "client"))

    def lost(self) -> None:
        """The socket is gone (or being dropped): the end is known now, if it was not."""
        self._record_close("network")

    def finish(self) -> tuple[int, str, str, str]:
        """The connection is over: drop what is still queued, end the parser.

        Returns:
            ``(code, reason, initiator, label)``, the label being the ``reason``
            of the close metric.
        """
        if self.close_info is None:
            self._record_close("network")
        code, reason, initiator = self.close_info or (CloseCode.ABNORMAL_CLOSURE, "", "network")
        if self.outbound:
            self._dropped("disconnect", self.outbound.clear())
        self._fragments = None
        # Ends websockets' parser, a generator that refers back to its protocol (as
        # websockets' own connections do when the socket goes): no cycle is left.
        self.protocol.receive_eof()
        self._parser_idle = False
        return code, reason, initiator, self.reason_label or close_reason_for_code(code)
