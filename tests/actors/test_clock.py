"""Tests for the injected clocks: the fake clock tests rely on, and the real one."""

from __future__ import annotations

import math

import anyio
import pytest

from actors import Clock, FakeClock, MonotonicClock

pytestmark = pytest.mark.anyio


def test_both_clocks_satisfy_the_clock_protocol() -> None:
    """FakeClock and MonotonicClock can stand wherever a Clock is expected."""
    clocks: list[Clock] = [FakeClock(), MonotonicClock()]
    assert all(callable(c.now) and callable(c.move_on_after) for c in clocks)


def test_fake_clock_moves_only_when_told() -> None:
    """``now`` starts at ``start`` and changes only through ``advance``."""
    clock = FakeClock(start=100.0)
    assert clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance(0)
    assert clock.now() == 102.5


def test_fake_clock_refuses_to_go_backwards() -> None:
    """A negative advance raises ValueError and leaves the time unchanged."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1.0)
    assert clock.now() == 0.0


async def test_fake_sleep_wakes_only_once_its_deadline_passes() -> None:
    """A sleeper stays asleep until fake time reaches its deadline, then wakes."""
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5.0)
        woke.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper)
        await anyio.wait_all_tasks_blocked()
        assert clock.pending == 1
        await clock.step(4.999)
        assert woke == []
        await clock.step(0.001)
        assert woke == [5.0]
    assert clock.pending == 0


async def test_fake_sleep_of_zero_is_a_checkpoint() -> None:
    """``sleep(0)`` returns without time moving, and honours cancellation."""
    clock = FakeClock()
    await clock.sleep(0)
    assert clock.now() == 0.0
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(0)
        pytest.fail("a cancelled sleep(0) must not return normally")  # pragma: no cover
    assert scope.cancelled_caught


async def test_timers_fire_in_deadline_order_at_their_own_time() -> None:
    """One large advance fires due timers in deadline order, each seeing its deadline as now."""
    clock = FakeClock()
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        seen.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        for name, seconds in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("late", 10.0)]:
            tg.start_soon(sleeper, name, seconds)
        await anyio.wait_all_tasks_blocked()
        fired: list[float] = []
        clock._schedule(2.0, lambda: fired.append(clock.now()))
        clock.advance(5.0)
        # The callback ran while time stood at its own deadline.
        assert fired == [2.0]
        await anyio.wait_all_tasks_blocked()
        assert sorted(n for n, _ in seen) == ["a", "b", "c"]
        assert clock.next_deadline() == 10.0
        tg.cancel_scope.cancel()


async def test_fake_move_on_after_cancels_at_the_deadline() -> None:
    """A ``move_on_after`` scope is cancelled when fake time passes its deadline."""
    clock = FakeClock()
    caught: list[bool] = []

    async def waiter() -> None:
        with clock.move_on_after(3.0) as scope:
            await anyio.sleep_forever()
        caught.append(scope.cancelled_caught)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.step(2.0)
        assert caught == []
        await clock.step(1.0)
        assert caught == [True]


async def test_fake_move_on_after_none_never_expires_and_leaves_no_timer() -> None:
    """``move_on_after(None)`` has no deadline; a finished scope leaves nothing pending."""
    clock = FakeClock()
    with clock.move_on_after(None) as scope:
        clock.advance(1e9)
        await anyio.lowlevel.checkpoint()
    assert not scope.cancelled_caught
    with clock.move_on_after(5.0):
        assert clock.pending == 1
    assert clock.pending == 0
    assert clock.next_deadline() is None


async def test_cancelled_sleep_leaves_no_pending_timer() -> None:
    """A sleep cancelled from outside no longer counts as pending."""
    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 60.0)
        await anyio.wait_all_tasks_blocked()
        assert clock.pending == 1
        tg.cancel_scope.cancel()
    assert clock.pending == 0


async def test_run_until_idle_jumps_deadline_to_deadline() -> None:
    """``run_until_idle`` fires chained sleeps and returns the fake time it covered."""
    clock = FakeClock()
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(2.0)
            ticks.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        elapsed = await clock.run_until_idle()
    assert ticks == [2.0, 4.0, 6.0]
    assert elapsed == 6.0


async def test_run_until_idle_stops_at_its_limit() -> None:
    """Deadlines beyond ``limit`` seconds are left pending."""
    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 100.0)
        elapsed = await clock.run_until_idle(limit=10.0)
        assert elapsed == 0.0
        assert clock.pending == 1
        tg.cancel_scope.cancel()


def test_monotonic_clock_never_goes_backwards() -> None:
    """Successive readings of the real clock never decrease."""
    clock = MonotonicClock()
    readings = [clock.now() for _ in range(100)]
    assert readings == sorted(readings)


async def test_monotonic_move_on_after_none_has_no_deadline() -> None:
    """The real clock's ``move_on_after(None)`` never expires; a number sets a deadline."""
    clock = MonotonicClock()
    with clock.move_on_after(None) as scope:
        assert scope.deadline == math.inf
    with clock.move_on_after(3600.0) as scope:
        assert scope.deadline < math.inf


async def test_monotonic_sleep_of_negative_seconds_returns() -> None:
    """A non-positive sleep on the real clock is a checkpoint that returns."""
    clock = MonotonicClock()
    await clock.sleep(-1.0)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await clock.sleep(0)
    assert scope.cancelled_caught


async def test_fake_move_on_after_zero_is_already_expired() -> None:
    """A zero or negative timeout cancels at the first checkpoint, as anyio's does."""
    clock = FakeClock()
    for seconds in (0.0, -1.0):
        with clock.move_on_after(seconds) as scope:
            await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert clock.pending == 0
