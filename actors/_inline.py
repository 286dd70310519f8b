"""Running a coroutine's first step outside its task, and handing the rest to the task.

Theory of operation: on asyncio, code that reacts to the network runs in
transport callbacks, outside any task. When the task that would normally run a
coroutine is idle, the callback can run the coroutine's first step itself, *on
that task's behalf*: :func:`step_as` makes the task the current one while the
step runs, so ``asyncio.current_task()``, and with it anyio's cancel scopes and
``sniffio``, see the same task as they would inside it. A step that finishes
without suspending costs no task switch at all. A step that suspends yields the
awaitable it waits on; :class:`Resume` then lets the task itself await the rest
of the coroutine, with that awaitable, as if it had run it from the start.

A task may also step aside for another (``aside``): a driver that reads in a
task of its own (an ASGI server's ``receive()``) begins the actor's step, and
the actor's send begins the writer's ``send()``, without a task switch.

This is asyncio-only: trio has no callbacks that run outside a task. It uses
``asyncio.tasks._enter_task``/``_leave_task``, private functions (the switch
of current task that asyncio's own eager tasks make since 3.12); a change
there fails ``tests/actors/test_inline.py``.
"""

from __future__ import annotations

import asyncio
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Resume", "Suspended", "TaskRunning", "step_as"]


class TaskRunning(Exception):
    """:func:`step_as` was called while a task runs: the step was not run."""


class Suspended:
    """A coroutine whose first step ran and suspended, waiting on ``yielded``."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded


def step_as(
    task: asyncio.Task[Any], coro: Coroutine[Any, Any, Any], *, aside: bool = False
) -> tuple[Any, Suspended | None]:
    """Run ``coro`` until it returns or first suspends, as if ``task`` were running it.

    Must be called outside any task (a transport callback), on ``task``'s loop;
    or, with ``aside``, from inside another task, which steps aside while the
    step runs and is the current task again after it (nothing yields to the
    loop in between: the step ends at its first suspension).

    Returns:
        ``(value, None)`` when the coroutine returned ``value``, or
        ``(None, suspended)`` when it suspended: the caller must hand
        ``suspended`` to ``task``, which awaits ``Resume(suspended)``.

    Raises:
        TaskRunning: a task is running: the step was not run and ``coro`` is closed.
        Exception: whatever the coroutine raised in that step.
    """
    loop = task.get_loop()
    running = asyncio.current_task(loop) if aside else None
    if running is not None:
        _leave_task(loop, running)
    try:
        try:
            _enter_task(loop, task)
        except RuntimeError:
            coro.close()
            raise TaskRunning from None
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value, None
        finally:
            _leave_task(loop, task)
    finally:
        if running is not None:
            _enter_task(loop, running)
    return None, Suspended(coro, yielded)


class Resume:
    """Awaits the rest of a coroutine that first ran, and suspended, outside this task.

    Every value the coroutine yields goes to the task's driver, every value or
    exception the driver sends back goes to the coroutine: the task runs it as
    if it had awaited it from the start.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, suspended: Suspended) -> None:
        self._coro = suspended.coro
        self._yielded = suspended.yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value = self._yielded
        while True:
            try:
                sent = yield value
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value
