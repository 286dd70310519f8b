"""Bounded mailboxes with overflow policies and a control lane.

Theory of operation: a mailbox is a ``deque`` of ``(message, enqueued_at)``
pairs bounded by ``capacity``, plus an unbounded control lane for stop/drain
signals that must get through a full mailbox. One consumer (the actor) waits on
an event that producers set; producers that block (policy ``block``) wait in FIFO
order on their own events. The overflow decision itself is the pure
:func:`actors._policy.decide_overflow`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import anyio

from ._backend import Primitives, Waiter, primitives
from ._clock import Clock, MonotonicClock
from ._exceptions import MailboxClosed, MailboxFull
from ._policy import Overflow, OverflowPolicy, decide_overflow

__all__ = ["DropHandler", "Mailbox", "MailboxConfig", "MailboxStatistics"]

T = TypeVar("T")

DropHandler = Callable[[T, str], None]
"""Called with each dropped message and the reason label (``drop_newest``,
``drop_oldest``, ``reject`` or ``block_timeout``)."""


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    """How an actor's mailbox is bounded.

    Attributes:
        capacity: the most messages it holds (control signals excluded).
        policy: what happens to one more message when it is full.
        block_timeout: for ``block``, how long a sender waits before
            ``MailboxFull`` (``None``: as long as it takes).

    Raises:
        ValueError: if ``capacity < 1`` or ``block_timeout < 0``.
    """

    capacity: int = 1000
    policy: OverflowPolicy = OverflowPolicy.BLOCK
    block_timeout: float | None = None

    def __post_init__(self) -> None:
        # Accept the policy's name too ("block"): the hot path compares by identity.
        object.__setattr__(self, "policy", OverflowPolicy(self.policy))
        if self.capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {self.capacity}")
        if self.block_timeout is not None and self.block_timeout < 0:
            raise ValueError("block_timeout must be >= 0 or None")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of one mailbox.

    Attributes:
        depth: messages queued now.
        capacity: the bound.
        high_water: the largest depth seen.
        received: messages accepted so far.
        delivered: messages taken by the actor so far.
        dropped: drops by reason (``drop_newest``, ``drop_oldest``, ``reject``,
            ``block_timeout``).
        waiting_senders: senders blocked for space.
        total_wait_seconds: summed time delivered messages spent queued.
    """

    depth: int
    capacity: int
    high_water: int
    received: int
    delivered: int
    dropped: MappingProxyType[str, int]
    waiting_senders: int
    total_wait_seconds: float


#: The queue of every mailbox that has not had a message yet. ``maxlen=0`` keeps it
#: empty for good (an append would be discarded); _append replaces it first.
_NO_QUEUE: deque[Any] = deque(maxlen=0)


class _Arrival:
    """The "getter" of a mailbox whose owner is not waiting yet (see :meth:`Mailbox.on_arrival`)."""

    __slots__ = ("_callback", "_set")

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._callback()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        raise RuntimeError("nobody waits on an arrival callback")


class Mailbox(Generic[T]):
    """A bounded FIFO mailbox for one consumer.

    Args:
        config: capacity, policy and block timeout.
        address: the owner's address (named in errors).
        clock: the time source for wait times and block timeouts.
        on_drop: called for every message the mailbox drops.

    Cost: ``put_nowait``/``get_nowait`` are O(1) and allocate one tuple.
    """

    __slots__ = (
        "_checkpoint",
        "_clock",
        "_closed",
        "_control",
        "_delivered",
        "_dropped",
        "_getter",
        "_high_water",
        "_new_event",
        "_on_drop",
        "_putters",
        "_queue",
        "_received",
        "_total_wait",
        "address",
        "config",
        "last_taken",
        "last_wait",
    )

    def __init__(
        self,
        config: MailboxConfig | None = None,
        *,
        address: str = "?",
        clock: Clock | None = None,
        on_drop: DropHandler[T] | None = None,
    ) -> None:
        self.config = config or MailboxConfig()
        self.address = address
        self._clock: Clock = clock or MonotonicClock()
        # The backend's, looked up at the first wait (_backend): most mailboxes of
        # connections never wait, and the lookup costs as much as the rest here.
        self._checkpoint: Callable[[], Awaitable[None]] | None = None
        self._new_event: Callable[[], Waiter] | None = None
        self._on_drop = on_drop
        # Shared and always empty until the first message: idle mailboxes stay small.
        self._queue: deque[tuple[T, float]] = _NO_QUEUE
        # Rarely used; created on first use so that idle mailboxes stay small.
        self._control: deque[T] | None = None
        self._getter: Waiter | None = None
        self._putters: deque[Waiter] | None = None
        self._closed = False
        self._high_water = 0
        self._received = 0
        self._delivered = 0
        self._total_wait = 0.0
        self._dropped: dict[str, int] = {}
        self.last_wait = 0.0
        """Seconds the message last taken by ``get``/``get_nowait`` spent queued."""
        self.last_taken = 0.0
        """When (on the mailbox's clock) that message was taken."""

    def _backend(self) -> Primitives:
        found = primitives()
        self._checkpoint, self._new_event = found
        return found

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def record_drop(self, message: T, reason: str) -> None:
        """Count and report ``message`` as dropped for ``reason`` (it was never queued)."""
        self._drop(message, reason)

    def _drop(self, message: T, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        if self._on_drop is not None:
            self._on_drop(message, reason)

    def _append(self, message: T) -> None:
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        queue.append((message, self._clock.now()))
        self._received += 1
        if len(queue) > self._high_water:
            self._high_water = len(queue)
        if self._getter is not None:
            self._getter.set()
            self._getter = None

    def put_nowait(self, message: T) -> None:
        """Offer ``message`` without waiting; the overflow policy applies when full.

        Raises:
            MailboxFull: the mailbox is full and its policy is ``reject`` or ``block``.
            MailboxClosed: the owner has stopped.
        """
        if self._closed:
            raise MailboxClosed(self.address)
        config = self.config
        if len(self._queue) < config.capacity:  # decide_overflow's ACCEPT, inlined
            self._append(message)
            return
        verdict = decide_overflow(config.policy, len(self._queue), config.capacity)
        if verdict is Overflow.ACCEPT:
            self._append(message)
        elif verdict is Overflow.EVICT_OLDEST:
            old, _ = self._queue.popleft()
            self._drop(old, "drop_oldest")
            self._append(message)
        elif verdict is Overflow.DROP_NEWEST:
            self._drop(message, "drop_newest")
        else:
            if verdict is Overflow.REJECT:
                self._drop(message, "reject")
            raise MailboxFull(self.address, capacity=config.capacity, policy=config.policy)

    async def put(self, message: T, *, timeout: float | None = None) -> None:
        """Offer ``message``, waiting for space if the policy is ``block``.

        Always a checkpoint. Under other policies this is :meth:`put_nowait`.

        Args:
            message: the message.
            timeout: overrides the configured ``block_timeout``.

        Raises:
            MailboxFull: refused by policy, or no space within the timeout
                (the message is then counted as dropped, ``block_timeout``).
            MailboxClosed: the owner has stopped (also while waiting).
        """
        config = self.config
        # The common case: one plain checkpoint, as anyio's own streams do. It comes
        # before the space check: other senders may fill the mailbox while we yield.
        await (self._checkpoint or self._backend().checkpoint)()
        if config.policy is not OverflowPolicy.BLOCK or (
            len(self._queue) < config.capacity and not self._putters
        ):
            self.put_nowait(message)
            return
        if self._closed:
            raise MailboxClosed(self.address)
        wait = timeout if timeout is not None else config.block_timeout
        putters = self._putters
        if putters is None:
            putters = self._putters = deque()
        new_event = self._new_event or self._backend().event
        event = new_event()
        putters.append(event)
        try:
            with self._clock.move_on_after(wait):
                while True:
                    await event.wait()
                    if self._closed or len(self._queue) < config.capacity:
                        break
                    # Someone else took the space we were woken for: queue up again, first.
                    event = new_event()
                    putters.appendleft(event)
        except BaseException:
            self._forget_putter(event)
            raise
        if not event.is_set():  # timed out
            putters.remove(event)
        if self._closed:
            raise MailboxClosed(self.address)
        if len(self._queue) >= config.capacity:
            self._drop(message, "block_timeout")
            raise MailboxFull(self.address, capacity=config.capacity, policy=config.policy)
        self._append(message)
        self._wake_putter()

    def _forget_putter(self, event: Waiter) -> None:
        if event.is_set():
            # We were handed a wake-up; pass it on if we leave without using it.
            self._wake_putter()
        elif self._putters is not None:
            self._putters.remove(event)

    def _wake_putter(self) -> None:
        if self._putters and len(self._queue) < self.config.capacity:
            self._putters.popleft().set()

    def _wake_all_putters(self) -> None:
        putters = self._putters
        while putters:
            putters.popleft().set()

    def on_arrival(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the next message or control signal arrives.

        For an owner with no task waiting in :meth:`get` yet (one that starts
        only when there is something to do). Closing the mailbox calls it too,
        so the callback checks :attr:`closed`. Nothing may be waiting in
        :meth:`get` meanwhile.
        """
        self._getter = _Arrival(callback)

    def cancel_arrival(self) -> None:
        """Undo :meth:`on_arrival` if its callback has not run: nothing will call it."""
        if self._getter.__class__ is _Arrival:
            self._getter = None

    def peek_control(self) -> T | None:
        """The control signal :meth:`get_nowait` would return next, or ``None``."""
        return self._control[0] if self._control else None

    def put_control(self, signal: T, *, first: bool = False) -> None:
        """Queue a control signal ahead of every message, ignoring capacity.

        ``first``: ahead of the other control signals too.

        Raises:
            MailboxClosed: the owner has stopped.
        """
        if self._closed:
            raise MailboxClosed(self.address)
        if self._control is None:
            self._control = deque()
        if first:
            self._control.appendleft(signal)
        else:
            self._control.append(signal)
        if self._getter is not None:
            self._getter.set()
            self._getter = None

    def pending(self) -> bool:
        """Whether :meth:`get_nowait` would return something now."""
        return bool(self._control or self._queue)

    def get_nowait(self) -> T:
        """Take the next control signal, else the oldest message.

        Raises:
            anyio.WouldBlock: nothing is queued.
        """
        if self._control:
            return self._control.popleft()
        if not self._queue:
            raise anyio.WouldBlock
        message, enqueued_at = self._queue.popleft()
        self._delivered += 1
        self.last_taken = now = self._clock.now()
        self.last_wait = wait = now - enqueued_at
        self._total_wait += wait
        if self._putters:
            self._wake_putter()
        return message

    async def get(self) -> T:
        """Wait for and take the next control signal or message.

        Raises:
            anyio.EndOfStream: the mailbox is closed and empty.
        """
        yielded = False
        while True:
            # No try/except WouldBlock: waiting inside an except clause would keep
            # the exception and its traceback alive for as long as the actor idles.
            if self._control or self._queue:
                return self.get_nowait()
            if self._closed:
                raise anyio.EndOfStream
            if not yielded:
                # Let runnable senders go first: a busy actor then finds its next
                # message without the cost of an event wait and wake-up.
                yielded = True
                await (self._checkpoint or self._backend().checkpoint)()
                continue
            event = self._getter = (self._new_event or self._backend().event)()
            await event.wait()

    def close(self) -> list[T]:
        """Refuse further messages, wake blocked senders, and return what was queued.

        The caller turns the returned messages into dead letters.
        """
        self._closed = True
        queue = self._queue
        leftover = [m for m, _ in queue] if queue else []
        queue.clear()
        self._control = None
        # Nothing is dropped once closed; and the owner's callback would keep a
        # reference cycle (owner -> mailbox -> callback -> owner) for the collector.
        self._on_drop = None
        if self._putters:
            self._wake_all_putters()
        if self._getter is not None:
            self._getter.set()
            self._getter = None
        return leftover

    def drain_nowait(self) -> list[T]:
        """Remove and return every queued message (control signals stay)."""
        leftover = [m for m, _ in self._queue]
        self._queue.clear()
        self._wake_all_putters()
        return leftover

    def statistics(self) -> MailboxStatistics:
        """Return a frozen snapshot of this mailbox."""
        return MailboxStatistics(
            depth=len(self._queue),
            capacity=self.config.capacity,
            high_water=self._high_water,
            received=self._received,
            delivered=self._delivered,
            dropped=MappingProxyType(dict(self._dropped)),
            waiting_senders=len(self._putters or ()),
            total_wait_seconds=self._total_wait,
        )
