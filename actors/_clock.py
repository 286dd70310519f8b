"""Time, injected.

Code that waits reads time through a :class:`Clock`, so tests move time
forward with :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import anyio

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


class Clock(Protocol):
    """What wsup needs of time: a reading, a sleep and a timeout scope."""

    def now(self) -> float:
        """Return monotonic seconds; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (a checkpoint even when ``seconds <= 0``)."""
        ...

    def move_on_after(self, seconds: float | None) -> AbstractContextManager[anyio.CancelScope]:
        """Return a context manager yielding a cancel scope that expires after ``seconds``.

        ``None`` means never.
        """
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and anyio's own sleep and timeouts."""

    __slots__ = ()

    # The builtin itself: no Python frame on the per-message path.
    now = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        """Sleep with :func:`anyio.sleep`."""
        await anyio.sleep(max(seconds, 0.0))

    def move_on_after(self, seconds: float | None) -> AbstractContextManager[anyio.CancelScope]:
        """Return :func:`anyio.move_on_after` (``None`` → never expires)."""
        return anyio.move_on_after(seconds if seconds is not None else float("inf"))


class _Timer:
    __slots__ = ("action", "cancelled", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, action: Callable[[], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.action = action
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class FakeClock:
    """A clock that moves only when told to, for tests.

    Sleepers and timeout scopes wake when :meth:`advance` carries ``now`` past
    their deadline. Follow an advance with ``await anyio.wait_all_tasks_blocked()``
    (or use :meth:`step`) to let the woken tasks run.

    Args:
        start: the initial reading.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """Return the current fake time."""
        return self._now

    def _schedule(self, delay: float, action: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now + max(delay, 0.0), next(self._seq), action)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        """Sleep until the fake time has advanced by ``seconds``."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        timer = self._schedule(seconds, event.set)
        try:
            await event.wait()
        finally:
            timer.cancelled = True

    @contextmanager
    def move_on_after(self, seconds: float | None) -> Iterator[anyio.CancelScope]:
        """Yield a cancel scope cancelled when fake time passes ``now + seconds``."""
        with anyio.CancelScope() as scope:
            timer = None
            if seconds is not None and seconds <= 0:
                # Like anyio.move_on_after(0): already expired, not "at the next advance".
                scope.cancel()
            elif seconds is not None:
                timer = self._schedule(seconds, scope.cancel)
            try:
                yield scope
            finally:
                if timer is not None:
                    timer.cancelled = True

    @property
    def pending(self) -> int:
        """How many sleeps and timeouts wait on this clock."""
        return sum(1 for t in self._timers if not t.cancelled)

    def next_deadline(self) -> float | None:
        """Return the earliest pending deadline, or ``None``."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].deadline if self._timers else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and fire every timer now due, in order."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        while self._timers and self._timers[0].deadline <= target:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._now = max(self._now, timer.deadline)
                timer.action()
        self._now = target

    async def step(self, seconds: float) -> None:
        """:meth:`advance`, then wait until every task is blocked again."""
        self.advance(seconds)
        await anyio.wait_all_tasks_blocked()

    async def run_until_idle(self, *, limit: float = 3600.0) -> float:
        """Jump from deadline to deadline until none is left (or ``limit`` seconds passed).

        Returns:
            The fake time elapsed.
        """
        start = self._now
        await anyio.wait_all_tasks_blocked()
        while (deadline := self.next_deadline()) is not None and deadline - start <= limit:
            await self.step(deadline - self._now)
        return self._now - start
