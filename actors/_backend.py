"""Backend primitives resolved once, not per call.

``anyio.Event()`` and ``anyio.lowlevel.checkpoint()`` look the running backend
up on every call (through sniffio). On a mailbox's hot path that lookup costs
more than the operation itself, so mailboxes resolve the backend's own event
class and checkpoint once, when they are created inside the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

import anyio
import sniffio

__all__ = ["Primitives", "Waiter", "primitives"]


class Waiter(Protocol):
    """A one-shot event: what mailboxes and supervisors wait on."""

    def set(self) -> None:
        """Wake every waiter, now and later."""
        ...

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        ...

    async def wait(self) -> None:
        """Wait until :meth:`set` is called (a checkpoint)."""
        ...


class _FutureWaiter:
    """A one-shot event on asyncio built on a bare future, for ONE waiter at a time.

    ``asyncio.Event`` allocates a waiter deque (~760 bytes) per instance; an
    idle actor holds one or two of these, so a future (created only while
    someone waits) keeps idle actors several times smaller. A cancelled wait
    cancels the future; the next wait makes a new one.
    """

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._set = False

    def set(self) -> None:
        self._set = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await asyncio.sleep(0)
            return
        future = self._future
        if future is None or future.done():
            future = self._future = asyncio.get_running_loop().create_future()
        await future


class Primitives(NamedTuple):
    """The running backend's checkpoint and event constructor."""

    checkpoint: Callable[[], Awaitable[None]]
    event: Callable[[], Waiter]


_CACHE: dict[str, Primitives] = {}


def primitives() -> Primitives:
    """Return the primitives of the running backend (anyio's generic ones if unknown)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return Primitives(anyio.lowlevel.checkpoint, anyio.Event)  # outside a loop: generic
    cached = _CACHE.get(library)
    if cached is None:
        event_class: Callable[[], Waiter] = type(anyio.Event())
        checkpoint: Callable[[], Awaitable[None]]
        if library == "asyncio":
            # What anyio's asyncio backend does for a checkpoint.
            checkpoint = functools.partial(asyncio.sleep, 0)
            event_class = _FutureWaiter
        elif library == "trio":
            import trio

            checkpoint = trio.lowlevel.checkpoint
            event_class = trio.Event
        else:  # pragma: no cover - another anyio backend
            checkpoint = anyio.lowlevel.checkpoint
        cached = _CACHE[library] = Primitives(checkpoint, event_class)
    return cached
