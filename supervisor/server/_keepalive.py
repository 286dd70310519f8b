"""Keepalive and idle deadlines of one connection, as a pure state machine.

Theory of operation: a connection is either waiting to send its next ping
(``ping_at``) or waiting for the pong of the ping it sent (``pong_by``). Any
complete frame from the peer proves it alive, so it pushes the next ping back;
bytes of a frame not yet complete do not (a peer trickling one byte at a time
must not hold a dead connection open). Separately,
an optional idle deadline closes a connection that sent no *message* for
``idle_timeout`` seconds, and a message deadline one that leaves a message
unfinished for ``message_timeout`` seconds: from the first bytes of a frame that
is not complete yet, or the first frame of a fragmented message, to the end of
that frame or message. Complete frames are signs of life but not progress: a
client that trickles the fragments of one message, answering every ping between
them, is closed all the same. :meth:`Keepalive.due` says what, if anything, is
due at ``now``; the server's single keepalive task acts on it for every
connection, so idle connections cost no task of their own.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Keepalive", "KeepaliveAction", "KeepaliveConfig", "KeepaliveQueue", "wake_time"]

K = TypeVar("K", bound=Hashable)

_MAX_SLACK = 0.25


class KeepaliveAction(enum.Enum):
    """What :meth:`Keepalive.due` asks the connection to do."""

    NOTHING = "nothing"
    PING = "ping"
    PONG_TIMEOUT = "pong_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    MESSAGE_TIMEOUT = "message_timeout"


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """Keepalive settings.

    Attributes:
        ping_interval: seconds of silence before a ping (``None``: never ping).
        ping_timeout: seconds to wait for the pong before closing with 1011.
        idle_timeout: seconds without a message from the client before closing
            with 1001 (``None``: never).
        message_timeout: seconds the client has to finish a frame or message it
            started before the connection closes with 1008 (``None``: no limit).
    """

    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = None
    message_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be > 0 or None")
        if self.ping_timeout <= 0:
            raise ValueError("ping_timeout must be > 0")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 or None")
        if self.message_timeout is not None and not self.message_timeout > 0:
            raise ValueError("message_timeout must be > 0 or None")

    @property
    def slack(self) -> float:
        """How late (seconds) the server may act on a deadline: 1/20 of the
        shortest period configured, at most 0.25 s.

        Deadlines that fall within the same slack share one wake-up of the
        keepalive task, so the pings of connections opened together go out in
        one turn of the event loop and their pongs come back together.
        """
        periods = [self.ping_timeout]
        if self.ping_interval is not None:
            periods.append(self.ping_interval)
        if self.idle_timeout is not None:
            periods.append(self.idle_timeout)
        if self.message_timeout is not None:
            periods.append(self.message_timeout)
        return min(_MAX_SLACK, min(periods) / 20)


class Keepalive:
    """Deadlines of one connection. All methods take ``now``; none performs I/O."""

    __slots__ = (
        "_counter",
        "config",
        "idle_by",
        "message_by",
        "ping_at",
        "ping_payload",
        "ping_sent_at",
    )

    def __init__(self, config: KeepaliveConfig, now: float) -> None:
        self.config = config
        self.ping_at = now + config.ping_interval if config.ping_interval is not None else None
        self.ping_sent_at: float | None = None
        self.ping_payload = b""
        self.idle_by = now + config.idle_timeout if config.idle_timeout is not None else None
        #: When the frame or message being received must be complete, if one is.
        self.message_by: float | None = None
        self._counter = 0

    def next_deadline(self) -> float | None:
        """Return the earliest moment something may be due, or ``None``."""
        # No list and no min(): this runs when every connection opens.
        earliest = self.ping_at
        for deadline in (self.pong_by, self.idle_by, self.message_by):
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    @property
    def pong_by(self) -> float | None:
        """When the outstanding ping times out, if one is outstanding."""
        if self.ping_sent_at is None:
            return None
        return self.ping_sent_at + self.config.ping_timeout

    def due(self, now: float) -> KeepaliveAction:
        """Return what is due at ``now``; a ``PING`` is recorded as sent."""
        if self.idle_by is not None and now >= self.idle_by:
            return KeepaliveAction.IDLE_TIMEOUT
        if self.message_by is not None and now >= self.message_by:
            return KeepaliveAction.MESSAGE_TIMEOUT
        pong_by = self.pong_by
        if pong_by is not None:
            return KeepaliveAction.PONG_TIMEOUT if now >= pong_by else KeepaliveAction.NOTHING
        if self.ping_at is not None and now >= self.ping_at:
            self._counter += 1
            self.ping_payload = struct.pack("!I", self._counter & 0xFFFFFFFF)
            self.ping_sent_at = now
            self.ping_at = None
            return KeepaliveAction.PING
        return KeepaliveAction.NOTHING

    def on_pong(self, payload: bytes, now: float) -> float | None:
        """Record a pong; return the round-trip time if it answers our ping."""
        if self.ping_sent_at is None or payload != self.ping_payload:
            return None
        rtt = now - self.ping_sent_at
        self.ping_sent_at = None
        if self.config.ping_interval is not None:
            self.ping_at = now + self.config.ping_interval
        return rtt

    def on_frame(self, now: float) -> None:
        """A complete frame from the peer (of any kind): no ping is needed for a while."""
        if self.ping_sent_at is None and self.config.ping_interval is not None:
            self.ping_at = now + self.config.ping_interval

    def on_unfinished(self, now: float) -> bool:
        """The peer left a frame or a message unfinished: start the message
        deadline, unless it runs already.

        Returns:
            Whether the deadline is now the earliest: the keepalive task, which
            waits for the deadline it knew, must look at the connection sooner.
        """
        timeout = self.config.message_timeout
        if timeout is None or self.message_by is not None:
            return False
        earliest = self.next_deadline()
        self.message_by = now + timeout
        return earliest is None or self.message_by < earliest

    def on_finished(self) -> None:
        """Nothing is left unfinished: the message deadline is off."""
        self.message_by = None

    def on_message(self, now: float) -> None:
        """A complete message from the peer: push the idle deadline back."""
        if self.config.idle_timeout is not None:
            self.idle_by = now + self.config.idle_timeout


def wake_time(deadline: float, slack: float) -> float:
    """When to wake for ``deadline``: the first multiple of ``slack`` at or after it.

    Deadlines in the same ``slack``-wide slot of the clock share a wake-up,
    and none is acted on more than ``slack`` seconds late.
    """
    return max(math.ceil(deadline / slack) * slack, deadline)


class KeepaliveQueue(Generic[K]):
    """When the keepalive task looks at each connection next: one live deadline per
    connection, taken earliest first.

    A connection's first deadline goes to a queue of its own, an
    insertion-ordered dict: connections open in the order of their clock
    readings and share one configuration, so their first deadlines come in the
    order they opened, and the dict adds and forgets one in O(1). Only a
    deadline that moves earlier than the one queued (a message started under
    ``message_timeout``, the next ping after a pong) goes to a heap, O(log n),
    where the entries it replaced stay, stale, until popped or compacted. A
    deadline that does not come in order (a clock that was moved by hand) goes
    to the heap too. Opening and closing a connection that never reschedules,
    most of them before their first ping, then costs two dict operations
    instead of a heap push, two tuples, and a stale entry left behind.

    Deadlines are plain numbers and keys any hashable objects: no clock, no I/O.
    """

    __slots__ = ("_due", "_fresh", "_fresh_last", "_heap", "_seq")

    def __init__(self) -> None:
        #: First deadlines, in the order they come.
        self._fresh: dict[K, float] = {}
        self._fresh_last = -math.inf
        #: Moved deadlines: the heap, and each key's one live entry in it.
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, tuple[float, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        """The number of keys with a deadline."""
        return len(self._fresh) + len(self._due)

    def opened(self, key: K, deadline: float) -> None:
        """``key``'s first deadline (it has none queued)."""
        fresh = self._fresh
        if deadline >= self._fresh_last and key not in fresh and key not in self._due:
            fresh[key] = self._fresh_last = deadline
        else:
            self.schedule(key, deadline)

    def schedule(self, key: K, deadline: float) -> bool:
        """Look at ``key`` by ``deadline``, unless a deadline no later is queued for it.

        Returns:
            Whether ``deadline`` is now ``key``'s: the earliest of all may have
            moved earlier.
        """
        fresh = self._fresh.get(key)
        if fresh is not None:
            if fresh <= deadline:
                return False
            del self._fresh[key]
        queued = self._due.get(key)
        if queued is not None and queued[0] <= deadline:
            return False  # that entry comes first and reschedules when it fires
        seq = next(self._seq)
        self._due[key] = (deadline, seq)
        heapq.heappush(self._heap, (deadline, seq, key))
        return True

    def forget(self, key: K) -> None:
        """``key`` needs no more looking at (its connection closed or detached)."""
        if self._fresh.pop(key, None) is not None:
            return
        due = self._due
        if due.pop(key, None) is None:
            return
        # Its heap entry would keep the key alive until its deadline (a ping
        # interval): drop stale entries once they outnumber the live ones.
        heap = self._heap
        if not due:
            heap.clear()
        elif len(heap) > 2 * len(due) + 64:
            heap[:] = [e for e in heap if due.get(e[2]) == (e[0], e[1])]
            heapq.heapify(heap)

    def pop_due(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is ``now`` or earlier."""
        taken: list[K] = []
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            queued = due.get(key)
            if queued is None or queued[1] != seq:
                continue  # superseded by an earlier entry
            del due[key]
            taken.append(key)
        fresh = self._fresh
        if fresh:
            start = len(taken)
            for key, deadline in fresh.items():
                if deadline > now:
                    break
                taken.append(key)
            for key in taken[start:]:
                del fresh[key]
        return taken

    def earliest(self) -> tuple[float, K] | None:
        """The earliest deadline and its key, or None when nothing is queued."""
        first = None
        for key, deadline in self._fresh.items():
            first = (deadline, key)
            break
        heap = self._heap
        if heap and (first is None or heap[0][0] < first[0]):
            # The heap's top may be stale: a live earliest is never later than it.
            return heap[0][0], heap[0][2]
        return first
