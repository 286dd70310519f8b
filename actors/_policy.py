"""Pure decisions: mailbox overflow, restart intensity, restart backoff, lease renewal.

Theory of operation: nothing here performs I/O or reads a clock. Callers pass
``now`` in and act on what comes back, so every rule is tested synchronously
and exhaustively (see ``tests/actors/test_policy.py``).
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Backoff",
    "BackoffState",
    "Intensity",
    "IntensityWindow",
    "LeaseAction",
    "LeasePolicy",
    "Overflow",
    "OverflowPolicy",
    "decide_overflow",
    "lease_step",
]


class OverflowPolicy(enum.StrEnum):
    """What a full mailbox does with one more message.

    Attributes:
        BLOCK: the sender waits for space (optionally with a timeout, then
            ``MailboxFull``); a ``*_nowait`` sender gets ``MailboxFull`` at once.
        DROP_NEWEST: the incoming message is dropped.
        DROP_OLDEST: the oldest queued message is dropped to make room.
        REJECT: the sender gets ``MailboxFull`` at once.
    """

    BLOCK = "block"
    DROP_NEWEST = "drop_newest"
    DROP_OLDEST = "drop_oldest"
    REJECT = "reject"


class Overflow(enum.Enum):
    """The outcome of offering one message to a mailbox."""

    ACCEPT = "accept"
    """Append the message."""
    WAIT = "wait"
    """Full under ``block``: the sender waits (or fails if it cannot wait)."""
    DROP_NEWEST = "drop_newest"
    """Discard the incoming message."""
    EVICT_OLDEST = "evict_oldest"
    """Discard the oldest message, then append the incoming one."""
    REJECT = "reject"
    """Refuse the message with an error to the sender."""


_FULL = {
    OverflowPolicy.BLOCK: Overflow.WAIT,
    OverflowPolicy.DROP_NEWEST: Overflow.DROP_NEWEST,
    OverflowPolicy.DROP_OLDEST: Overflow.EVICT_OLDEST,
    OverflowPolicy.REJECT: Overflow.REJECT,
}


def decide_overflow(policy: OverflowPolicy, depth: int, capacity: int) -> Overflow:
    """Decide what to do with a message offered to a mailbox holding ``depth`` messages.

    Args:
        policy: the mailbox's overflow policy.
        depth: messages currently queued (``0 <= depth <= capacity``).
        capacity: the bound (``>= 1``).

    Returns:
        ``ACCEPT`` below capacity, otherwise the policy's verdict. Applying the
        verdict never leaves more than ``capacity`` messages queued.
    """
    if depth < capacity:
        return Overflow.ACCEPT
    return _FULL[policy]


@dataclass(frozen=True, slots=True)
class Intensity:
    """A restart intensity: at most ``max_restarts`` restarts within ``within`` seconds.

    Raises:
        ValueError: on a negative count or a non-positive window.
    """

    max_restarts: int = 3
    within: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.within <= 0:
            raise ValueError(f"within must be > 0 seconds, got {self.within}")


@dataclass(slots=True)
class IntensityWindow:
    """The sliding window of restart times for one actor or supervisor.

    Cost: O(1) amortised per :meth:`record`; memory bounded by ``max_restarts + 1``.
    """

    intensity: Intensity
    # Created at the first restart: most actors never restart.
    _times: deque[float] | None = None

    def record(self, now: float) -> bool:
        """Record a restart at ``now``.

        Returns:
            True if the restart is allowed; False if it would exceed the intensity
            (more than ``max_restarts`` restarts in the last ``within`` seconds),
            in which case the actor must be stopped or the supervisor escalate.
        """
        horizon = now - self.intensity.within
        times = self._times
        if times is None:
            times = self._times = deque()
        while times and times[0] <= horizon:
            times.popleft()
        times.append(now)
        return len(times) <= self.intensity.max_restarts

    def count(self, now: float) -> int:
        """Return restarts recorded within the window ending at ``now``."""
        horizon = now - self.intensity.within
        return sum(1 for t in self._times or () if t > horizon)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between restarts.

    The n-th consecutive restart (n from 0) waits
    ``min(maximum, minimum * factor**n)`` seconds, multiplied by a random factor in
    ``[1, 1 + jitter]``; the count resets after ``reset_after`` quiet seconds.
    ``Backoff(minimum=0)`` restarts at once.

    Raises:
        ValueError: on negative times, ``factor < 1`` or ``jitter < 0``.
    """

    minimum: float = 0.01
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.minimum < 0 or self.maximum < self.minimum:
            raise ValueError("need 0 <= minimum <= maximum")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.jitter < 0:
            raise ValueError("jitter must be >= 0")
        if self.reset_after < 0:
            raise ValueError("reset_after must be >= 0")

    def delay(self, attempt: int, rand: float) -> float:
        """Return the wait before restart number ``attempt`` (0-based).

        Args:
            attempt: consecutive restarts before this one.
            rand: a number in ``[0, 1)`` (the caller's random source).
        """
        # Cap the exponent, and treat an overflow as "past the maximum": a large
        # factor (1e10 ** 64) raises OverflowError rather than giving inf.
        try:
            grown = self.minimum * self.factor ** min(attempt, 64)
        except OverflowError:
            grown = self.maximum if self.minimum > 0 else 0.0
        base = min(self.maximum, grown)
        return min(self.maximum * (1 + self.jitter), base * (1 + self.jitter * rand))


@dataclass(slots=True)
class BackoffState:
    """Consecutive-restart bookkeeping for one actor."""

    backoff: Backoff
    attempt: int = 0
    last_restart: float | None = None
    # One shared generator: a Random instance per actor would cost ~2.5 KB each.
    rand: Callable[[], float] = random.random

    def next_delay(self, now: float) -> float:
        """Return the delay for a restart decided at ``now`` and count it."""
        if self.last_restart is not None and now - self.last_restart >= self.backoff.reset_after:
            self.attempt = 0
        delay = self.backoff.delay(self.attempt, self.rand())
        self.attempt += 1
        self.last_restart = now + delay
        return delay


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    """Timing of a singleton's lease (a key with an expiry in the backplane).

    The holder renews every ``renew_every`` seconds and considers the lease lost
    ``ttl - margin`` seconds after the last renewal it *sent* that succeeded (the
    key's expiry starts later, when Redis receives it, so the holder always
    stops first, by at least ``margin``). A standby tries to take the lease
    every ``retry_every`` seconds: after the holder dies, another node takes
    over within ``ttl + retry_every`` seconds.

    Raises:
        ValueError: unless ``0 < renew_every < ttl - margin``, ``0 <= margin < ttl``
            and ``retry_every > 0``.
    """

    ttl: float = 3.0
    renew_every: float = 1.0
    retry_every: float = 0.25
    margin: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.margin < self.ttl:
            raise ValueError("need 0 <= margin < ttl")
        if not 0 < self.renew_every < self.ttl - self.margin:
            raise ValueError("need 0 < renew_every < ttl - margin: renew before it lapses")
        if self.retry_every <= 0:
            raise ValueError("retry_every must be > 0")


class LeaseAction(enum.Enum):
    """What the holder of a lease does next."""

    WAIT = "wait"
    """Nothing until the returned time (the next renewal)."""
    RENEW = "renew"
    """Renew now; the returned time is when the lease counts as lost."""
    LOST = "lost"
    """Stop now: the lease may already belong to someone else."""


def lease_step(now: float, policy: LeasePolicy, confirmed_at: float) -> tuple[LeaseAction, float]:
    """Decide what the holder of a lease does at ``now``.

    Args:
        now: the current time.
        policy: the lease timing.
        confirmed_at: when the request that last acquired or renewed the lease
            (successfully) was sent.

    Returns:
        The action and a time: for ``WAIT`` when to decide again, for ``RENEW``
        the deadline of the renewal, for ``LOST`` ``now``. Never anything but
        ``LOST`` at or after ``confirmed_at + ttl - margin``.
    """
    expires = confirmed_at + policy.ttl - policy.margin
    if now >= expires:
        return LeaseAction.LOST, now
    renew_at = confirmed_at + policy.renew_every
    if now >= renew_at:
        return LeaseAction.RENEW, expires
    return LeaseAction.WAIT, renew_at
