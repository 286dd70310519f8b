"""Look at the tasks of the running event loop, on asyncio and on trio."""

from __future__ import annotations

import asyncio

import anyio
import sniffio


def live_tasks() -> int:
    """How many tasks the event loop runs now (asyncio, or trio's whole task tree)."""
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())
    import trio  # only when trio runs the test: asyncio runs need not import it

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


async def settle() -> None:
    """Let every task run until all are blocked (restarts with no delay included).

    Twice: on asyncio a task group learns that a child finished through a
    done-callback, which ``wait_all_tasks_blocked`` cannot see as pending work.
    """
    await anyio.wait_all_tasks_blocked()
    await anyio.wait_all_tasks_blocked()
