"""Steps that begin outside the actor's task (``actors._inline``, ``Cell.step_inline``).

asyncio only, by nature: an inline step runs in a callback outside any task,
and trio has no such callbacks. Each test calls ``step_inline`` from a
``loop.call_soon`` callback, as a transport's ``data_received`` would.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from actors import Actor
from actors._actor import Cell, Exit, ExitKind
from actors._inline import Resume, TaskRunning, step_as
from actors._mailbox import Mailbox
from tests.actors.test_actor import Stage, stage

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """asyncio (with uvloop): the only backend with callbacks outside tasks."""
    return ("asyncio", {"use_uvloop": True})


async def in_callback(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a loop callback, outside any task, and return what it returned."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def callback() -> None:
        assert asyncio.current_task() is None
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon(callback)
    return await done


async def test_step_as_runs_a_coroutine_to_its_end_as_the_task() -> None:
    """A step that does not suspend returns its value; inside it, the task is current."""
    task = asyncio.current_task()
    assert task is not None
    seen: list[asyncio.Task[Any] | None] = []

    async def step() -> str:
        seen.append(asyncio.current_task())
        return "done"

    value, suspended = await in_callback(lambda: step_as(task, step()))
    assert (value, suspended) == ("done", None)
    assert seen == [task]


async def test_step_as_hands_the_rest_of_a_suspended_step_to_the_task() -> None:
    """A step that suspends is finished by ``Resume`` in the task, with the right result."""
    task = asyncio.current_task()
    assert task is not None
    gate = anyio.Event()

    async def step() -> str:
        with anyio.fail_after(10):  # a cancel scope entered outside the task, on its behalf
            await gate.wait()
        return "resumed"

    value, suspended = await in_callback(lambda: step_as(task, step()))
    assert value is None
    assert suspended is not None
    gate.set()
    assert await Resume(suspended) == "resumed"


async def test_step_as_refuses_to_run_inside_a_task() -> None:
    """Called while a task runs, the step is not run: ``TaskRunning``, the coroutine closed."""
    task = asyncio.current_task()
    assert task is not None
    ran: list[bool] = []

    async def step() -> None:
        ran.append(True)

    coro = step()
    with pytest.raises(TaskRunning):
        step_as(task, coro)
    assert ran == []
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # closed, never started


async def test_step_as_aside_runs_the_step_as_the_task_from_inside_another() -> None:
    """With ``aside``, the running task steps aside for the step, and is current again after."""
    me = asyncio.current_task()
    gate = anyio.Event()

    async def parked() -> None:
        await gate.wait()

    other = asyncio.create_task(parked())
    await asyncio.sleep(0)  # the other task waits for the gate
    seen: list[asyncio.Task[Any] | None] = []

    async def step() -> str:
        seen.append(asyncio.current_task())
        return "done"

    assert step_as(other, step(), aside=True) == ("done", None)
    assert seen == [other]
    assert asyncio.current_task() is me
    gate.set()
    await other


def test_control_signals_can_jump_the_control_lane() -> None:
    """``put_control(first=True)`` goes ahead of the control signals already queued."""
    mailbox: Mailbox[str] = Mailbox()
    mailbox.put_nowait("message")
    mailbox.put_control("stop")
    mailbox.put_control("resume", first=True)
    assert [mailbox.get_nowait() for _ in range(3)] == ["resume", "stop", "message"]


class Waiter(Actor):
    """``hold`` waits for ``gate``; every message is logged when its step ends."""

    def __init__(self, log: list[Any], gate: anyio.Event) -> None:
        self.log = log
        self.gate = gate

    async def on_receive(self, message: Any) -> None:
        try:
            if message == "hold":
                await self.gate.wait()
            if message == "boom":
                raise RuntimeError("boom")
        finally:
            self.log.append(message)


async def parked(st: Stage, log: list[Any], gate: anyio.Event) -> Cell:
    ref = await st.spawn(lambda: Waiter(log, gate))
    cell = ref._cell
    await anyio.wait_all_tasks_blocked()
    assert cell._parked is not None
    return cell


async def test_an_idle_actor_runs_the_step_inline_and_stays_idle() -> None:
    """A step that does not suspend is done when ``step_inline`` returns; the next one too."""
    log: list[Any] = []
    async with stage() as st:
        cell = await parked(st, log, anyio.Event())
        assert await in_callback(lambda: cell.step_inline("one"))
        assert log == ["one"]
        assert await in_callback(lambda: cell.step_inline("two"))
        assert log == ["one", "two"]
        assert cell.inline_steps == 2


async def test_a_suspended_inline_step_goes_before_queued_messages_and_signals() -> None:
    """While a step begun inline waits, later messages queue behind it, a stop too."""
    log: list[Any] = []
    gate = anyio.Event()
    async with stage() as st:
        cell = await parked(st, log, gate)
        ref = cell.ref

        def begin() -> bool:
            taken: bool = cell.step_inline("hold")
            assert not cell.step_inline("refused")  # busy: the caller queues it
            ref.tell_nowait("queued")
            return taken

        assert await in_callback(begin)
        await anyio.wait_all_tasks_blocked()
        assert log == []
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert log == ["hold", "queued"]


async def test_a_crash_in_an_inline_step_crashes_the_incarnation() -> None:
    """The task ends the incarnation with the step's error; its message is a dead letter."""
    log: list[Any] = []
    async with stage() as st:
        cell = await parked(st, log, anyio.Event())
        assert await in_callback(lambda: cell.step_inline("boom"))
        await anyio.wait_all_tasks_blocked()
        assert st.exits(cell.ref) == [ExitKind.CRASHED]
        assert st.letters_for("failed") == ["boom"]
        assert cell.restarts == 1


async def test_a_step_begun_inline_ends_with_its_actor() -> None:
    """Terminated before the task could finish it: the step is closed and dead-lettered."""
    log: list[Any] = []
    gate = anyio.Event()
    async with stage() as st:
        cell = await parked(st, log, gate)

        def begin_then_end() -> None:
            assert cell.step_inline("hold")
            cell.terminate(Exit(ExitKind.KILLED))

        await in_callback(begin_then_end)
        assert log == ["hold"]  # its finally ran: the coroutine was closed
        assert st.letters_for("stopped") == ["hold"]
