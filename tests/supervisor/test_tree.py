"""Tests for the supervision tree: strategies, restart types, intensity, backoff, shutdown."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from actors import (
    Actor,
    ActorRef,
    Backoff,
    CriticalFailure,
    DeadLetter,
    Down,
    Escalation,
    FakeClock,
    Instrumentation,
    Intensity,
    MailboxClosed,
    Runtime,
)
from actors._actor import Envelope, Exit, ExitKind
from supervisor import ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec
from tests.helpers.tasks import settle

pytestmark = pytest.mark.anyio

NOW = Backoff(minimum=0.0)
"""Restart at once: most tests are about who restarts, not when."""


class Counting(Instrumentation):
    """Counts the runtime events the supervisor reports."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()

    def actor_crashed(self, kind: str) -> None:
        self.events["crashed"] += 1

    def actor_restarted(self, kind: str) -> None:
        self.events["restarted"] += 1

    def escalated(self) -> None:
        self.events["escalated"] += 1


class Recorder(Actor):
    """Logs its hooks as ``(hook, name)``; ``"boom"`` crashes it, ``"exit"`` stops it."""

    def __init__(self, log: list[tuple[str, str]], name: str) -> None:
        self.log = log
        self.name = name

    async def on_start(self) -> None:
        self.log.append(("started", self.name))

    async def on_restart(self, error: Exception) -> None:
        self.log.append(("restarted", self.name))

    async def on_stop(self) -> None:
        self.log.append(("stopping", self.name))

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.context.stop()
        self.log.append((f"got {message}", self.name))
        return self.context.restarts


class Stuck(Recorder):
    """Never finishes ``stopping``; appends ``"cancelled"`` to ``outcome`` when cancelled."""

    def __init__(self, log: list[tuple[str, str]], name: str, outcome: list[str]) -> None:
        super().__init__(log, name)
        self.outcome = outcome

    async def on_stop(self) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            self.outcome.append("cancelled")


def child(
    log: list[tuple[str, str]], name: str, *, backoff: Backoff = NOW, **options: Any
) -> ChildSpec:
    """A Recorder child named ``name`` that restarts at once unless told otherwise."""
    return ChildSpec(lambda: Recorder(log, name), id=name, backoff=backoff, **options)


class Tree:
    """A supervisor running on a fake clock, with what it reports."""

    def __init__(self, sup: Supervisor, runtime: Runtime, clock: FakeClock, tg: TaskGroup) -> None:
        self.sup = sup
        self.runtime = runtime
        self.clock = clock
        self.tg = tg
        self.letters: list[DeadLetter] = []
        self.escalation: Escalation | None = None
        runtime.dead_letters.subscribe(self.letters.append)

    @property
    def instrumentation(self) -> Counting:
        """The counting instrumentation."""
        assert isinstance(self.runtime.instrumentation, Counting)
        return self.runtime.instrumentation


@asynccontextmanager
async def tree(spec: SupervisorSpec) -> AsyncIterator[Tree]:
    """Run a supervisor for ``spec``; shut it down on exit and check that it stopped."""
    clock = FakeClock()
    runtime = Runtime(clock=clock, instrumentation=Counting())
    sup = Supervisor(runtime, spec)
    async with anyio.create_task_group() as tg:
        holder: list[Tree] = []

        async def run(*, task_status: TaskStatus[Supervisor]) -> None:
            try:
                await sup.run(task_status=task_status)
            except Escalation as exc:
                holder[0].escalation = exc

        holder.append(Tree(sup, runtime, clock, tg))
        await tg.start(run)
        yield holder[0]
        sup.shutdown()
        await clock.run_until_idle()
        await settle()
        assert sup.stopped.is_set(), "the supervisor did not stop"


def hooks(log: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Only the lifecycle entries of ``log``."""
    return [e for e in log if e[0] in ("started", "restarted", "stopping")]


# --- starting ----------------------------------------------------------------------------


async def test_static_children_start_in_order() -> None:
    """Static children start one after another, in spec order, before ``run`` reports started."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec([child(log, "a"), child(log, "b"), child(log, "c")])
    async with tree(spec) as t:
        assert log == [("started", "a"), ("started", "b"), ("started", "c")]
        refs = t.sup.children
        assert len(refs) == 3
        assert all(r.alive for r in refs)
        assert len({r.address for r in refs}) == 3
    assert not any(r.alive for r in refs)


async def test_start_child_waits_for_started_and_nowait_does_not() -> None:
    """``start_child`` returns after ``started``; ``start_child_nowait`` returns before it."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = await t.sup.start_child(child(log, "waited"))
        assert isinstance(ref, ActorRef)
        assert log == [("started", "waited")]
        later = t.sup.start_child_nowait(child(log, "nowait"))
        assert log == [("started", "waited")]
        assert later.alive
        await settle()
        assert log[-1] == ("started", "nowait")
        assert t.sup.children == [ref, later]
        # Dynamic children are supervised like static ones.
        await later.tell("boom")
        await settle()
        assert log[-1] == ("restarted", "nowait")


async def test_start_child_with_a_supervisor_spec_returns_the_supervisor() -> None:
    """A dynamic SupervisorSpec child starts its own children and is returned as a Supervisor."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        sub = await t.sup.start_child(SupervisorSpec([child(log, "x")], id="sub"))
        assert isinstance(sub, Supervisor)
        assert log == [("started", "x")]
        assert len(sub.children) == 1
        assert t.sup.children == []  # sub-supervisors are not listed as actors
    assert sub.stopped.is_set()
    assert log[-1] == ("stopping", "x")


async def test_start_child_on_a_stopped_supervisor_raises() -> None:
    """Adding children after shutdown raises RuntimeError instead of leaking an actor."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        baseline = t.runtime.statistics().addresses
        t.sup.shutdown()
        with pytest.raises(RuntimeError, match="not running"):
            await t.sup.start_child(child(log, "late"))
        with pytest.raises(RuntimeError, match="not running"):
            t.sup.start_child_nowait(child(log, "late"))
        assert t.runtime.statistics().addresses == baseline
    assert log == []


async def test_child_spec_names_last_from_first_start_until_stop() -> None:
    """Names from the ChildSpec resolve to the actor across restarts and vanish when it stops."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = await t.sup.start_child(child(log, "n", names=("user:1", "svc")))
        assert isinstance(ref, ActorRef)
        assert t.runtime.members("user:1") == [ref]
        await ref.tell("boom")
        await settle()
        assert t.runtime.members("svc") == [ref]
        ref.stop()
        await ref.wait_stopped()
        assert t.runtime.members("user:1") == []
        assert t.runtime.members("svc") == []


def test_child_spec_label_defaults_to_the_factory_name() -> None:
    """A ChildSpec without an id is labelled after its factory."""
    assert ChildSpec(Actor).label == "Actor"
    assert ChildSpec(Actor, id="custom").label == "custom"
    assert SupervisorSpec(id="sup").label == "sup"


# --- strategies --------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    """Under one_for_one a crash restarts that child alone, on the same address."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec([child(log, "a"), child(log, "b"), child(log, "c")])
    async with tree(spec) as t:
        a, b, c = t.sup.children
        log.clear()
        await b.tell("boom")
        await settle()
        assert hooks(log) == [("restarted", "b")]
        assert t.sup.children == [a, b, c]
        assert await b.ask("ping") == 1
        assert await a.ask("ping") == 0


async def test_one_for_all_restarts_every_child_in_order() -> None:
    """Under one_for_all the siblings stop in reverse start order, then all start in order."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "a"), child(log, "b"), child(log, "c")], strategy=Strategy.ONE_FOR_ALL
    )
    async with tree(spec) as t:
        refs = t.sup.children
        log.clear()
        await refs[1].tell("boom")
        await settle()
        assert hooks(log) == [
            ("stopping", "c"),
            ("stopping", "a"),
            ("started", "a"),
            ("restarted", "b"),
            ("started", "c"),
        ]
        assert t.sup.children == refs
        assert all(r.alive for r in refs)
        assert [await r.ask("ping") for r in refs] == [0, 1, 0]


async def test_rest_for_one_restarts_the_crashed_child_and_those_after_it() -> None:
    """Under rest_for_one the later siblings stop in reverse order; earlier ones are untouched."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "a"), child(log, "b"), child(log, "c"), child(log, "d")],
        strategy=Strategy.REST_FOR_ONE,
    )
    async with tree(spec) as t:
        refs = t.sup.children
        log.clear()
        await refs[1].tell("boom")
        await settle()
        assert hooks(log) == [
            ("stopping", "d"),
            ("stopping", "c"),
            ("restarted", "b"),
            ("started", "c"),
            ("started", "d"),
        ]
        assert all(r.alive for r in refs)
        log.clear()
        await refs[3].tell("boom")
        await settle()
        assert hooks(log) == [("restarted", "d")]


async def test_group_restart_waits_for_the_backoff_delay() -> None:
    """Under one_for_all the siblings stop at once but the group restarts after the delay."""
    log: list[tuple[str, str]] = []
    slow = Backoff(minimum=2.0, maximum=2.0, jitter=0.0)
    spec = SupervisorSpec(
        [child(log, "a"), child(log, "b", backoff=slow)], strategy=Strategy.ONE_FOR_ALL
    )
    async with tree(spec) as t:
        _, b = t.sup.children
        log.clear()
        await b.tell("boom")
        await settle()
        assert hooks(log) == [("stopping", "a")]
        await t.clock.step(1.999)
        assert hooks(log) == [("stopping", "a")]
        await t.clock.step(0.001)
        assert hooks(log) == [("stopping", "a"), ("started", "a"), ("restarted", "b")]


# --- restart types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "message", "restarted"),
    [
        (Restart.PERMANENT, "boom", True),
        (Restart.PERMANENT, "exit", True),
        (Restart.TRANSIENT, "boom", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TEMPORARY, "boom", False),
        (Restart.TEMPORARY, "exit", False),
    ],
)
async def test_restart_types(restart: Restart, message: str, restarted: bool) -> None:
    """permanent restarts after a crash or a self-stop, transient after a crash, temporary never."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec([child(log, "x", restart=restart)])) as t:
        (ref,) = t.sup.children
        log.clear()
        await ref.tell(message)
        await settle()
        assert (("restarted", "x") in log or ("started", "x") in log) is restarted
        assert ref.alive is restarted
        if not restarted:
            assert ref._cell.termination is not None
            expected = ExitKind.CRASHED if message == "boom" else ExitKind.EXITED
            assert ref._cell.termination.kind is expected
            assert t.sup.children == []


async def test_self_stop_restart_calls_started_not_restarted() -> None:
    """A permanent child that stopped itself comes back through ``started`` (no error to pass)."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec([child(log, "x", restart=Restart.PERMANENT)])) as t:
        (ref,) = t.sup.children
        log.clear()
        await ref.tell("exit")
        await settle()
        assert hooks(log) == [("stopping", "x"), ("started", "x")]
        assert t.instrumentation.events["crashed"] == 0


@pytest.mark.parametrize("restart", list(Restart))
@pytest.mark.parametrize("how", ["stop", "drain"])
async def test_external_stop_never_restarts(restart: Restart, how: str) -> None:
    """A child stopped or drained from outside is never restarted, whatever its restart type."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec([child(log, "x", restart=restart)])) as t:
        (ref,) = t.sup.children
        log.clear()
        if how == "stop":
            ref.stop()
        else:
            ref.drain()
        await ref.wait_stopped()
        await settle()
        assert hooks(log) == [("stopping", "x")]
        assert ref._cell.termination is not None
        expected = ExitKind.STOPPED if how == "stop" else ExitKind.DRAINED
        assert ref._cell.termination.kind is expected
        assert t.sup.children == []


# --- intensity ---------------------------------------------------------------------------


async def test_actor_intensity_stops_the_actor() -> None:
    """Past its own intensity a child is stopped for good; its siblings and supervisor go on."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "fragile", intensity=Intensity(2, 10.0)), child(log, "calm")],
        intensity=Intensity(100, 10.0),
    )
    async with tree(spec) as t:
        fragile, calm = t.sup.children
        for _ in range(2):
            await fragile.tell("boom")
            await settle()
            assert fragile.alive
        await fragile.tell("boom")
        await settle()
        assert not fragile.alive
        termination = fragile._cell.termination
        assert termination is not None
        assert termination.kind is ExitKind.CRASHED
        assert isinstance(termination.error, RuntimeError)
        assert t.sup.children == [calm]
        assert await calm.ask("ping") == 0
        assert t.escalation is None
        # Counted as an escalation of its own (a service given up is never silent).
        assert t.instrumentation.events == {"crashed": 3, "restarted": 2, "escalated": 1}


async def test_actor_intensity_is_a_sliding_window() -> None:
    """Crashes spread wider than the window never exhaust the intensity."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec([child(log, "x", intensity=Intensity(1, 5.0))])) as t:
        (ref,) = t.sup.children
        for _ in range(5):
            await ref.tell("boom")
            await settle()
            await t.clock.step(5.0)
        assert ref.alive
        assert await ref.ask("ping") == 5


async def test_supervisor_intensity_escalates_to_the_parent_which_restarts_it() -> None:
    """A sub-supervisor past its intensity stops its children; its parent restarts it."""
    log: list[tuple[str, str]] = []
    sub = SupervisorSpec(
        [child(log, "worker", names=("worker",)), child(log, "peer")],
        intensity=Intensity(1, 10.0),
        id="sub",
        backoff=NOW,
    )
    async with tree(SupervisorSpec([sub], id="parent")) as t:
        (first,) = t.runtime.members("worker")
        await first.tell("boom")
        await settle()
        assert first.alive  # one restart is within the sub-supervisor's intensity
        log.clear()
        await first.tell("boom")
        await settle()
        # The sub-supervisor stopped its children and escalated; the parent restarted it,
        # which starts fresh children on new addresses.
        assert not first.alive
        assert hooks(log) == [
            ("stopping", "peer"),
            ("started", "worker"),
            ("started", "peer"),
        ]
        (second,) = t.runtime.members("worker")
        assert second.address != first.address
        assert await second.ask("ping") == 0
        assert t.instrumentation.events["escalated"] == 1
        assert t.escalation is None


async def test_root_supervisor_escalation_raises_from_run_after_stopping_children() -> None:
    """A supervisor with no parent raises Escalation from ``run``, chained to the crash."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "a"), child(log, "b"), child(log, "c")], intensity=Intensity(0, 1.0)
    )
    async with tree(spec) as t:
        refs = t.sup.children
        log.clear()
        await refs[1].tell("boom")
        await settle()
        assert t.sup.stopped.is_set()
        escalation = t.escalation
        assert escalation is not None
        assert (escalation.supervisor, escalation.restarts, escalation.within) == (
            "supervisor",
            1,
            1.0,
        )
        assert isinstance(escalation.__cause__, RuntimeError)
        assert hooks(log) == [("stopping", "c"), ("stopping", "a")]
        assert not any(r.alive for r in refs)
        assert t.runtime.statistics().actors == {}


async def test_repeated_sub_supervisor_escalations_escalate_the_parent() -> None:
    """When the parent's own intensity is exceeded by its sub-supervisor, it escalates in turn."""
    log: list[tuple[str, str]] = []
    sub = SupervisorSpec(
        [child(log, "w", names=("w",))], intensity=Intensity(0, 10.0), id="sub", backoff=NOW
    )
    async with tree(SupervisorSpec([sub], intensity=Intensity(1, 10.0), id="parent")) as t:
        for _ in range(2):
            (worker,) = t.runtime.members("w")
            await worker.tell("boom")
            await settle()
        assert t.escalation is not None
        assert t.escalation.supervisor == "parent"
        assert isinstance(t.escalation.__cause__, Escalation)
        assert t.escalation.__cause__.supervisor == "sub"
        assert t.instrumentation.events["escalated"] == 3
        assert t.runtime.members("w") == []


async def test_temporary_sub_supervisor_is_not_restarted_after_escalating() -> None:
    """A temporary sub-supervisor that escalates is removed, and its parent carries on."""
    log: list[tuple[str, str]] = []
    sub = SupervisorSpec(
        [child(log, "w", names=("w",))],
        intensity=Intensity(0, 10.0),
        id="sub",
        restart=Restart.TEMPORARY,
    )
    async with tree(SupervisorSpec([sub, child(log, "other")])) as t:
        (worker,) = t.runtime.members("w")
        await worker.tell("boom")
        await settle()
        assert t.runtime.members("w") == []
        assert t.escalation is None
        (other,) = t.sup.children
        assert await other.ask("ping") == 0


# --- backoff -------------------------------------------------------------------------------


async def test_backoff_delays_the_restart() -> None:
    """Nothing restarts before the backoff delay; the restart happens once it has passed."""
    log: list[tuple[str, str]] = []
    backoff = Backoff(minimum=1.0, maximum=8.0, factor=2.0, jitter=0.0, reset_after=60.0)
    async with tree(SupervisorSpec([child(log, "x", backoff=backoff)])) as t:
        (ref,) = t.sup.children
        log.clear()
        await ref.tell("boom")
        await settle()
        await t.clock.step(0.999)
        assert hooks(log) == []
        await t.clock.step(0.001)
        assert hooks(log) == [("restarted", "x")]
        # The second consecutive restart waits twice as long.
        await ref.tell("boom")
        await settle()
        await t.clock.step(1.999)
        assert hooks(log) == [("restarted", "x")]
        await t.clock.step(0.001)
        assert hooks(log) == [("restarted", "x")] * 2


async def test_messages_queued_during_a_restart_reach_the_new_behaviour() -> None:
    """A restart keeps the address and mailbox: messages sent meanwhile go to the new behaviour."""
    log: list[tuple[str, str]] = []
    backoff = Backoff(minimum=1.0, maximum=1.0, jitter=0.0)
    async with tree(SupervisorSpec([child(log, "x", backoff=backoff)])) as t:
        (ref,) = t.sup.children
        address = ref.address
        await ref.tell("boom")
        await settle()
        for i in range(3):
            await t.runtime.send(address, i)
        assert ref.statistics().depth == 3
        log.clear()
        await t.clock.step(1.0)
        assert log == [("restarted", "x"), ("got 0", "x"), ("got 1", "x"), ("got 2", "x")]
        assert t.sup.children == [ref]
        assert ref.address == address
        assert t.runtime.lookup(address) == ref
        # The message that crashed it is a dead letter, never retried.
        assert [(d.message, d.reason) for d in t.letters] == [("boom", "failed")]


async def test_shutdown_cancels_a_pending_restart() -> None:
    """Shutting down while a child waits out its backoff stops it without restarting it."""
    log: list[tuple[str, str]] = []
    backoff = Backoff(minimum=5.0, maximum=5.0, jitter=0.0)
    async with tree(SupervisorSpec([child(log, "x", backoff=backoff)])) as t:
        (ref,) = t.sup.children
        await ref.tell("boom")
        await settle()
        log.clear()
        t.sup.shutdown()
        await settle()
        assert t.sup.stopped.is_set()
        await t.clock.step(5.0)
        assert log == []
        assert not ref.alive


async def test_shutdown_racing_a_due_restart_stops_cleanly() -> None:
    """A restart that falls due while the supervisor is shutting down is dropped, not raised."""
    log: list[tuple[str, str]] = []
    backoff = Backoff(minimum=5.0, maximum=5.0, jitter=0.0)
    async with tree(SupervisorSpec([child(log, "x", backoff=backoff)])) as t:
        (ref,) = t.sup.children
        await ref.tell("boom")
        await settle()
        log.clear()
        # The restart's sleep ends, and shutdown is requested before the restart task runs.
        t.clock.advance(5.0)
        t.sup.shutdown()
        await settle()
        assert t.sup.stopped.is_set()
        assert hooks(log) == []
        assert not ref.alive


# --- shutdown ------------------------------------------------------------------------------


async def test_shutdown_stops_static_children_in_reverse_start_order() -> None:
    """Shutdown stops static children one at a time, last started first."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec([child(log, "a"), child(log, "b"), child(log, "c")])
    async with tree(spec) as t:
        refs = t.sup.children
        log.clear()
    assert log == [("stopping", "c"), ("stopping", "b"), ("stopping", "a")]
    assert all(r._cell.termination is not None for r in refs)
    assert {r._cell.termination.kind for r in refs if r._cell.termination} == {ExitKind.STOPPED}


async def test_shutdown_stops_dynamic_children_in_parallel_before_static_ones() -> None:
    """Dynamic children are all asked to stop at once, and static ones only after them."""
    log: list[tuple[str, str]] = []
    entered: list[str] = []
    release = anyio.Event()

    class Slow(Recorder):
        async def on_stop(self) -> None:
            entered.append(self.name)
            await release.wait()
            await super().on_stop()

    async with tree(SupervisorSpec([child(log, "static")])) as t:
        for name in ("d1", "d2", "d3"):
            await t.sup.start_child(ChildSpec(functools.partial(Slow, log, name), id=name))
        log.clear()
        t.sup.shutdown()
        await settle()
        # All three are inside ``stopping`` together: they were stopped in parallel.
        assert sorted(entered) == ["d1", "d2", "d3"]
        assert log == []
        release.set()
        await settle()
    assert sorted(log[:3]) == [("stopping", "d1"), ("stopping", "d2"), ("stopping", "d3")]
    assert log[3:] == [("stopping", "static")]


async def _cancelled_at_its_shutdown_timeout(t: Tree, stuck: ActorRef, outcome: list[str]) -> None:
    """Shut down at time 0: ``stuck`` (a 2 s shutdown timeout) lives until exactly 2 s."""
    await t.clock.step(1.999)
    assert outcome == []
    assert stuck.alive
    await t.clock.step(0.001)
    assert outcome == ["cancelled"]
    assert t.sup.stopped.is_set()
    assert not stuck.alive


async def test_shutdown_timeout_cancels_a_child_stuck_in_stopping() -> None:
    """A child still in ``stopping`` after its shutdown timeout is cancelled."""
    log: list[tuple[str, str]] = []
    outcome: list[str] = []

    spec = SupervisorSpec(
        [ChildSpec(lambda: Stuck(log, "stuck", outcome), shutdown_timeout=2.0), child(log, "after")]
    )
    async with tree(spec) as t:
        stuck, _ = t.sup.children
        t.sup.shutdown()
        await settle()
        assert log[-1] == ("stopping", "after")
        await _cancelled_at_its_shutdown_timeout(t, stuck, outcome)


async def test_a_child_started_without_waiting_is_killed_after_its_shutdown_timeout(
    anyio_backend_name: str,
) -> None:
    """``start_child_nowait`` children (bare tasks on asyncio) obey the shutdown timeout too."""
    log: list[tuple[str, str]] = []
    outcome: list[str] = []

    async with tree(SupervisorSpec()) as t:
        stuck = t.sup.start_child_nowait(
            ChildSpec(lambda: Stuck(log, "d", outcome), shutdown_timeout=2.0)
        )
        # On asyncio the child runs as a bare task, outside the supervisor's task group.
        assert len(t.sup._bare) == (1 if anyio_backend_name == "asyncio" else 0)
        await settle()
        t.sup.shutdown()
        await settle()
        await _cancelled_at_its_shutdown_timeout(t, stuck, outcome)


async def test_a_child_started_without_waiting_is_restarted_and_cancelled_with_the_tree() -> None:
    """A crashing ``start_child_nowait`` child is restarted; cancelling the tree ends it."""
    log: list[tuple[str, str]] = []

    class Crashy(Recorder):
        async def on_receive(self, message: Any) -> Any:
            if message == "crash":
                raise RuntimeError("boom")
            return await super().on_receive(message)

    with anyio.CancelScope() as outer:
        async with tree(SupervisorSpec()) as t:
            ref = t.sup.start_child_nowait(ChildSpec(lambda: Crashy(log, "d"), backoff=NOW))
            await ref.tell("crash")
            await settle()
            assert ("restarted", "d") in log
            await ref.tell(1)
            await settle()
            assert ("got 1", "d") in log
            outer.cancel()
    assert ref.alive is False


class Quiet(Actor):
    """No ``started`` or ``stopping``: fit for a parked start. Counts its constructions."""

    made = 0

    def __init__(self, log: list[tuple[str, str]]) -> None:
        Quiet.made += 1
        self.log = log

    async def on_receive(self, message: Any) -> Any:
        self.log.append((f"got {message}", "q"))


def _quiet(log: list[tuple[str, str]]) -> ChildSpec:
    Quiet.made = 0
    return ChildSpec(lambda: Quiet(log), id="q", restart=Restart.TRANSIENT)


async def test_a_parked_child_starts_at_its_first_message(anyio_backend_name: str) -> None:
    """``parked=True``: on asyncio no task and no behaviour until a message arrives."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = t.sup.start_child_nowait(_quiet(log), parked=True)
        await settle()
        parked = anyio_backend_name == "asyncio"  # other backends start at once
        assert (len(t.sup._bare), Quiet.made) == ((0, 0) if parked else (0, 1))
        assert ref.alive
        assert t.runtime.lookup(ref.address) is ref
        await ref.tell("a")
        await ref.tell("b")
        await settle()
        assert log == [("got a", "q"), ("got b", "q")]
        assert Quiet.made == 1
        assert len(t.sup._bare) == (1 if parked else 0)


@pytest.mark.parametrize("how", ["stop", "drain"])
async def test_a_parked_child_told_to_stop_ends_without_ever_running(
    anyio_backend_name: str, how: str
) -> None:
    """Stopped or drained before any message, a parked child ends at once: no task, no
    behaviour, its address freed, the exit kind as if it had run."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = t.sup.start_child_nowait(_quiet(log), parked=True)
        await settle()
        if how == "stop":
            ref.stop()
        else:
            ref.drain()
        if anyio_backend_name == "asyncio":
            assert not ref.alive  # synchronously: nothing had to run
            assert Quiet.made == 0
            assert t.sup._bare == set()
        await ref.wait_stopped()
        assert ref._cell.termination is not None
        expected = ExitKind.STOPPED if how == "stop" else ExitKind.DRAINED
        assert ref._cell.termination.kind is expected
        assert t.sup.children == []
        assert t.runtime.lookup(ref.address) is None
        with pytest.raises(MailboxClosed):
            await ref.tell("late")
        assert log == []


@pytest.mark.parametrize("how", ["stop", "drain"])
async def test_a_parked_child_ending_unstarted_ends_as_a_run_one_would(how: str) -> None:
    """A parked child stopped or drained before any message tells its owner
    (``on_terminate``) and its watchers the same exit as if it had run, and keeps
    nothing that would call back into the supervisor."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = t.sup.start_child_nowait(_quiet(log), parked=True)
        cell = ref._cell
        watcher = t.runtime.create_cell(lambda: Quiet(log))
        watcher.watch(cell)
        ended: list[Exit] = []
        cell.on_terminate = ended.append
        if how == "stop":
            ref.stop()
        else:
            ref.drain()
        await ref.wait_stopped()
        expected = ExitKind.STOPPED if how == "stop" else ExitKind.DRAINED
        assert [e.kind for e in ended] == [expected]
        down = watcher.mailbox.get_nowait()
        assert isinstance(down, Envelope)
        assert isinstance(down.message, Down)
        assert down.message.address == ref.address
        assert cell.end_idle is None
        assert cell.mailbox._getter is None
        ref.drain()  # once ended, a second request does nothing
        ref.stop()
        assert [e.kind for e in ended] == [expected]
        assert t.sup.children == []


async def test_a_parked_child_woken_by_a_message_drains_through_its_mailbox(
    anyio_backend_name: str,
) -> None:
    """Once a message woke a parked child, a drain is a queued signal again: the
    message is handled first, then the child ends drained."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        ref = t.sup.start_child_nowait(_quiet(log), parked=True)
        ref.tell_nowait("a")
        assert ref._cell.end_idle is None
        ref.drain()
        await ref.wait_stopped()
        assert log == [("got a", "q")]
        assert ref._cell.termination == Exit(ExitKind.DRAINED)


async def test_a_parked_child_ends_with_its_supervisor(anyio_backend_name: str) -> None:
    """Shutting the supervisor down ends parked children too, without starting them."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec()) as t:
        refs = [t.sup.start_child_nowait(_quiet(log), parked=True) for _ in range(3)]
        await refs[0].tell("wake")
        await settle()
        t.sup.shutdown()
        await t.clock.run_until_idle()
        await settle()
        assert t.sup.stopped.is_set()
        assert not any(ref.alive for ref in refs)
        assert log == [("got wake", "q")]
        # On trio every child started at once.
        assert Quiet.made == (1 if anyio_backend_name == "asyncio" else 3)


async def test_shutdown_with_drain_lets_children_finish_their_mailboxes() -> None:
    """``shutdown(drain=True)`` lets each child handle what is queued before stopping."""
    log: list[tuple[str, str]] = []
    gate = anyio.Event()

    class Blocked(Recorder):
        async def on_receive(self, message: Any) -> Any:
            if message == "wait":
                await gate.wait()
            return await super().on_receive(message)

    async with tree(SupervisorSpec([ChildSpec(lambda: Blocked(log, "d"))])) as t:
        (ref,) = t.sup.children
        await ref.tell("wait")
        await settle()
        await ref.tell(1)
        await ref.tell(2)
        t.sup.shutdown(drain=True)
        gate.set()
        await settle()
        assert t.sup.stopped.is_set()
    assert [e for e in log if e[0].startswith("got")] == [
        ("got wait", "d"),
        ("got 1", "d"),
        ("got 2", "d"),
    ]
    assert ref._cell.termination is not None
    assert ref._cell.termination.kind is ExitKind.DRAINED


async def test_shutdown_is_idempotent() -> None:
    """Calling shutdown several times stops the supervisor once."""
    log: list[tuple[str, str]] = []
    async with tree(SupervisorSpec([child(log, "a")])) as t:
        t.sup.shutdown()
        t.sup.shutdown(drain=True)
        await settle()
        assert t.sup.stopped.is_set()
    assert hooks(log) == [("started", "a"), ("stopping", "a")]


async def test_supervisor_cleans_up_addresses_and_actors() -> None:
    """After shutdown, no actor, name or mailbox of the tree remains in the runtime."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "a", names=("a",)), SupervisorSpec([child(log, "b", names=("g",))])]
    )
    async with tree(spec) as t:
        assert t.runtime.statistics().addresses == 4
        assert t.runtime.statistics().actors == {"service": 2}
    stats = t.runtime.statistics()
    assert (stats.addresses, dict(stats.actors), stats.mailbox_messages) == (0, {}, 0)


# --- critical children and subtrees ------------------------------------------------------------


@asynccontextmanager
async def critical_tree(spec: SupervisorSpec) -> AsyncIterator[tuple[Tree, list[Any]]]:
    """Like :func:`tree`, with an ``on_critical`` handler that records what reaches it."""
    failures: list[Any] = []
    clock = FakeClock()
    runtime = Runtime(clock=clock, instrumentation=Counting())
    sup = Supervisor(runtime, spec, on_critical=failures.append)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        yield Tree(sup, runtime, clock, tg), failures
        sup.shutdown()
        await clock.run_until_idle()
        await settle()


async def test_a_service_past_its_intensity_is_counted_as_an_escalation() -> None:
    """A non-critical service that gives up stops alone, and is counted as an escalation."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "flaky", intensity=Intensity(1, 60.0)), child(log, "calm")], intensity=None
    )
    async with critical_tree(spec) as (t, failures):
        flaky, calm = t.sup.children
        await flaky.tell("boom")
        await settle()
        await flaky.tell("boom")
        await settle()
        assert not flaky.alive
        assert calm.alive
        assert failures == []
        assert t.instrumentation.events["escalated"] == 1


async def test_a_critical_service_past_its_intensity_reaches_on_critical() -> None:
    """A critical service that gives up hands a CriticalFailure, chained to its crash, to
    ``on_critical`` at once: its supervisor's own intensity and restart policy do not apply."""
    log: list[tuple[str, str]] = []
    spec = SupervisorSpec(
        [child(log, "feed", intensity=Intensity(1, 60.0), critical=True)],
        intensity=Intensity(100, 60.0),
    )
    async with critical_tree(spec) as (t, failures):
        (feed,) = t.sup.children
        await feed.tell("boom")
        await settle()
        assert failures == []  # one restart is allowed
        await feed.tell("boom")
        await settle()
        assert len(failures) == 1
        (failure,) = failures
        assert isinstance(failure, CriticalFailure)
        assert isinstance(failure, Escalation)
        assert failure.child == "feed"
        assert (failure.restarts, failure.within) == (2, 60.0)
        assert isinstance(failure.__cause__, RuntimeError)
        assert t.instrumentation.events["escalated"] == 1
        assert not feed.alive


async def test_a_critical_subtree_that_escalates_reaches_on_critical() -> None:
    """A nested critical supervisor that exceeds its own intensity is not restarted by its
    parent: the failure goes to ``on_critical``, and the escalation is counted once."""
    log: list[tuple[str, str]] = []
    inner = SupervisorSpec(
        [child(log, "a"), child(log, "b")],
        strategy=Strategy.ONE_FOR_ALL,
        intensity=Intensity(0, 5.0),
        id="pricing",
        critical=True,
    )
    async with critical_tree(SupervisorSpec([inner, child(log, "other")])) as (t, failures):
        (other,) = t.sup.children
        sub = t.sup._children  # the nested supervisor's own children
        nested = next(c.sup for c in sub if c.sup is not None)
        assert nested is not None
        first = nested.children[0]
        await first.tell("boom")
        await settle()
        assert [f.child for f in failures] == ["pricing"]
        assert isinstance(failures[0].__cause__, Escalation)
        assert t.instrumentation.events["escalated"] == 1
        assert not first.alive
        assert other.alive


async def test_a_non_critical_temporary_subtree_stops_alone() -> None:
    """A temporary nested supervisor that escalates stops with its children; its siblings run."""
    log: list[tuple[str, str]] = []
    inner = SupervisorSpec(
        [child(log, "a")], intensity=Intensity(0, 5.0), id="optional", restart=Restart.TEMPORARY
    )
    async with critical_tree(SupervisorSpec([inner, child(log, "other")])) as (t, failures):
        (other,) = t.sup.children
        nested = next(c.sup for c in t.sup._children if c.sup is not None)
        assert nested is not None
        (a,) = nested.children
        await a.tell("boom")
        await settle()
        assert failures == []
        assert nested.stopped.is_set()
        assert not a.alive
        assert other.alive
        assert t.instrumentation.events["escalated"] == 1


async def test_without_on_critical_a_critical_failure_escalates_to_the_top() -> None:
    """With no handler, a critical service's failure is raised from the top supervisor's run,
    through a non-critical parent that would otherwise restart its subtree."""
    log: list[tuple[str, str]] = []
    inner = SupervisorSpec([child(log, "feed", intensity=Intensity(0, 5.0), critical=True)])
    async with tree(SupervisorSpec([inner])) as t:
        nested = next(c.sup for c in t.sup._children if c.sup is not None)
        assert nested is not None
        await nested.children[0].tell("boom")
        await settle()
        assert isinstance(t.escalation, CriticalFailure)
        assert t.escalation.child == "feed"
