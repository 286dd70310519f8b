"""Tests for bounded mailboxes: overflow policies, the control lane and statistics."""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors import FakeClock, MailboxClosed, MailboxConfig, MailboxFull, OverflowPolicy
from actors._mailbox import Mailbox

pytestmark = pytest.mark.anyio


class Drops:
    """Collects what a mailbox reports through ``on_drop``."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, str]] = []

    def __call__(self, message: Any, reason: str) -> None:
        self.items.append((message, reason))


def make(
    capacity: int,
    policy: OverflowPolicy = OverflowPolicy.BLOCK,
    *,
    block_timeout: float | None = None,
    clock: FakeClock | None = None,
) -> tuple[Mailbox[Any], Drops, FakeClock]:
    """Build a mailbox on a fake clock with a drop recorder."""
    clock = clock or FakeClock()
    drops = Drops()
    mailbox: Mailbox[Any] = Mailbox(
        MailboxConfig(capacity, policy, block_timeout), address="test:1", clock=clock, on_drop=drops
    )
    return mailbox, drops, clock


def take_all(mailbox: Mailbox[Any]) -> list[Any]:
    """Take everything queued, control signals first."""
    taken = []
    while True:
        try:
            taken.append(mailbox.get_nowait())
        except anyio.WouldBlock:
            return taken


# --- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(("capacity", "block_timeout"), [(0, None), (-1, None), (1, -0.5)])
def test_config_rejects_invalid_bounds(capacity: int, block_timeout: float | None) -> None:
    """A capacity below 1 or a negative block timeout raises ValueError."""
    with pytest.raises(ValueError, match=r"capacity|block_timeout"):
        MailboxConfig(capacity, block_timeout=block_timeout)


def test_default_config_is_bounded_and_blocks() -> None:
    """The default mailbox is bounded (1000) and blocks senders without a timeout."""
    config = MailboxConfig()
    assert (config.capacity, config.policy, config.block_timeout) == (1000, "block", None)


# --- block -----------------------------------------------------------------------


async def test_block_sender_waits_for_space_then_delivers() -> None:
    """Under ``block`` a sender to a full mailbox waits and completes once space frees."""
    mailbox, drops, _ = make(1)
    await mailbox.put("a")
    done: list[str] = []

    async def sender() -> None:
        await mailbox.put("b")
        done.append("b")

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await anyio.wait_all_tasks_blocked()
        assert done == []
        assert mailbox.statistics().waiting_senders == 1
        assert mailbox.get_nowait() == "a"
    assert done == ["b"]
    assert take_all(mailbox) == ["b"]
    assert mailbox.statistics().waiting_senders == 0
    assert drops.items == []


async def test_block_without_timeout_waits_however_long_it_takes() -> None:
    """Without a timeout, a blocked sender still waits after a very long fake time."""
    mailbox, _, clock = make(1)
    mailbox.put_nowait("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(mailbox.put, "b")
        await anyio.wait_all_tasks_blocked()
        await clock.step(1e9)
        assert mailbox.statistics().waiting_senders == 1
        tg.cancel_scope.cancel()


async def test_block_timeout_raises_mailbox_full_and_counts_the_drop() -> None:
    """A blocked sender gives up after ``block_timeout`` with MailboxFull, counted as a drop."""
    mailbox, drops, clock = make(1, block_timeout=2.0)
    mailbox.put_nowait("a")
    errors: list[MailboxFull] = []

    async def sender() -> None:
        with pytest.raises(MailboxFull) as info:
            await mailbox.put("b")
        errors.append(info.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await anyio.wait_all_tasks_blocked()
        await clock.step(1.999)
        assert errors == []
        await clock.step(0.001)
    (error,) = errors
    assert (error.address, error.capacity, error.policy) == ("test:1", 1, "block")
    stats = mailbox.statistics()
    assert stats.dropped == {"block_timeout": 1}
    assert stats.waiting_senders == 0
    assert stats.depth == 1
    assert drops.items == [("b", "block_timeout")]


async def test_put_timeout_argument_overrides_block_timeout() -> None:
    """``put(timeout=...)`` replaces the configured block timeout for that call."""
    mailbox, _, clock = make(1, block_timeout=100.0)
    mailbox.put_nowait("a")
    failed: list[float] = []

    async def sender() -> None:
        with pytest.raises(MailboxFull):
            await mailbox.put("b", timeout=1.0)
        failed.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender)
        await anyio.wait_all_tasks_blocked()
        await clock.step(1.0)
    assert failed == [1.0]


async def test_block_timeout_zero_fails_at_once() -> None:
    """A zero block timeout refuses a full mailbox without waiting for time to move."""
    mailbox, drops, _ = make(1, block_timeout=0.0)
    mailbox.put_nowait("a")
    with pytest.raises(MailboxFull):
        await mailbox.put("b")
    assert drops.items == [("b", "block_timeout")]


async def test_blocked_senders_resume_in_fifo_order() -> None:
    """Senders blocked on a full mailbox get space in the order they started waiting."""
    mailbox, _, _ = make(2)
    mailbox.put_nowait(0)
    mailbox.put_nowait(1)
    async with anyio.create_task_group() as tg:
        for i in range(2, 7):
            tg.start_soon(mailbox.put, i)
            # Let each sender block before the next starts, fixing the waiting order.
            await anyio.wait_all_tasks_blocked()
        assert mailbox.statistics().waiting_senders == 5
        received: list[int] = []
        while len(received) < 7:
            received.append(await mailbox.get())
            await anyio.wait_all_tasks_blocked()
            assert len(mailbox) <= 2
    assert received == list(range(7))


async def test_senders_racing_for_the_last_slot_wait_instead_of_failing() -> None:
    """Two ``block`` senders started together for one free slot: one queues, the other waits."""
    mailbox, drops, _ = make(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mailbox.put, "x")
        tg.start_soon(mailbox.put, "y")
        await anyio.wait_all_tasks_blocked()
        assert len(mailbox) == 1
        assert mailbox.statistics().waiting_senders == 1
        first = mailbox.get_nowait()
    assert sorted([first, *take_all(mailbox)]) == ["x", "y"]
    assert drops.items == []


async def test_blocked_sender_yields_to_an_earlier_waiter_that_was_overtaken() -> None:
    """If a ``*_nowait`` sender takes the freed slot, the woken sender waits again, still first."""
    mailbox, _, _ = make(1)
    mailbox.put_nowait("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(mailbox.put, "first")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(mailbox.put, "second")
        await anyio.wait_all_tasks_blocked()
        assert mailbox.get_nowait() == "a"
        mailbox.put_nowait("barged")  # before the woken sender runs
        await anyio.wait_all_tasks_blocked()
        assert mailbox.statistics().waiting_senders == 2
        assert mailbox.get_nowait() == "barged"
        await anyio.wait_all_tasks_blocked()
        assert mailbox.get_nowait() == "first"
        await anyio.wait_all_tasks_blocked()
        assert mailbox.get_nowait() == "second"


async def test_cancelled_blocked_sender_leaves_the_queue() -> None:
    """A blocked sender that is cancelled no longer waits and queues nothing."""
    mailbox, drops, _ = make(1)
    mailbox.put_nowait("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(mailbox.put, "b")
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    stats = mailbox.statistics()
    assert (stats.waiting_senders, stats.depth, stats.received) == (0, 1, 1)
    assert drops.items == []


async def test_cancelled_waiter_does_not_hold_back_later_senders() -> None:
    """When the first blocked sender is cancelled, freed space goes to the next one."""
    mailbox, _, _ = make(1)
    mailbox.put_nowait("a")
    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()

        async def cancellable() -> None:
            with first:
                await mailbox.put("first")

        tg.start_soon(cancellable)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(mailbox.put, "second")
        await anyio.wait_all_tasks_blocked()
        first.cancel()
        await anyio.wait_all_tasks_blocked()
        assert mailbox.get_nowait() == "a"
        await anyio.wait_all_tasks_blocked()
    assert take_all(mailbox) == ["second"]
    assert mailbox.statistics().waiting_senders == 0


async def test_woken_sender_keeps_the_space_it_was_woken_for() -> None:
    """A sender woken for space and cancelled only afterwards has still queued its message."""
    mailbox, _, _ = make(1)
    mailbox.put_nowait("a")
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()
        returned: list[bool] = []

        async def cancellable() -> None:
            with scope:
                await mailbox.put("first")
                returned.append(True)

        tg.start_soon(cancellable)
        await anyio.wait_all_tasks_blocked()
        assert mailbox.get_nowait() == "a"  # wakes the sender ...
        scope.cancel()  # ... which is cancelled before it runs again
    # A put that returned has queued its message; one that raised has queued nothing.
    assert take_all(mailbox) == (["first"] if returned else [])
    assert mailbox.statistics().waiting_senders == 0


async def test_put_nowait_on_full_block_mailbox_raises() -> None:
    """``put_nowait`` never waits: a full ``block`` mailbox raises MailboxFull at once."""
    mailbox, _, _ = make(1)
    mailbox.put_nowait("a")
    with pytest.raises(MailboxFull) as info:
        mailbox.put_nowait("b")
    assert info.value.policy == "block"
    assert take_all(mailbox) == ["a"]


# --- drop and reject policies ---------------------------------------------------------


async def test_drop_newest_discards_the_incoming_message() -> None:
    """Under ``drop_newest`` a full mailbox keeps its messages and drops the new one."""
    mailbox, drops, _ = make(2, OverflowPolicy.DROP_NEWEST)
    for message in "abc":
        await mailbox.put(message)
    mailbox.put_nowait("d")
    assert take_all(mailbox) == ["a", "b"]
    assert drops.items == [("c", "drop_newest"), ("d", "drop_newest")]
    stats = mailbox.statistics()
    assert stats.dropped == {"drop_newest": 2}
    assert stats.received == 2


async def test_drop_oldest_evicts_the_oldest_message() -> None:
    """Under ``drop_oldest`` a full mailbox evicts its oldest message to take the new one."""
    mailbox, drops, _ = make(2, OverflowPolicy.DROP_OLDEST)
    for message in "abcd":
        await mailbox.put(message)
    assert take_all(mailbox) == ["c", "d"]
    assert drops.items == [("a", "drop_oldest"), ("b", "drop_oldest")]
    stats = mailbox.statistics()
    assert stats.dropped == {"drop_oldest": 2}
    assert (stats.received, stats.delivered, stats.high_water) == (4, 2, 2)


async def test_reject_refuses_at_once_and_counts() -> None:
    """Under ``reject`` a full mailbox raises MailboxFull at once (async or not) and counts it."""
    mailbox, drops, _ = make(1, OverflowPolicy.REJECT)
    await mailbox.put("a")
    with pytest.raises(MailboxFull) as info:
        await mailbox.put("b")
    assert info.value.policy == "reject"
    with pytest.raises(MailboxFull):
        mailbox.put_nowait("c")
    assert drops.items == [("b", "reject"), ("c", "reject")]
    assert mailbox.statistics().dropped == {"reject": 2}
    assert take_all(mailbox) == ["a"]


@pytest.mark.parametrize("policy", list(OverflowPolicy))
async def test_put_is_a_checkpoint_even_when_accepted(policy: OverflowPolicy) -> None:
    """``put`` honours cancellation before queueing anything, under every policy."""
    mailbox, _, _ = make(5, policy)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await mailbox.put("a")
    assert scope.cancelled_caught
    assert len(mailbox) == 0


# --- control lane ---------------------------------------------------------------------


async def test_control_signal_bypasses_a_full_mailbox_and_comes_first() -> None:
    """A control signal is accepted by a full mailbox and taken before every message."""
    mailbox, drops, _ = make(2, OverflowPolicy.REJECT)
    mailbox.put_nowait("a")
    mailbox.put_nowait("b")
    mailbox.put_control("stop")
    mailbox.put_control("drain")
    stats = mailbox.statistics()
    assert (stats.depth, stats.received) == (2, 2)
    assert take_all(mailbox) == ["stop", "drain", "a", "b"]
    assert drops.items == []
    # Control signals are not messages: they are not counted as delivered.
    assert mailbox.statistics().delivered == 2


async def test_control_signal_wakes_a_waiting_consumer() -> None:
    """A consumer blocked on an empty mailbox wakes for a control signal."""
    mailbox, _, _ = make(1)
    got: list[Any] = []

    async def consumer() -> None:
        got.append(await mailbox.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        mailbox.put_control("stop")
    assert got == ["stop"]


async def test_drain_nowait_returns_messages_and_keeps_control_signals() -> None:
    """``drain_nowait`` empties the message queue but leaves control signals to be taken."""
    mailbox, _, _ = make(3)
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    mailbox.put_control("stop")
    assert mailbox.drain_nowait() == [1, 2]
    assert take_all(mailbox) == ["stop"]


# --- get ------------------------------------------------------------------------------


async def test_get_waits_for_a_message() -> None:
    """``get`` on an empty mailbox waits until a message arrives."""
    mailbox, _, _ = make(1)
    got: list[Any] = []

    async def consumer() -> None:
        got.append(await mailbox.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        mailbox.put_nowait("hello")
    assert got == ["hello"]


def test_get_nowait_on_empty_mailbox_would_block() -> None:
    """``get_nowait`` on an empty mailbox raises anyio.WouldBlock."""
    mailbox, _, _ = make(1)
    with pytest.raises(anyio.WouldBlock):
        mailbox.get_nowait()


# --- statistics -------------------------------------------------------------------------


async def test_statistics_track_depth_high_water_counts_and_wait() -> None:
    """The snapshot reports depth, capacity, high water, received/delivered and queued time."""
    mailbox, _, clock = make(3, OverflowPolicy.DROP_NEWEST)
    mailbox.put_nowait("a")  # queued at t=0
    clock.advance(1.0)
    mailbox.put_nowait("b")  # queued at t=1
    mailbox.put_nowait("c")
    mailbox.put_nowait("x")  # dropped
    clock.advance(2.0)
    assert mailbox.get_nowait() == "a"
    assert mailbox.last_wait == 3.0
    assert mailbox.get_nowait() == "b"
    assert mailbox.last_wait == 2.0
    stats = mailbox.statistics()
    assert stats.depth == 1
    assert stats.capacity == 3
    assert stats.high_water == 3
    assert (stats.received, stats.delivered) == (3, 2)
    assert stats.dropped == {"drop_newest": 1}
    assert stats.waiting_senders == 0
    assert stats.total_wait_seconds == 5.0
    assert len(mailbox) == 1


def test_statistics_are_a_frozen_snapshot() -> None:
    """A snapshot does not change afterwards and cannot be modified."""
    mailbox, _, _ = make(2, OverflowPolicy.DROP_NEWEST)
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    mailbox.put_nowait(3)
    stats = mailbox.statistics()
    mailbox.get_nowait()
    mailbox.put_nowait(4)
    mailbox.put_nowait(5)
    assert (stats.depth, stats.received, stats.dropped["drop_newest"]) == (2, 2, 1)
    with pytest.raises(TypeError):
        stats.dropped["drop_newest"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError):
        stats.depth = 0  # type: ignore[misc]


def test_record_drop_counts_a_message_that_was_never_queued() -> None:
    """``record_drop`` counts and reports a drop decided outside the mailbox."""
    mailbox, drops, _ = make(1)
    mailbox.record_drop("m", "block_timeout")
    assert drops.items == [("m", "block_timeout")]
    assert mailbox.statistics().dropped == {"block_timeout": 1}
    assert len(mailbox) == 0


# --- close -----------------------------------------------------------------------------


async def test_close_wakes_blocked_senders_with_mailbox_closed() -> None:
    """Closing a mailbox wakes every blocked sender with MailboxClosed."""
    mailbox, _, _ = make(1)
    mailbox.put_nowait("a")
    errors: list[BaseException] = []

    async def sender(message: str) -> None:
        try:
            await mailbox.put(message)
        except MailboxClosed as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for message in "bc":
            tg.start_soon(sender, message)
        await anyio.wait_all_tasks_blocked()
        assert mailbox.close() == ["a"]
    assert len(errors) == 2
    assert all(isinstance(e, MailboxClosed) and e.address == "test:1" for e in errors)
    assert mailbox.statistics().waiting_senders == 0


async def test_closed_mailbox_refuses_everything() -> None:
    """After close, puts and control signals raise MailboxClosed and ``get`` ends."""
    mailbox, _, _ = make(2)
    mailbox.put_nowait("a")
    mailbox.put_control("stop")
    assert mailbox.close() == ["a"]
    assert mailbox.closed
    with pytest.raises(MailboxClosed):
        mailbox.put_nowait("b")
    with pytest.raises(MailboxClosed):
        await mailbox.put("b")
    with pytest.raises(MailboxClosed):
        mailbox.put_control("stop")
    with pytest.raises(anyio.EndOfStream):
        await mailbox.get()


async def test_close_wakes_a_waiting_consumer_with_end_of_stream() -> None:
    """A consumer waiting on an empty mailbox gets EndOfStream when it is closed."""
    mailbox, _, _ = make(1)
    ended: list[bool] = []

    async def consumer() -> None:
        with pytest.raises(anyio.EndOfStream):
            await mailbox.get()
        ended.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        mailbox.close()
    assert ended == [True]


# --- invariants --------------------------------------------------------------------------


class MailboxMachine(RuleBasedStateMachine):
    """A bounded mailbox against a model deque, under any sequence of non-waiting operations."""

    def __init__(self) -> None:
        super().__init__()
        self.mailbox: Mailbox[int] | None = None
        self.model: deque[int] = deque()
        self.control: deque[int] = deque()
        self.counter = 0
        self.drained = 0

    @precondition(lambda self: self.mailbox is None)
    @rule(capacity=st.integers(min_value=1, max_value=5), policy=st.sampled_from(OverflowPolicy))
    def create(self, capacity: int, policy: OverflowPolicy) -> None:
        """Start with an empty mailbox of some capacity and policy."""
        self.mailbox = Mailbox(MailboxConfig(capacity, policy), clock=FakeClock())

    @precondition(lambda self: self.mailbox is not None)
    @rule()
    def put(self) -> None:
        """Offer the next message; the model applies the policy by hand."""
        assert self.mailbox is not None
        self.counter += 1
        config = self.mailbox.config
        full = len(self.model) >= config.capacity
        try:
            self.mailbox.put_nowait(self.counter)
        except MailboxFull:
            assert full
            assert config.policy in (OverflowPolicy.BLOCK, OverflowPolicy.REJECT)
            return
        if not full:
            self.model.append(self.counter)
        elif config.policy is OverflowPolicy.DROP_OLDEST:
            self.model.popleft()
            self.model.append(self.counter)
        else:
            assert config.policy is OverflowPolicy.DROP_NEWEST

    @precondition(lambda self: self.mailbox is not None)
    @rule()
    def put_control(self) -> None:
        """Queue a control signal, which ignores capacity."""
        assert self.mailbox is not None
        self.counter += 1
        self.mailbox.put_control(-self.counter)
        self.control.append(-self.counter)

    @precondition(lambda self: self.mailbox is not None)
    @rule()
    def get(self) -> None:
        """Take the next item: control first, then the oldest message."""
        assert self.mailbox is not None
        source = self.control or self.model
        if not source:
            with pytest.raises(anyio.WouldBlock):
                self.mailbox.get_nowait()
            return
        assert self.mailbox.get_nowait() == source.popleft()

    @precondition(lambda self: self.mailbox is not None)
    @rule()
    def drain(self) -> None:
        """Remove every queued message at once."""
        assert self.mailbox is not None
        assert self.mailbox.drain_nowait() == list(self.model)
        self.drained += len(self.model)
        self.model.clear()

    @invariant()
    def bounded(self) -> None:
        """The mailbox never holds more than its capacity and matches the model."""
        if self.mailbox is None:
            return
        stats = self.mailbox.statistics()
        assert len(self.mailbox) == stats.depth == len(self.model)
        assert stats.depth <= stats.capacity
        assert stats.high_water <= stats.capacity
        # Accepted messages only ever leave by delivery, eviction or drain.
        evicted = stats.dropped.get("drop_oldest", 0)
        assert stats.received == stats.delivered + stats.depth + evicted + self.drained


TestMailboxMachine = MailboxMachine.TestCase
TestMailboxMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


operations = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["send", "burst"]),
            st.one_of(st.none(), st.sampled_from([0.5, 1.0, 3.0])),
        ),
        st.tuples(st.just("get"), st.none()),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 1.0, 2.0])),
        st.tuples(st.just("cancel"), st.none()),
        st.tuples(st.just("control"), st.none()),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    capacity=st.integers(min_value=1, max_value=3),
    policy=st.sampled_from(OverflowPolicy),
    ops=operations,
)
async def test_mailbox_never_exceeds_capacity_with_concurrent_senders(
    capacity: int, policy: OverflowPolicy, ops: list[tuple[str, Any]]
) -> None:
    """Under concurrent senders, timeouts and cancellations, depth <= capacity, nothing lost."""
    # Every message offered ends exactly once: delivered, dropped (and reported), refused
    # with an error, cancelled, or still queued when the mailbox closes.
    mailbox, drops, clock = make(capacity, policy)
    delivered: list[int] = []
    refused: list[int] = []
    cancelled: list[int] = []
    waiting: dict[int, anyio.CancelScope] = {}

    async def sender(message: int, timeout: float | None) -> None:
        with anyio.CancelScope() as scope:
            waiting[message] = scope
            try:
                await mailbox.put(message, timeout=timeout)
            except MailboxFull:
                # Under ``block`` only a timeout may refuse a message.
                assert policy is not OverflowPolicy.BLOCK or timeout is not None
                refused.append(message)
            except MailboxClosed:
                refused.append(message)
            finally:
                del waiting[message]
        if scope.cancelled_caught:
            cancelled.append(message)

    offered: list[int] = []
    async with anyio.create_task_group() as tg:
        for op, arg in ops:
            if op in ("send", "burst"):
                # A burst starts three senders before any of them runs.
                for _ in range(3 if op == "burst" else 1):
                    offered.append(len(offered))
                    tg.start_soon(sender, offered[-1], arg)
            elif op == "get":
                try:
                    item = mailbox.get_nowait()
                except anyio.WouldBlock:
                    pass
                else:
                    if isinstance(item, int):
                        delivered.append(item)
            elif op == "advance":
                clock.advance(arg)
            elif op == "cancel" and waiting:
                next(iter(waiting.values())).cancel()
            elif op == "control":
                mailbox.put_control("signal")
            await anyio.wait_all_tasks_blocked()
            stats = mailbox.statistics()
            assert len(mailbox) == stats.depth <= capacity
            assert stats.high_water <= capacity
            assert stats.waiting_senders == len(waiting)
            if policy is not OverflowPolicy.BLOCK:
                assert not waiting
        leftover = mailbox.close()
        await anyio.wait_all_tasks_blocked()

    dropped = [m for m, _ in drops.items]
    outcomes = delivered + dropped + leftover + cancelled + [m for m in refused if m not in dropped]
    assert sorted(outcomes) == offered
    stats = mailbox.statistics()
    assert sum(stats.dropped.values()) == len(drops.items)
