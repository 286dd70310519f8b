"""Tests for ActorSystem: lifecycle, delegation, root failure, and a crash storm without leaks."""

from __future__ import annotations

import functools
import gc
from collections import Counter
from typing import Any

import anyio
import pytest

from actors import (
    ALL,
    Actor,
    ActorRef,
    Backoff,
    DeadLetter,
    Escalation,
    FakeClock,
    Intensity,
    MailboxConfig,
    SystemFailed,
)
from actors._actor import Cell, ExitKind
from supervisor import ActorSystem, ChildSpec, Restart, SupervisorSpec
from tests.helpers.tasks import live_tasks, settle

pytestmark = pytest.mark.anyio

NOW = Backoff(minimum=0.0)


class Recorder(Actor):
    """Logs hooks and messages; ``"boom"`` crashes it, ``"exit"`` stops it."""

    def __init__(self, log: list[tuple[str, str]], name: str, joins: tuple[str, ...] = ()) -> None:
        self.log = log
        self.name = name
        self.joins = joins

    async def on_start(self) -> None:
        for group in self.joins:
            self.context.join(group)
        self.log.append(("started", self.name))

    async def on_stop(self) -> None:
        self.log.append(("stopping", self.name))

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.context.stop()
        self.log.append((f"got {message}", self.name))
        return message


class Crasher(Actor):
    """Crashes on every message."""

    async def on_receive(self, message: Any) -> None:
        raise RuntimeError(f"crash on {message!r}")


def live_cells() -> int:
    """Count the Cell objects still reachable after a full collection."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Cell))


# --- lifecycle -----------------------------------------------------------------------------


async def test_spawn_and_ask() -> None:
    """A spawned actor is running when ``spawn`` returns and answers ``ask``."""
    log: list[tuple[str, str]] = []
    async with ActorSystem(clock=FakeClock()) as system:
        ref = await system.spawn(lambda: Recorder(log, "a"))
        assert log == [("started", "a")]
        assert await ref.ask("ping") == "ping"
        assert await system.ask(ref.address, "pong") == "pong"
    assert not ref.alive
    assert log[-1] == ("stopping", "a")


async def test_static_children_start_in_order_and_stop_in_reverse() -> None:
    """Children given to the system start on entry in order and stop on exit in reverse."""
    log: list[tuple[str, str]] = []
    specs = [ChildSpec(functools.partial(Recorder, log, n), id=n) for n in "abc"]
    async with ActorSystem(*specs, clock=FakeClock()) as system:
        assert log == [("started", "a"), ("started", "b"), ("started", "c")]
        assert len(system.root.children) == 3
        log.clear()
    assert log == [("stopping", "c"), ("stopping", "b"), ("stopping", "a")]
    assert system.runtime.statistics().addresses == 0


async def test_spawned_actors_are_transient_by_default() -> None:
    """A spawned actor is restarted after a crash but not after it stopped itself."""
    log: list[tuple[str, str]] = []
    async with ActorSystem(clock=FakeClock()) as system:
        ref = await system.spawn(lambda: Recorder(log, "t"), backoff=NOW)
        await ref.tell("boom")
        await settle()
        assert ref.alive
        assert log.count(("started", "t")) == 2
        await ref.tell("exit")
        await ref.wait_stopped()
        await settle()
        assert log.count(("started", "t")) == 2
        assert ref._cell.termination is not None
        assert ref._cell.termination.kind is ExitKind.EXITED


async def test_spawn_passes_names_mailbox_and_options() -> None:
    """``spawn`` registers names and applies the mailbox and other ChildSpec options."""
    log: list[tuple[str, str]] = []
    async with ActorSystem(clock=FakeClock()) as system:
        ref = await system.spawn(
            lambda: Recorder(log, "n"),
            names=("user:1",),
            mailbox=MailboxConfig(3),
            restart=Restart.TEMPORARY,
            kind="worker",
        )
        assert system.runtime.members("user:1") == [ref]
        assert ref.statistics().capacity == 3
        assert system.runtime.statistics().actors == {"worker": 1}
        await ref.tell("boom")
        await ref.wait_stopped()
        assert not ref.alive


async def test_send_publish_broadcast_delegate_to_the_runtime() -> None:
    """The system's send, publish and broadcast reach actors like the runtime's."""
    log: list[tuple[str, str]] = []
    async with ActorSystem(clock=FakeClock()) as system:
        a = await system.spawn(lambda: Recorder(log, "a", joins=("room", ALL)))
        await system.spawn(lambda: Recorder(log, "b", joins=("room",)))
        await system.send(a.address, "direct")
        await system.publish("room", "grouped")
        await system.broadcast("everyone")
        await settle()
    got = sorted(e for e in log if e[0].startswith("got"))
    assert got == [
        ("got direct", "a"),
        ("got everyone", "a"),
        ("got grouped", "a"),
        ("got grouped", "b"),
    ]


async def test_spawn_after_exit_raises() -> None:
    """Once the system has stopped, ``spawn`` raises RuntimeError."""
    async with ActorSystem(clock=FakeClock()) as system:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await system.spawn(lambda: Recorder([], "late"))


async def test_an_error_in_the_body_propagates_after_stopping_actors() -> None:
    """An exception raised in the ``async with`` body propagates; the actors are still stopped."""
    log: list[tuple[str, str]] = []
    refs: list[ActorRef] = []

    async def body() -> None:
        async with ActorSystem(clock=FakeClock()) as system:
            refs.append(await system.spawn(lambda: Recorder(log, "a")))
            raise KeyError("body")

    with pytest.raises(KeyError, match="body"):
        await body()
    assert not refs[0].alive
    assert log[-1] == ("stopping", "a")


async def test_cancelling_the_body_from_outside_stops_the_system() -> None:
    """A cancel scope around the system cancels the body and the actors, and is absorbed."""
    # Outside cancellation means "now": the actors are cancelled, not given ``stopping``.
    log: list[tuple[str, str]] = []
    with anyio.CancelScope() as outer:
        async with ActorSystem(clock=FakeClock()) as system:
            ref = await system.spawn(lambda: Recorder(log, "a"))
            outer.cancel()
            await anyio.sleep_forever()
    assert outer.cancelled_caught
    assert not ref.alive
    assert system.root.stopped.is_set()
    assert system.runtime.statistics().addresses == 0


# --- root failure --------------------------------------------------------------------------


async def test_root_escalation_raises_system_failed_and_never_hangs() -> None:
    """When the root supervisor escalates, the body is cancelled and SystemFailed is raised."""
    log: list[tuple[str, str]] = []
    reached: list[str] = []
    spec = ChildSpec(lambda: Recorder(log, "fragile"), id="fragile", backoff=NOW)
    system = ActorSystem(spec, intensity=Intensity(0, 1.0), clock=FakeClock())

    refs: list[ActorRef] = []

    async def body() -> None:
        async with system:
            refs.extend(system.root.children)
            await refs[0].tell("boom")
            await anyio.sleep_forever()
            reached.append("after")  # pragma: no cover

    with pytest.raises(SystemFailed) as info:
        await body()
    assert reached == []
    escalation = info.value.__cause__
    assert isinstance(escalation, Escalation)
    assert info.value.escalation is escalation
    assert escalation.supervisor == "root"
    assert isinstance(escalation.__cause__, RuntimeError)
    assert "root" in str(info.value)
    assert system.root.stopped.is_set()
    assert not refs[0].alive


# --- crash storm ---------------------------------------------------------------------------


async def test_crash_storm_stops_the_actor_and_leaks_nothing() -> None:
    """A crash storm hits the actor's own intensity; tasks, addresses and cells return to zero."""
    baseline_tasks = live_tasks()
    baseline_cells = live_cells()
    letters: Counter[str] = Counter()
    clock = FakeClock()
    async with ActorSystem(clock=clock) as system:
        system.runtime.dead_letters.subscribe(lambda d: letters.update([d.reason]))
        baseline_addresses = system.runtime.statistics().addresses
        ref = await system.spawn(
            Crasher,
            restart=Restart.PERMANENT,
            intensity=Intensity(100, 1.0),
            backoff=NOW,
            mailbox=MailboxConfig(1000),
        )
        for i in range(1000):
            ref.tell_nowait(i)
        await ref.wait_stopped()
        await settle()
        # 100 restarts were allowed; the 101st crash stopped it for good.
        assert letters == {"failed": 101, "stopped": 899}
        assert ref._cell.termination is not None
        assert ref._cell.termination.kind is ExitKind.CRASHED
        stats = system.runtime.statistics()
        assert (stats.addresses, dict(stats.actors)) == (baseline_addresses, {})
        assert clock.now() == 0.0
    del ref
    await settle()
    assert live_tasks() == baseline_tasks
    assert live_cells() == baseline_cells


async def test_crash_storm_escalates_through_the_supervisor_intensity() -> None:
    """A crash storm escalates from the sub-supervisor's intensity to a failed system, no leaks."""
    baseline_tasks = live_tasks()
    baseline_cells = live_cells()
    letters: list[DeadLetter] = []
    storm = SupervisorSpec(
        [
            ChildSpec(
                Crasher,
                names=("storm",),
                intensity=Intensity(10_000, 1.0),
                backoff=NOW,
                mailbox=MailboxConfig(1000),
            )
        ],
        intensity=Intensity(50, 1.0),
        id="storm",
    )
    system = ActorSystem(storm, intensity=Intensity(0, 1.0), clock=FakeClock())
    system.runtime.dead_letters.subscribe(letters.append)

    async def body(system: ActorSystem) -> None:
        async with system:
            for i in range(1000):
                assert system.runtime.send_nowait("storm", i) == 1
            await anyio.sleep_forever()

    with pytest.raises(SystemFailed) as info:
        await body(system)
    escalation = info.value.__cause__
    assert isinstance(escalation, Escalation)
    assert escalation.supervisor == "root"
    inner = escalation.__cause__
    assert isinstance(inner, Escalation)
    assert (inner.supervisor, inner.restarts, inner.within) == ("storm", 51, 1.0)
    assert isinstance(inner.__cause__, RuntimeError)
    reasons = Counter(d.reason for d in letters)
    # 50 restarts were allowed; the 51st crash escalated and the rest were never handled.
    assert reasons == {"failed": 51, "stopped": 949}
    stats = system.runtime.statistics()
    assert (stats.addresses, dict(stats.actors)) == (0, {})
    # The failure (and the tracebacks it holds) is the only thing keeping old frames alive.
    del info, escalation, inner, system, letters
    await settle()
    assert live_tasks() == baseline_tasks
    assert live_cells() == baseline_cells
