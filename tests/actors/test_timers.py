"""Timers an actor owns: scheduling rule, keyed replacement, cancellation on stop and restart."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import Actor, Backoff, FakeClock, Runtime
from actors._timers import next_deadline
from supervisor import ActorSystem, Restart
from tests.helpers.tasks import settle

NOW = Backoff(minimum=0.0, maximum=0.0)


# --- the scheduling rule ---------------------------------------------------------------------


# Multiples of 1/1024: exact in binary floating point, so the grid can be checked exactly.
_ticks = st.integers(min_value=0, max_value=10**9).map(lambda n: n / 1024)


@given(
    previous=_ticks,
    interval=st.integers(min_value=1, max_value=10**6).map(lambda n: n / 1024),
    late=_ticks,
)
def test_next_deadline_is_the_first_grid_point_after_now(
    previous: float, interval: float, late: float
) -> None:
    """The next deadline is due after now, on the previous + k*interval grid (k >= 1), and
    no grid point between now and it is skipped (missed ticks are dropped, not burst)."""
    now = previous + late
    deadline = next_deadline(previous, interval, now)
    assert deadline > now
    steps = (deadline - previous) / interval
    assert steps == int(steps) >= 1
    assert steps == 1 or deadline - interval <= now


def test_next_deadline_on_time_is_one_interval_later() -> None:
    """A timer that fired on time is due again exactly one interval later."""
    assert next_deadline(10.0, 0.5, 10.0) == 10.5
    assert next_deadline(10.0, 0.5, 10.2) == 10.5
    assert next_deadline(10.0, 0.5, 11.3) == 11.5


@pytest.mark.parametrize("interval", [0.0, -1.0, math.inf, math.nan])
def test_next_deadline_refuses_an_interval_that_is_not_a_positive_number(interval: float) -> None:
    """Zero, negative, infinite and NaN intervals are refused."""
    with pytest.raises(ValueError, match="interval"):
        next_deadline(0.0, interval, 0.0)


# --- actors with timers ---------------------------------------------------------------------


class Ticking(Actor):
    """Arms timers on request; logs what it receives; ``gate`` holds one message."""

    def __init__(self, log: list[Any], gate: anyio.Event | None = None) -> None:
        self.log = log
        self.gate = gate

    async def on_receive(self, message: Any) -> Any:
        timers = self.context.timers
        match message:
            case ("after", key, payload, delay):
                timers.send_after(key, payload, delay)
            case ("every", key, payload, interval):
                timers.send_interval(key, payload, interval)
            case ("cancel", key):
                return timers.cancel(key)
            case "active":
                return sorted(timers.keys)
            case ("wait then", action):
                assert self.gate is not None
                await self.gate.wait()
                if action == "crash":
                    raise RuntimeError("crash with a tick queued")
                timers.cancel("k")
            case _:
                self.log.append(message)
        return None


pytestmark = pytest.mark.anyio


async def test_send_after_fires_once_at_its_deadline() -> None:
    """send_after delivers its message once, when the fake clock reaches the delay."""
    clock = FakeClock()
    log: list[Any] = []
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log))
        await ref.ask(("after", "k", "ping", 1.0))
        await clock.step(0.999)
        assert log == []
        await clock.step(0.001)
        assert log == ["ping"]
        await clock.step(10.0)
        assert log == ["ping"]
        assert await ref.ask("active") == []


async def test_send_interval_fires_every_interval_until_cancelled() -> None:
    """send_interval delivers once per interval; cancel stops it and reports it existed."""
    clock = FakeClock()
    log: list[Any] = []
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log))
        await ref.ask(("every", "tick", "tick", 0.1))
        for _ in range(3):
            await clock.step(0.1)
        assert log == ["tick"] * 3
        assert await ref.ask("active") == ["tick"]
        assert await ref.ask(("cancel", "tick")) is True
        assert await ref.ask(("cancel", "tick")) is False
        await clock.step(1.0)
        assert log == ["tick"] * 3
        assert system.runtime.timers.pending == 0


async def test_an_interval_skips_ticks_missed_while_late() -> None:
    """A fake-clock jump of ten intervals fires one tick, not ten; the grid is kept."""
    clock = FakeClock()
    log: list[Any] = []
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log))
        await ref.ask(("every", "tick", "tick", 1.0))
        await clock.step(10.5)
        assert log == ["tick"]
        await clock.step(0.5)
        assert log == ["tick", "tick"]


async def test_re_arming_a_key_replaces_the_timer() -> None:
    """A second timer under the same key replaces the first: only its message arrives."""
    clock = FakeClock()
    log: list[Any] = []
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log))
        await ref.ask(("after", "k", "first", 1.0))
        await ref.ask(("after", "k", "second", 2.0))
        await clock.step(5.0)
        assert log == ["second"]


async def test_a_message_queued_before_the_timer_was_cancelled_is_not_received() -> None:
    """Cancelling a timer whose message already sits in the mailbox discards that message."""
    clock = FakeClock()
    log: list[Any] = []
    gate = anyio.Event()
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log, gate))
        await ref.ask(("after", "k", "late", 1.0))
        await ref.tell(("wait then", "cancel"))
        await clock.step(1.0)  # fires while the actor is busy: the message is queued
        assert ref.statistics().depth == 1
        gate.set()
        await ref.tell("after")
        await settle()
        assert log == ["after"]


async def test_a_restart_cancels_every_timer_and_drops_their_queued_messages() -> None:
    """A tick queued when the actor crashes is not received by the restarted behaviour,
    and no timer of the old behaviour fires in the new one."""
    clock = FakeClock()
    log: list[Any] = []
    gate = anyio.Event()
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log, gate), restart=Restart.PERMANENT, backoff=NOW)
        await ref.ask(("every", "tick", "tick", 1.0))
        await ref.ask(("after", "once", "once", 5.0))
        await ref.tell(("wait then", "crash"))
        await clock.step(1.0)  # a tick queued behind the message that will crash
        assert ref.statistics().depth == 1
        gate.set()
        await settle()
        assert ref.alive
        assert await ref.ask("active") == []
        await clock.step(10.0)
        assert log == []
        assert system.runtime.timers.pending == 0


async def test_stopping_an_actor_cancels_its_timers() -> None:
    """A stopped actor leaves no pending timer behind."""
    clock = FakeClock()
    log: list[Any] = []
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(lambda: Ticking(log))
        await ref.ask(("every", "tick", "tick", 1.0))
        assert system.runtime.timers.pending == 1
        ref.stop()
        await ref.wait_stopped()
        assert system.runtime.timers.pending == 0


async def test_timers_need_a_running_timer_service() -> None:
    """Arming a timer on a runtime whose timer service is not running is a clear error."""
    runtime = Runtime(clock=FakeClock())
    cell = runtime.create_cell(lambda: Ticking([]))
    with pytest.raises(RuntimeError, match="timers need a running actor system"):
        cell.timers.send_after("k", "x", 1.0)
