"""Timers an actor owns: ``send_after``, ``send_interval``, keyed, cancelled with the actor.

Theory of operation: one :class:`TimerService` per runtime keeps every pending
deadline in a heap and runs one task that sleeps on the runtime's clock until
the earliest (so a ``FakeClock`` drives timers in tests). Each actor's
:class:`Timers` (``self.context.timers``, Akka's ``TimerScheduler``) maps keys to
timers; starting a timer under a key that is in use replaces the old one. A due
timer puts a :class:`TimerEnvelope` in the actor's mailbox; the actor's loop
delivers it only if that timer is still the current one for its key, so a
message of a timer that was cancelled or replaced after it was queued is never
received. Every timer of an actor is cancelled when an incarnation ends (stop,
crash, restart): a restarted behaviour starts with no timers and receives no
message of the old ones.

The scheduling rule itself is the pure :func:`next_deadline`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ._actor import TimerEnvelope
from ._deadletters import DeadLetter
from ._exceptions import MailboxClosed, MailboxFull

if TYPE_CHECKING:
    from ._actor import Cell
    from ._clock import Clock

__all__ = ["TimerService", "Timers", "next_deadline"]


def next_deadline(previous: float, interval: float, now: float) -> float:
    """Return the next deadline of a fixed-rate timer that was due at ``previous``.

    Deadlines stay on the grid ``previous + k * interval``; ticks missed while
    the actor (or the event loop) was late are skipped rather than fired in a
    burst, so the result is the first grid point after ``now``.

    Args:
        previous: the deadline that just fired.
        interval: the period in seconds (``> 0``).
        now: the current time (``>= previous``, normally).

    Raises:
        ValueError: ``interval`` is not positive and finite.
    """
    if not 0 < interval < math.inf:
        raise ValueError(f"a timer interval must be > 0 and finite, got {interval}")
    steps = max(1, math.floor((now - previous) / interval) + 1)
    deadline = previous + steps * interval
    while deadline <= now:  # rounding: never return a deadline that is already due
        steps += 1
        deadline = previous + steps * interval
    return deadline


class _Entry:
    __slots__ = ("action", "cancelled", "deadline", "seq")

    def __init__(self, deadline: float, seq: int, action: Callable[[float], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.action = action
        self.cancelled = False

    def __lt__(self, other: _Entry) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class TimerService:
    """Every pending timer of one runtime, fired by one task on the runtime's clock.

    Started by :class:`supervisor.ActorSystem` (``await tg.start(runtime.timers.run)``).
    Cost: O(log n) per timer scheduled or fired; cancelled entries are skipped.

    Args:
        clock: the time source.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None
        self._waiting_until = math.inf
        self.running = False

    def schedule(self, delay: float, action: Callable[[float], None]) -> _Entry:
        """Call ``action(deadline)`` once ``delay`` seconds have passed; return a handle
        whose ``cancelled`` attribute, set to True, cancels it."""
        entry = _Entry(self.clock.now() + max(delay, 0.0), next(self._seq), action)
        heapq.heappush(self._heap, entry)
        if entry.deadline < self._waiting_until and self._wake is not None:
            self._wake.set()
        return entry

    def schedule_at(self, deadline: float, action: Callable[[float], None]) -> _Entry:
        """Like :meth:`schedule`, at an absolute ``deadline`` on the clock."""
        return self.schedule(deadline - self.clock.now(), action)

    @property
    def pending(self) -> int:
        """Timers scheduled and not cancelled."""
        return sum(1 for e in self._heap if not e.cancelled)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fire timers as they come due, until cancelled."""
        self.running = True
        task_status.started()
        heap = self._heap
        try:
            while True:
                now = self.clock.now()
                while heap and (heap[0].cancelled or heap[0].deadline <= now):
                    entry = heapq.heappop(heap)
                    if not entry.cancelled:
                        entry.cancelled = True
                        entry.action(entry.deadline)
                self._wake = anyio.Event()
                self._waiting_until = heap[0].deadline if heap else math.inf
                wait = None if not heap else max(0.0, self._waiting_until - now)
                with self.clock.move_on_after(wait):
                    await self._wake.wait()
        finally:
            self.running = False
            self._wake = None


class _Timer:
    __slots__ = ("entry", "id", "interval", "message")

    def __init__(self, timer_id: int, message: Any, interval: float | None) -> None:
        self.id = timer_id
        self.message = message
        self.interval = interval
        self.entry: _Entry | None = None


_ids = itertools.count(1)


class Timers:
    """The timers of one actor (``self.context.timers``), by key.

    ::

        async def on_start(self):
            self.context.timers.send_interval("tick", "tick", 0.1)

    Keys are any hashable value; starting a timer with a key in use replaces
    it (a message the old one already queued is discarded). Every timer is
    cancelled when the actor stops, crashes or restarts. Timers run on the
    runtime's clock; a ``FakeClock`` moves them in tests.
    """

    __slots__ = ("_cell", "_timers")

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self._timers: dict[Any, _Timer] = {}

    def send_after(self, key: Any, message: Any, delay: float) -> None:
        """Send ``message`` to this actor once, ``delay`` seconds from now.

        Raises:
            RuntimeError: the runtime's timer service is not running.
        """
        self._start(key, message, delay, None)

    def send_interval(
        self, key: Any, message: Any, interval: float, *, initial_delay: float | None = None
    ) -> None:
        """Send ``message`` to this actor every ``interval`` seconds (fixed rate; ticks
        missed while late are skipped), the first after ``initial_delay`` (default:
        ``interval``).

        Raises:
            ValueError: ``interval`` is not positive and finite.
            RuntimeError: the runtime's timer service is not running.
        """
        if not 0 < interval < math.inf:
            raise ValueError(f"a timer interval must be > 0 and finite, got {interval}")
        self._start(key, message, interval if initial_delay is None else initial_delay, interval)

    def cancel(self, key: Any) -> bool:
        """Cancel the timer under ``key``; a message it already queued is discarded.

        Returns:
            Whether there was one.
        """
        timer = self._timers.pop(key, None)
        if timer is None:
            return False
        if timer.entry is not None:
            timer.entry.cancelled = True
        return True

    def cancel_all(self) -> None:
        """Cancel every timer of this actor."""
        for key in list(self._timers):
            self.cancel(key)

    def is_active(self, key: Any) -> bool:
        """Whether a timer under ``key`` is pending (or its message not yet received)."""
        return key in self._timers

    @property
    def keys(self) -> list[Any]:
        """The keys of the active timers."""
        return list(self._timers)

    def _start(self, key: Any, message: Any, delay: float, interval: float | None) -> None:
        service = self._cell.runtime.timers
        if not service.running:
            raise RuntimeError("timers need a running actor system (its timer service)")
        self.cancel(key)
        timer = _Timer(next(_ids), message, interval)
        self._timers[key] = timer
        timer.entry = service.schedule(delay, lambda due: self._fire(key, timer, due))

    def _fire(self, key: Any, timer: _Timer, due: float) -> None:
        if self._timers.get(key) is not timer:
            return
        cell = self._cell
        if timer.interval is not None:
            service = cell.runtime.timers
            following = next_deadline(due, timer.interval, service.clock.now())
            timer.entry = service.schedule_at(following, lambda d: self._fire(key, timer, d))
        else:
            timer.entry = None
        try:
            cell.mailbox.put_nowait(TimerEnvelope(timer.message, key, timer.id))
        except MailboxFull as exc:
            # The mailbox counted nothing (put_nowait refuses): a dead letter, like a drop.
            cell.runtime.dead_letters.post(
                DeadLetter(cell.address, timer.message, "dropped", exc.policy)
            )
        except MailboxClosed:
            self.cancel_all()

    def accept(self, envelope: TimerEnvelope) -> bool:
        """Whether a timer message taken from the mailbox is still wanted (its timer was
        not cancelled or replaced since); a single-shot timer ends here."""
        timer = self._timers.get(envelope.key)
        if timer is None or timer.id != envelope.timer_id:
            return False
        if timer.interval is None:
            del self._timers[envelope.key]
        return True
