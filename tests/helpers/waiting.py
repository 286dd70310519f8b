"""Wait for a condition in a test without sleeping for a fixed time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

T = TypeVar("T")


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds, checking every few milliseconds (no event to wait on).

    Use it when the condition changes outside the event loop (in a worker
    thread, another process or the kernel), where yielding alone would spin.
    """
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - a condition without an event
            await anyio.sleep(0.005)


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded; no real sleep).

    Use it when only tasks of this event loop change the condition.
    """
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.lowlevel.checkpoint()


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking client call in a worker thread, off the server's event loop."""
    return await anyio.to_thread.run_sync(fn, *args)
