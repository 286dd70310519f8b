"""Tests for actors: lifecycle hooks, tell and ask, worker-thread handlers, dead letters."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from actors import (
    Actor,
    ActorRef,
    ActorRestarted,
    ActorStopped,
    AskFailed,
    AskTimeout,
    DeadLetter,
    FakeClock,
    MailboxClosed,
    MailboxConfig,
    MailboxFull,
    OverflowPolicy,
    Runtime,
)
from actors._actor import Cell, Exit, ExitKind
from supervisor import ActorSystem

pytestmark = pytest.mark.anyio


class Driver:
    """Runs one cell's incarnations as a one-for-one supervisor does, restarting at once.

    Crashes restart the actor (up to ``max_crashes``); any other exit ends it for good.
    Kept here so that the actor tests need nothing from :mod:`supervisor`.
    """

    def __init__(self, cell: Cell, max_crashes: int) -> None:
        self.cell = cell
        self.max_crashes = max_crashes
        self.exits: list[Exit] = []
        self.scope = anyio.CancelScope()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run incarnations until one ends without crashing, then terminate the cell."""
        error: Exception | None = None
        started = False

        def on_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        exit_ = Exit(ExitKind.KILLED)
        with self.scope:
            while True:
                exit_ = await self.cell.run_incarnation(error, on_started=on_started)
                self.exits.append(exit_)
                crashes = sum(1 for e in self.exits if e.kind is ExitKind.CRASHED)
                if exit_.kind is not ExitKind.CRASHED or crashes > self.max_crashes:
                    break
                error = exit_.error
        if self.scope.cancelled_caught:
            self.exits.append(exit_)
        self.cell.terminate(exit_)
        if not started:
            task_status.started()


class Stage:
    """A runtime on a fake clock plus a task group that runs actors."""

    def __init__(self, tg: TaskGroup) -> None:
        self.clock = FakeClock()
        self.runtime = Runtime(clock=self.clock)
        self.tg = tg
        self.drivers: dict[ActorRef, Driver] = {}
        self.letters: list[DeadLetter] = []
        self.runtime.dead_letters.subscribe(self.letters.append)

    async def spawn(
        self,
        factory: Callable[[], Actor],
        *,
        mailbox: MailboxConfig | None = None,
        max_crashes: int = 100,
    ) -> ActorRef:
        """Start an actor and wait until its ``started`` hook has returned."""
        cell = self.runtime.create_cell(factory, mailbox=mailbox)
        driver = Driver(cell, max_crashes)
        self.drivers[cell.ref] = driver
        await self.tg.start(driver.run)
        return cell.ref

    def exits(self, ref: ActorRef) -> list[ExitKind]:
        """How each incarnation of ``ref`` ended so far."""
        return [e.kind for e in self.drivers[ref].exits]

    def letters_for(self, reason: str) -> list[Any]:
        """Messages that became dead letters for ``reason``."""
        return [letter.message for letter in self.letters if letter.reason == reason]


@asynccontextmanager
async def stage() -> AsyncIterator[Stage]:
    """Yield a stage; on exit stop every actor still alive and wait for it."""
    async with anyio.create_task_group() as tg:
        st = Stage(tg)
        yield st
        for ref in st.drivers:
            ref.stop()
        await anyio.wait_all_tasks_blocked()
        # Anything still stuck (e.g. a handler that never returns) is cancelled.
        tg.cancel_scope.cancel()


class Recorder(Actor):
    """Records every hook and message in a shared list; ``"boom"`` crashes it."""

    def __init__(self, log: list[Any], name: str = "r") -> None:
        self.log = log
        self.name = name

    async def on_start(self) -> None:
        self.log.append(("started", self.name))

    async def on_restart(self, error: Exception) -> None:
        self.log.append(("restarted", self.name, error))

    async def on_stop(self) -> None:
        self.log.append(("stopping", self.name))

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        if message == "exit":
            self.context.stop()
        self.log.append(("receive", self.name, message))
        return ("echo", message)


class Gate(Actor):
    """Blocks on a shared event while handling ``"wait"``; crashes on ``"fail"`` after it."""

    def __init__(self, gate: anyio.Event, handled: list[Any]) -> None:
        self.gate = gate
        self.handled = handled

    async def on_receive(self, message: Any) -> Any:
        if message in ("wait", "fail"):
            await self.gate.wait()
        if message == "fail":
            raise ValueError("failed mid-request")
        self.handled.append(message)
        return message


# --- lifecycle ---------------------------------------------------------------------------


async def test_hooks_run_in_order_started_restarted_stopping() -> None:
    """A crash calls ``restarted(exc)`` on the new behaviour; a stop calls ``stopping``."""
    log: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder(log))
        assert log == [("started", "r")]
        await ref.tell("boom")
        await ref.tell(1)
        await anyio.wait_all_tasks_blocked()
        ref.stop()
        await ref.wait_stopped()
    assert [entry[0] for entry in log] == ["started", "restarted", "receive", "stopping"]
    error = log[1][2]
    assert isinstance(error, RuntimeError)
    assert str(error) == "boom"
    assert st.exits(ref) == [ExitKind.CRASHED, ExitKind.STOPPED]


async def test_crash_does_not_call_stopping() -> None:
    """A behaviour that raises is not given its ``stopping`` hook."""
    log: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder(log), max_crashes=0)
        await ref.tell("boom")
        await ref.wait_stopped()
    assert log == [("started", "r")]
    termination = ref._cell.termination
    assert termination is not None
    assert termination.kind is ExitKind.CRASHED
    assert isinstance(termination.error, RuntimeError)


async def test_default_restarted_hook_calls_started() -> None:
    """Without a ``restarted`` override, a restarted behaviour runs ``started`` again."""
    starts: list[int] = []

    class Plain(Actor):
        async def on_start(self) -> None:
            starts.append(self.context.restarts)

        async def on_receive(self, message: Any) -> None:
            raise RuntimeError(message)

    async with stage() as st:
        ref = await st.spawn(Plain)
        await ref.tell("x")
        await ref.tell("y")
        await anyio.wait_all_tasks_blocked()
        assert starts == [0, 1, 2]


async def test_crash_in_started_counts_as_a_crash() -> None:
    """An exception in ``started`` ends the incarnation as CRASHED before any message."""

    class Broken(Actor):
        async def on_start(self) -> None:
            raise KeyError("no config")

    async with stage() as st:
        ref = await st.spawn(Broken, max_crashes=0)
        await ref.wait_stopped()
        assert st.exits(ref) == [ExitKind.CRASHED]


async def test_crash_in_stopping_is_reported_as_a_crash() -> None:
    """An exception in ``stopping`` turns a clean stop into a CRASHED exit."""

    class BadStop(Actor):
        async def on_stop(self) -> None:
            raise OSError("cannot flush")

    async with stage() as st:
        ref = await st.spawn(BadStop, max_crashes=0)
        ref.stop()
        await ref.wait_stopped()
        assert st.exits(ref) == [ExitKind.CRASHED]


async def test_default_receive_crashes_with_not_implemented() -> None:
    """An Actor that does not override ``receive`` crashes on its first message."""
    async with stage() as st:
        ref = await st.spawn(Actor, max_crashes=0)
        with pytest.raises(ActorRestarted) as info:
            await ref.ask("hello")
        assert "NotImplementedError" in info.value.error


async def test_context_stop_is_a_normal_exit_after_the_current_message() -> None:
    """``context.stop()`` lets the current message finish, then the incarnation EXITED."""
    log: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder(log))
        assert await ref.ask("exit") == ("echo", "exit")
        await ref.wait_stopped()
        assert st.exits(ref) == [ExitKind.EXITED]
    assert log == [("started", "r"), ("receive", "r", "exit"), ("stopping", "r")]


async def test_context_describes_the_actor() -> None:
    """The context gives the actor its own address, a reference and its restart count."""
    seen: list[tuple[str, ActorRef, int]] = []

    class Introspect(Actor):
        async def on_receive(self, message: Any) -> None:
            ctx = self.context
            seen.append((ctx.address, ctx.self, ctx.restarts))
            if message == "crash":
                raise RuntimeError

    async with stage() as st:
        ref = await st.spawn(Introspect)
        await ref.tell("crash")
        await ref.tell("look")
        await anyio.wait_all_tasks_blocked()
        assert seen == [(ref.address, ref, 0), (ref.address, ref, 1)]
        assert seen[0][1].address.startswith("actor:")


# --- tell ------------------------------------------------------------------------------


async def test_tell_never_waits_for_processing() -> None:
    """``tell`` returns while the target is still busy with an earlier message."""
    gate = anyio.Event()
    handled: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, handled))
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        for i in range(3):
            await ref.tell(i)
        ref.tell_nowait(3)
        assert handled == []
        assert ref.statistics().depth == 4
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert handled == ["wait", 0, 1, 2, 3]


async def test_messages_are_processed_one_at_a_time_in_order() -> None:
    """Messages from one sender are handled in the order sent, never two at once."""
    active = 0
    overlap = False
    order: list[int] = []

    class Serial(Actor):
        async def on_receive(self, message: int) -> None:
            nonlocal active, overlap
            active += 1
            overlap = overlap or active > 1
            await anyio.lowlevel.checkpoint()
            order.append(message)
            active -= 1

    async with stage() as st:
        ref = await st.spawn(Serial)
        for i in range(200):
            await ref.tell(i)
        await anyio.wait_all_tasks_blocked()
    assert order == list(range(200))
    assert not overlap


async def test_busy_actor_does_not_starve_others() -> None:
    """An actor with a long queue and a handler that never awaits still lets others run."""
    order: list[str] = []

    class Busy(Actor):
        async def on_receive(self, message: Any) -> None:
            order.append("busy")

    class Quick(Actor):
        async def on_receive(self, message: Any) -> None:
            order.append("quick")

    async with stage() as st:
        busy = await st.spawn(Busy, mailbox=MailboxConfig(capacity=1000))
        quick = await st.spawn(Quick)
        for _ in range(1000):
            busy.tell_nowait("work")
        quick.tell_nowait("ping")
        await anyio.wait_all_tasks_blocked()
    assert order.index("quick") < len(order) - 1
    assert order.count("busy") == 1000


async def test_tell_to_a_stopped_actor_raises_mailbox_closed() -> None:
    """Once an actor has stopped, its reference is dead and sends raise MailboxClosed."""
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder([]))
        assert ref.alive
        ref.stop()
        await ref.wait_stopped()
        assert not ref.alive
        with pytest.raises(MailboxClosed):
            await ref.tell("late")
        with pytest.raises(MailboxClosed):
            ref.tell_nowait("late")
        with pytest.raises(MailboxClosed):
            await ref.ask("late")
        ref.stop()  # a no-op once stopped
        ref.drain()


async def test_tell_to_a_full_reject_mailbox_raises_and_dead_letters() -> None:
    """A refused tell raises MailboxFull and the message becomes a ``dropped`` dead letter."""
    gate = anyio.Event()
    async with stage() as st:
        ref = await st.spawn(
            lambda: Gate(gate, []), mailbox=MailboxConfig(1, OverflowPolicy.REJECT)
        )
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        await ref.tell("queued")
        with pytest.raises(MailboxFull):
            await ref.tell("refused")
        assert st.letters_for("dropped") == ["refused"]
        assert st.letters[-1].detail == "reject"
        gate.set()


async def test_ref_is_hashable_and_compares_by_actor() -> None:
    """Two references to one actor are equal and hash alike; different actors differ."""
    async with stage() as st:
        a = await st.spawn(lambda: Recorder([]))
        b = await st.spawn(lambda: Recorder([]))
        assert a == a._cell.ref
        assert a != b
        assert a != "not a ref"
        assert len({a, a._cell.ref, b}) == 2
        assert a.address in repr(a)


# --- ask -------------------------------------------------------------------------------


async def test_ask_returns_the_reply() -> None:
    """``ask`` returns what ``receive`` returned for that message."""
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder([]))
        assert await ref.ask(42) == ("echo", 42)
        assert await st.runtime.ask(ref.address, "hi") == ("echo", "hi")


async def test_ask_timeout_on_fake_clock() -> None:
    """An unanswered ``ask`` raises AskTimeout once its timeout elapses, not before."""
    gate = anyio.Event()
    errors: list[AskTimeout] = []

    async def asker(ref: ActorRef) -> None:
        with pytest.raises(AskTimeout) as info:
            await ref.ask("wait", timeout=2.0)
        errors.append(info.value)

    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, []))
        st.tg.start_soon(asker, ref)
        await anyio.wait_all_tasks_blocked()
        await st.clock.step(1.999)
        assert errors == []
        await st.clock.step(0.001)
        assert len(errors) == 1
        assert (errors[0].address, errors[0].timeout) == (ref.address, 2.0)
        assert isinstance(errors[0], AskFailed)
        gate.set()


async def test_ask_fails_at_once_when_the_target_crashes_mid_request() -> None:
    """A crash while handling the request fails the ask with ActorRestarted, without waiting."""
    gate = anyio.Event()
    errors: list[ActorRestarted] = []

    async def asker(ref: ActorRef) -> None:
        with pytest.raises(ActorRestarted) as info:
            await ref.ask("fail", timeout=3600.0)
        errors.append(info.value)

    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, []))
        st.tg.start_soon(asker, ref)
        await anyio.wait_all_tasks_blocked()
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert st.clock.now() == 0.0
        assert len(errors) == 1
        assert errors[0].address == ref.address
        assert "failed mid-request" in errors[0].error
        # The failed request became a dead letter and the actor lives on.
        assert st.letters_for("failed") == ["fail"]
        assert ref.alive
        assert await ref.ask("after") == "after"


async def test_queued_asks_fail_with_actor_stopped_when_the_target_stops() -> None:
    """Requests still queued when the target stops fail at once with ActorStopped."""
    gate = anyio.Event()
    outcomes: dict[str, Any] = {}

    async def asker(ref: ActorRef, message: str) -> None:
        try:
            outcomes[message] = await ref.ask(message, timeout=3600.0)
        except ActorStopped as exc:
            outcomes[message] = exc

    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, []))
        st.tg.start_soon(asker, ref, "wait")
        await anyio.wait_all_tasks_blocked()
        st.tg.start_soon(asker, ref, "queued-1")
        st.tg.start_soon(asker, ref, "queued-2")
        await anyio.wait_all_tasks_blocked()
        ref.stop()
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert st.clock.now() == 0.0
        assert len(outcomes) == 3
    assert outcomes.pop("wait") == "wait"
    assert all(isinstance(o, ActorStopped) and o.address == ref.address for o in outcomes.values())
    assert sorted(st.letters_for("stopped")) == ["queued-1", "queued-2"]


async def test_ask_whose_request_is_dropped_fails_at_once_with_mailbox_full() -> None:
    """An ask evicted by ``drop_oldest`` fails at once instead of waiting for its timeout."""
    gate = anyio.Event()
    errors: list[MailboxFull] = []

    async def asker(ref: ActorRef) -> None:
        with pytest.raises(MailboxFull) as info:
            await ref.ask("evicted", timeout=3600.0)
        errors.append(info.value)

    async with stage() as st:
        ref = await st.spawn(
            lambda: Gate(gate, []), mailbox=MailboxConfig(1, OverflowPolicy.DROP_OLDEST)
        )
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        st.tg.start_soon(asker, ref)
        await anyio.wait_all_tasks_blocked()
        await ref.tell("newer")  # evicts the queued request
        await anyio.wait_all_tasks_blocked()
        assert st.clock.now() == 0.0
        assert len(errors) == 1
        assert (errors[0].address, errors[0].policy) == (ref.address, "drop_oldest")
        assert st.letters_for("dropped") == ["evicted"]
        gate.set()


async def test_ask_fails_with_actor_stopped_when_the_handler_is_cancelled() -> None:
    """A request whose handler is cancelled (the actor is killed) fails with ActorStopped."""
    gate = anyio.Event()
    errors: list[ActorStopped] = []

    async def asker(ref: ActorRef) -> None:
        with pytest.raises(ActorStopped):
            await ref.ask("wait", timeout=None)
        errors.append(ActorStopped(ref.address))

    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, []))
        st.tg.start_soon(asker, ref)
        await anyio.wait_all_tasks_blocked()
        st.drivers[ref].scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert len(errors) == 1
        assert not ref.alive
        assert st.exits(ref) == [ExitKind.KILLED]


# --- worker threads ---------------------------------------------------------------------


async def test_plain_def_hooks_run_in_a_worker_thread() -> None:
    """``def`` hooks and handlers run off the event loop thread; ``async def`` ones on it."""
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}

    class Threaded(Actor):
        def on_start(self) -> None:  # type: ignore[override]
            threads["started"] = threading.get_ident()

        def on_receive(self, message: Any) -> Any:
            threads["receive"] = threading.get_ident()
            return message * 2

        def on_stop(self) -> None:  # type: ignore[override]
            threads["stopping"] = threading.get_ident()

    class OnLoop(Actor):
        async def on_receive(self, message: Any) -> Any:
            threads["async"] = threading.get_ident()
            return message

    async with stage() as st:
        ref = await st.spawn(Threaded)
        assert await ref.ask(21) == 42
        assert await (await st.spawn(OnLoop)).ask(0) == 0
        ref.stop()
        await ref.wait_stopped()
    assert threads["async"] == loop_thread
    for hook in ("started", "receive", "stopping"):
        assert threads[hook] != loop_thread, hook


async def test_blocking_def_handler_does_not_block_other_actors() -> None:
    """While one actor blocks its worker thread, another actor still answers."""
    release = threading.Event()
    entered = anyio.Event()
    token = anyio.lowlevel.current_token()

    class Blocker(Actor):
        def on_receive(self, message: Any) -> Any:
            anyio.from_thread.run_sync(entered.set, token=token)
            # The deadline is a deadlock guard only; the test sets the event itself.
            assert release.wait(timeout=30)
            return "released"

    async with stage() as st:
        blocker = await st.spawn(Blocker)
        other = await st.spawn(lambda: Recorder([]))
        results: list[Any] = []

        async def ask_blocker() -> None:
            results.append(await blocker.ask("block", timeout=None))

        st.tg.start_soon(ask_blocker)
        await entered.wait()
        # The blocker's thread is stuck in receive; the event loop is not.
        assert await other.ask("ping") == ("echo", "ping")
        assert results == []
        release.set()
        await anyio.wait_all_tasks_blocked()
        while not results:  # the worker thread may finish after the loop went idle
            await anyio.lowlevel.checkpoint()
        assert results == ["released"]


# --- dead letters, stop and drain ---------------------------------------------------------


async def test_failed_message_becomes_a_dead_letter_and_is_not_retried() -> None:
    """The message whose handler raised is a ``failed`` dead letter, handled only once."""
    log: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder(log))
        await ref.tell("boom")
        await ref.tell("next")
        await anyio.wait_all_tasks_blocked()
    (letter,) = [letter for letter in st.letters if letter.reason == "failed"]
    assert (letter.address, letter.message) == (ref.address, "boom")
    assert "RuntimeError" in letter.detail
    assert ("receive", "r", "next") in log
    assert st.runtime.statistics().dead_letters["failed"] == 1


async def test_messages_left_on_stop_become_stopped_dead_letters() -> None:
    """Messages still queued when the actor stops are ``stopped`` dead letters, not handled."""
    gate = anyio.Event()
    handled: list[Any] = []
    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, handled))
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        for i in range(3):
            await ref.tell(i)
        ref.stop()
        gate.set()
        await ref.wait_stopped()
    assert handled == ["wait"]
    assert st.letters_for("stopped") == [0, 1, 2]
    assert {letter.detail for letter in st.letters} == {"stopped"}
    assert st.exits(ref) == [ExitKind.STOPPED]


async def test_stop_bypasses_a_full_mailbox() -> None:
    """``stop`` reaches an actor whose mailbox is full."""
    gate = anyio.Event()
    async with stage() as st:
        ref = await st.spawn(lambda: Gate(gate, []), mailbox=MailboxConfig(2))
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        with pytest.raises(MailboxFull):
            ref.tell_nowait(3)
        ref.stop()
        gate.set()
        await ref.wait_stopped()
        assert st.exits(ref) == [ExitKind.STOPPED]


async def test_drain_handles_everything_queued_then_stops() -> None:
    """``drain`` lets the actor finish its mailbox, call ``stopping`` and end DRAINED."""
    gate = anyio.Event()
    handled: list[Any] = []
    stopped: list[bool] = []

    class Drainer(Gate):
        async def on_stop(self) -> None:
            stopped.append(True)

    async with stage() as st:
        ref = await st.spawn(lambda: Drainer(gate, handled))
        await ref.tell("wait")
        await anyio.wait_all_tasks_blocked()
        for i in range(5):
            await ref.tell(i)
        ref.drain()
        assert ref.alive
        gate.set()
        await ref.wait_stopped()
    assert handled == ["wait", 0, 1, 2, 3, 4]
    assert stopped == [True]
    assert st.letters == []
    assert st.exits(ref) == [ExitKind.DRAINED]


async def test_drain_of_an_idle_actor_stops_it() -> None:
    """Draining an actor with an empty mailbox stops it at once."""
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder([]))
        ref.drain()
        await ref.wait_stopped()
        assert st.exits(ref) == [ExitKind.DRAINED]


async def test_terminate_is_idempotent_and_frees_the_address() -> None:
    """Terminating twice keeps the first exit; the address no longer resolves."""
    async with stage() as st:
        ref = await st.spawn(lambda: Recorder([]))
        cell = ref._cell
        ref.stop()
        await ref.wait_stopped()
        cell.terminate(Exit(ExitKind.CRASHED, RuntimeError()))
        assert cell.termination == Exit(ExitKind.STOPPED)
        assert st.runtime.lookup(ref.address) is None
        assert cell.behaviour is None


# --- hook names and messaging oneself ----------------------------------------------------------


def test_the_old_hook_names_still_work_with_a_deprecation_warning() -> None:
    """A class defining started/receive/stopping/restarted warns once per hook at creation,
    and the old methods serve as the new hooks."""
    with pytest.warns(DeprecationWarning, match="is deprecated: name it on_") as caught:

        class OldStyle(Actor):
            async def started(self) -> None:
                pass

            async def receive(self, message: Any) -> Any:
                return message

            async def stopping(self) -> None:
                pass

            async def restarted(self, error: Exception) -> None:
                pass

    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "OldStyle.receive() is deprecated: name it on_receive() (same arguments, same meaning)",
        "OldStyle.restarted() is deprecated: name it on_restart() (same arguments, same meaning)",
        "OldStyle.started() is deprecated: name it on_start() (same arguments, same meaning)",
        "OldStyle.stopping() is deprecated: name it on_stop() (same arguments, same meaning)",
    ]
    assert OldStyle.on_start is OldStyle.__dict__["started"]
    assert OldStyle.on_receive is OldStyle.__dict__["receive"]
    assert OldStyle.on_stop is OldStyle.__dict__["stopping"]
    assert OldStyle.on_restart is OldStyle.__dict__["restarted"]


async def test_an_old_style_actor_runs_its_old_hooks() -> None:
    """The renamed hooks of a deprecated class are the ones the runtime calls."""
    log: list[str] = []
    with pytest.warns(DeprecationWarning, match="is deprecated: name it on_"):

        class OldStyle(Actor):
            async def started(self) -> None:
                log.append("started")

            async def receive(self, message: Any) -> Any:
                return f"got {message}"

    async with ActorSystem() as system:
        ref = await system.spawn(OldStyle)
        assert await ref.ask("x") == "got x"
    assert log == ["started"]


async def test_an_actor_messages_itself_with_tell_self() -> None:
    """tell_self queues a message behind those already in the actor's own mailbox."""
    log: list[Any] = []

    class Looping(Actor):
        async def on_receive(self, message: Any) -> Any:
            log.append(message)
            if isinstance(message, int) and message < 3:
                self.tell_self(message + 1)
            return None

    async with ActorSystem() as system:
        ref = await system.spawn(Looping)
        ref.tell_nowait(0)
        ref.tell_nowait("after zero")  # queued before the actor runs again
        await anyio.wait_all_tasks_blocked()
    assert log == [0, "after zero", 1, 2, 3]
