"""The bounded outbound buffer of one connection and its slow-consumer policy.

Theory of operation: messages to the client wait here, counted in payload
bytes, until the connection's writer turns them into frames and writes them,
about :data:`WRITE_BATCH` bytes at a time, so that what has not been handed to
the socket can still be dropped. The buffer never holds more than ``limit``
bytes, except that one message larger than the limit is accepted into an
*empty* buffer (otherwise it could never be sent). What happens to a message
that does not fit is the pure :func:`decide_outbound`.

Control frames the protocol produces (pongs to the client's pings, keepalive
pings) wait here too, serialized, ahead of the messages, and count against the
same limit. They cannot be dropped or made to wait: they are always queued,
and the connection stops reading the client while the buffer is over its
limit (under ``disconnect``, it closes the connection instead), since reading
is what produces them. :func:`frame_header` frames a message for a connection
without extensions.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from actors import Record

__all__ = [
    "WRITE_BATCH",
    "OutboundBuffer",
    "OutboundItem",
    "OutboundVerdict",
    "SlowConsumerPolicy",
    "decide_outbound",
    "frame_header",
    "wire_message",
]


#: About how many bytes of messages the writer takes from the buffer per write: the
#: most that can sit in the socket layer's own buffer, past dropping, when a
#: slow consumer is disconnected.
WRITE_BATCH = 1 << 16


class SlowConsumerPolicy(enum.StrEnum):
    """What to do when a client reads slower than the app writes to it."""

    BLOCK = "block"
    """The sender waits until the buffer drains below the limit."""
    DROP_OLDEST = "drop_oldest"
    """Drop the oldest queued messages to make room."""
    DROP_NEWEST = "drop_newest"
    """Drop the message being sent."""
    DISCONNECT = "disconnect"
    """Close the connection (code 1013 by default)."""


class OutboundVerdict(enum.Enum):
    """The outcome of offering one message to a full-or-not buffer."""

    ACCEPT = "accept"
    WAIT = "wait"
    DROP_NEWEST = "drop_newest"
    EVICT_OLDEST = "evict_oldest"
    DISCONNECT = "disconnect"


_OVER = {
    SlowConsumerPolicy.BLOCK: OutboundVerdict.WAIT,
    SlowConsumerPolicy.DROP_OLDEST: OutboundVerdict.EVICT_OLDEST,
    SlowConsumerPolicy.DROP_NEWEST: OutboundVerdict.DROP_NEWEST,
    SlowConsumerPolicy.DISCONNECT: OutboundVerdict.DISCONNECT,
}


def decide_outbound(
    policy: SlowConsumerPolicy, buffered: int, size: int, limit: int
) -> OutboundVerdict:
    """Decide what to do with a ``size``-byte message offered to a buffer holding ``buffered``.

    A message that fits is accepted; so is any message offered to an empty
    buffer. Otherwise the policy decides. ``EVICT_OLDEST`` means: drop the
    oldest messages until the new one fits (or the buffer is empty), then accept.
    """
    if buffered == 0 or buffered + size <= limit:
        return OutboundVerdict.ACCEPT
    return _OVER[policy]


@dataclass(slots=True)
class OutboundItem:
    """One queued message.

    Attributes:
        payload: the message bytes (UTF-8 for text), or a complete pre-encoded
            frame when ``frame`` is true.
        text: whether it is a text message.
        frame: whether ``payload`` is already a serialized frame (encode-once fan-out).
        size: for a frame, the message's own payload bytes (what the metrics count).
    """

    payload: bytes
    text: bool
    frame: bool = False
    size: int = 0


class OutboundBuffer:
    """A FIFO of outbound messages bounded in bytes, with control frames ahead of them.

    Args:
        limit: the high-water mark in bytes (message payloads and control frames).
        policy: what to do with a message that does not fit.

    Attributes:
        bytes: what the buffer holds, messages and control frames.
        control_bytes: the part of ``bytes`` that is control frames.

    Cost: O(1) per message, plus O(n) to evict from n queued messages.
    """

    __slots__ = ("_control", "_items", "bytes", "control_bytes", "dropped", "limit", "policy")

    def __init__(self, limit: int, policy: SlowConsumerPolicy) -> None:
        if limit < 1:
            raise ValueError(f"outbound limit must be >= 1 byte, got {limit}")
        self.limit = limit
        self.policy = policy
        # A list, not a deque: an empty deque costs 760 bytes per idle connection,
        # and the buffer is emptied whole (take_all) far more often than evicted from.
        self._items: list[OutboundItem] = []
        # Serialized control frames, one chunk per batch the protocol produced (a
        # pong is 2 bytes on the wire, ~40 as an object of its own); None while
        # empty, the usual case.
        self._control: list[bytes] | None = None
        self.control_bytes = 0
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        """The number of queued messages (control frames are not messages)."""
        return len(self._items)

    def __bool__(self) -> bool:
        """Whether anything, message or control frame, waits to be written."""
        return bool(self._items) or self._control is not None

    def append_control(self, frames: bytes) -> OutboundVerdict:
        """Queue serialized control frames ahead of the messages, whatever the limit.

        Returns:
            The verdict a message of that size would have had (taken before
            queueing): the caller applies ``DISCONNECT``; for the others, it
            stops producing control frames (stops reading) while the buffer is
            over its limit.
        """
        verdict = decide_outbound(self.policy, self.bytes, len(frames), self.limit)
        if self._control is None:
            self._control = [frames]
        else:
            self._control.append(frames)
        self.control_bytes += len(frames)
        self.bytes += len(frames)
        return verdict

    def take_control(self, budget: int) -> bytes:
        """Remove and return the oldest queued control frames, in whole chunks (as
        queued) until they reach ``budget`` bytes; ``b""`` if none are queued."""
        chunks = self._control
        if chunks is None:
            return b""
        count = len(chunks)
        if self.control_bytes > budget:
            size = count = 0
            for chunk in chunks:
                size += len(chunk)
                count += 1
                if size >= budget:
                    break
        taken = chunks[:count]
        del chunks[:count]
        if not chunks:
            self._control = None
        data = b"".join(taken)
        self.control_bytes -= len(data)
        self.bytes -= len(data)
        return data

    def verdict(self, size: int) -> OutboundVerdict:
        """Return what offering a ``size``-byte message would do now."""
        return decide_outbound(self.policy, self.bytes, size, self.limit)

    def append(self, item: OutboundItem) -> None:
        """Queue ``item`` unconditionally (the caller has applied the verdict)."""
        self._items.append(item)
        self.bytes += len(item.payload)

    def evict_for(self, size: int) -> int:
        """Drop oldest messages until ``size`` more bytes fit or the buffer is empty.

        Returns:
            How many messages were dropped.
        """
        evicted = 0
        items = self._items
        while evicted < len(items) and self.bytes + size > self.limit:
            self.bytes -= len(items[evicted].payload)
            evicted += 1
        del items[:evicted]
        self.dropped += evicted
        return evicted

    def take_all(self) -> list[OutboundItem]:
        """Remove and return every queued message, oldest first (not the control frames)."""
        items = self._items
        self._items = []
        self.bytes = self.control_bytes
        return items

    def take(self, budget: int) -> list[OutboundItem]:
        """Remove and return the oldest messages, whole, until their payloads reach
        ``budget`` bytes (every message, if they are fewer; none if ``budget <= 0``)."""
        items = self._items
        control = self.control_bytes
        if self.bytes - control <= budget:
            self._items = []
            self.bytes = control
            return items
        if budget <= 0:
            return []
        size = count = 0
        for item in items:
            size += len(item.payload)
            count += 1
            if size >= budget:
                break
        taken = items[:count]
        del items[:count]
        self.bytes -= size
        return taken

    def clear(self) -> int:
        """Discard everything, control frames too; return how many messages were discarded."""
        count = len(self._items)
        self._items = []
        self._control = None
        self.bytes = self.control_bytes = 0
        return count


_HEAD_7 = struct.Struct("!BB").pack
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack


def frame_header(text: bool, length: int) -> bytes:
    """The header of an unmasked, unfragmented data frame without extensions (RFC 6455 §5.2).

    ``header + payload`` is byte for byte what websockets' ``Frame.serialize``
    writes for a server (a test pins it), for a fraction of its cost: no frame
    object, no ``BytesIO``, no copy of the payload. Connections that negotiated
    an extension (permessage-deflate) frame through the protocol instead.
    """
    first = 0x81 if text else 0x82  # FIN + opcode
    if length < 126:
        return _HEAD_7(first, length)
    if length < 0x10000:
        return _HEAD_16(first, 126, length)
    return _HEAD_64(first, 127, length)


def wire_message(message: Any) -> str | bytes:
    """What a message from another actor becomes on the wire: the one rule for both
    paths that forward such messages to a client (``Handler.on_receive`` and the
    fan-out that skips the mailbox).

    ``str`` stays text; ``bytes``, ``bytearray`` and ``memoryview`` become binary;
    a :class:`actors.Record` (a message to an address with history) becomes what
    its ``message`` becomes, without its position; anything else becomes JSON text.

    Raises:
        TypeError: ``message`` is none of these and not JSON-serializable.
        ValueError: ``message`` refers to itself (a circular structure).
    """
    if isinstance(message, (str, bytes)):
        return message
    if message.__class__ is Record:
        message = message.message
        if isinstance(message, (str, bytes)):
            return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    return json.dumps(message)
