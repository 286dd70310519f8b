"""Admission and rate limits: pure decisions, fed with ``now``, no I/O.

Theory of operation:
    A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` of
    them a second; taking a token either succeeds or says how many seconds to
    wait until one is there. It answers "so many per second, with bursts of so
    many" for handshakes and for inbound messages or bytes.

    :class:`PerKeyBuckets` is one bucket per key (a client address) with bounded
    memory: a bucket that has refilled completely is the same as no bucket, so
    those are dropped first when the table is full, then the oldest ones. A
    flood from ever-new addresses therefore costs at most ``max_keys`` entries.

    :class:`AddressCounter` counts what each client address holds open (its
    connections) against a cap; its memory is bounded by what is open.

    :class:`InboundLimiter` applies a message rate and a byte rate to one
    connection's reads and returns how long to stop reading (``delay`` policy)
    or that the connection must be closed (``close`` policy, close code 1008).

    Nothing here reads a clock: callers pass ``now`` from the injected
    :class:`~actors.Clock`, so tests drive time by hand.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AddressCounter",
    "EveryInterval",
    "InboundLimiter",
    "InboundPolicy",
    "InboundVerdict",
    "MAX_PAUSE",
    "PerKeyBuckets",
    "Rate",
    "TokenBucket",
]


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` on average, with bursts of up to ``burst`` (default: one second's worth).

    Raises:
        ValueError: If ``per_second`` is not > 0 and finite, or ``burst`` is below 1.
    """

    per_second: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not self.per_second > 0 or math.isinf(self.per_second):  # refuses NaN too
            raise ValueError(f"a rate must be > 0 and finite, got {self.per_second!r}")
        if self.burst is not None and not self.burst >= 1:
            raise ValueError(f"a burst must be >= 1, got {self.burst!r}")

    @property
    def capacity(self) -> float:
        """The most tokens a bucket holds: ``burst``, or one second's worth (at least 1)."""
        return self.burst if self.burst is not None else max(1.0, self.per_second)


class TokenBucket:
    """A token bucket, full at creation."""

    __slots__ = ("_capacity", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate: Final = rate.per_second
        self._capacity: Final = rate.capacity
        self._tokens = self._capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens if they are there.

        Returns:
            0.0 when taken; else the seconds until ``amount`` tokens will be there
            (nothing is taken then). An amount above the capacity is taken when the
            bucket is full, leaving it in debt, so one large request is never
            refused for good.
        """
        self._refill(now)
        needed = min(amount, self._capacity)
        if self._tokens >= needed:
            self._tokens -= amount
            return 0.0
        return (needed - self._tokens) / self._rate

    def until(self, now: float, amount: float = 1.0) -> float:
        """The seconds until ``amount`` tokens are there (0.0: now), taking none."""
        self._refill(now)
        needed = min(amount, self._capacity)
        return 0.0 if self._tokens >= needed else (needed - self._tokens) / self._rate

    def charge(self, now: float, amount: float) -> float:
        """Take ``amount`` tokens whether they are there or not (what was read, was read).

        Returns:
            0.0 while the bucket is not in debt; else the seconds until it is out
            of debt at its rate.
        """
        self._refill(now)
        self._tokens -= amount
        return -self._tokens / self._rate if self._tokens < 0 else 0.0

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (it then equals a new one)."""
        self._refill(now)
        return self._tokens >= self._capacity


class PerKeyBuckets:
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them."""

    __slots__ = ("_buckets", "_max_keys", "_rate")

    def __init__(self, rate: Rate, *, max_keys: int = 65_536) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._rate: Final = rate
        self._max_keys: Final = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Take a token from ``key``'s bucket: 0.0, or the seconds to wait (see TokenBucket)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict(now)
            bucket = self._buckets[key] = TokenBucket(self._rate, now)
        return bucket.take(now)

    def _evict(self, now: float) -> None:
        # Full buckets first: forgetting them changes nothing. Then the oldest
        # half, so a flood of new addresses costs amortised O(1) per key.
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        if len(self._buckets) >= self._max_keys:
            keep = list(self._buckets.items())[len(self._buckets) // 2 :]
            self._buckets = dict(keep)


class AddressCounter:
    """How many things (connections) each key holds, against a cap."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a per-address limit must be >= 1, got {limit}")
        self.limit: Final = limit
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, key: str) -> int:
        """What ``key`` holds now."""
        return self._counts.get(key, 0)

    def acquire(self, key: str) -> bool:
        """Count one more for ``key`` if it is under the cap; return whether it was."""
        held = self._counts.get(key, 0)
        if held >= self.limit:
            return False
        self._counts[key] = held + 1
        return True

    def add(self, key: str) -> None:
        """Count one more for ``key`` whether or not it is under the cap."""
        self._counts[key] = self._counts.get(key, 0) + 1

    def release(self, key: str) -> None:
        """Count one less for ``key`` (a release without an acquire is ignored)."""
        held = self._counts.get(key, 0)
        if held <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = held - 1


class EveryInterval:
    """At most one log line per key every ``interval`` seconds, counting the rest."""

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float = 10.0) -> None:
        self._interval: Final = interval
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> int | None:
        """Return how many were suppressed since ``key``'s last line, if one may
        be logged now; else None (and this one is counted as suppressed)."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


class InboundPolicy(enum.StrEnum):
    """What a connection over its inbound rate gets."""

    #: Stop reading from the socket until the rate allows more: TCP backpressure.
    DELAY = "delay"
    #: Close the connection with 1008 (policy violation).
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class InboundVerdict:
    """``pause`` seconds without reading (0: go on), or ``close`` with 1008."""

    pause: float = 0.0
    close: bool = False


_GO_ON: Final = InboundVerdict()

#: The longest a single ``delay`` verdict pauses reading, in seconds, unless the
#: connection's keepalive asks for less (see :class:`InboundLimiter`).
MAX_PAUSE: Final = 10.0


class InboundLimiter:
    """The message and byte rates of one connection's reads."""

    __slots__ = ("_bytes", "_max_pause", "_messages", "_policy")

    def __init__(
        self,
        now: float,
        *,
        messages: Rate | None = None,
        bytes_: Rate | None = None,
        policy: InboundPolicy = InboundPolicy.DELAY,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        """``max_pause``: the longest one pause, in seconds; the connection gives half
        its ``ping_timeout``, so that a pong behind the paused reads is read in time."""
        if not max_pause > 0:
            raise ValueError(f"max_pause must be > 0 seconds, got {max_pause}")
        self._messages = TokenBucket(messages, now) if messages is not None else None
        self._bytes = TokenBucket(bytes_, now) if bytes_ is not None else None
        self._policy: Final = InboundPolicy(policy)
        self._max_pause: Final = min(max_pause, MAX_PAUSE)

    def received(self, now: float, messages: int, size: int) -> InboundVerdict:
        """Account for ``messages`` messages of ``size`` bytes in all, just read.

        What was read is always delivered: the verdict is about the next read.
        """
        wait = 0.0
        if self._messages is not None and messages:
            wait = self._messages.charge(now, messages)
        if self._bytes is not None and size:
            wait = max(wait, self._bytes.charge(now, size))
        if wait == 0.0:
            return _GO_ON
        if self._policy is InboundPolicy.CLOSE:
            return InboundVerdict(close=True)
        # The whole debt, up to max_pause: nothing is read meanwhile, so the debt
        # cannot grow and the rate holds on average (a shorter cap would let one
        # read's worth through per pause, whatever the rate). Past the cap the next
        # read is judged again and pongs in it are read, so keepalive holds.
        return InboundVerdict(pause=min(wait, self._max_pause))
