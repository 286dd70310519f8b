"""Paced drain: a graceful shutdown closes connections in batches spread over a window.

Closing every connection at the same moment sends every client back at the same
moment, to whichever instance is left. Like Phoenix's socket drainer, the
drain here takes the connections open when the listeners closed, shuffles them
(so which client leaves first is random, not the order they arrived in) and
drains them in batches of at most ``drain_batch_size``, evenly spaced across
``drain_window`` seconds (clamped to the drain timeout): batch ``i`` of ``n``
starts ``i * window / n`` seconds in. A server with at most one batch of
connections drains them all at once, as without pacing. Each drained
connection finishes its mailbox and closes with 1001, as before; the drain
deadline still bounds the whole.

Time is read from the server's :class:`~actors.Clock`, so tests drive the
batches with a ``FakeClock``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol, TypeVar

import anyio
import structlog

from actors import Clock

_log = structlog.get_logger("wsup.server")

# Who goes in which batch only needs to be unpredictable enough to spread clients.
_shuffle = random.Random().shuffle


class Drainable(Protocol):
    """What the drain needs of a connection."""

    def drain(self) -> None:
        """Start draining (finish the mailbox, flush, close)."""


C = TypeVar("C", bound=Drainable)
T = TypeVar("T")


def plan(count: int, *, window: float, batch_size: int, timeout: float) -> tuple[int, float]:
    """Return how many batches drain ``count`` connections, and the seconds between them.

    ``window`` is clamped to ``timeout``; one batch (interval 0) when pacing is
    off (``window`` 0) or the connections fit in one batch.
    """
    window = min(window, timeout)
    batches = max(1, -(-count // batch_size))
    if window <= 0 or batches == 1:
        return 1, 0.0
    return batches, window / batches


def split(items: Sequence[T], batches: int) -> list[list[T]]:
    """Split ``items`` into ``batches`` consecutive groups whose sizes differ by at most one."""
    size, extra = divmod(len(items), batches)
    groups: list[list[T]] = []
    start = 0
    for i in range(batches):
        end = start + size + (1 if i < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups


async def drain_paced(
    connections: Collection[C],
    *,
    clock: Clock,
    window: float,
    batch_size: int,
    timeout: float,
    all_closed: anyio.Event,
) -> tuple[int, int]:
    """Drain a snapshot of ``connections`` in shuffled batches across the window.

    ``connections`` is the live set: a batch log line says how many are still
    open. Returns early once ``all_closed`` is set (every client left before its
    turn). Run it under the drain deadline's cancel scope.

    Returns:
        ``(batches, drained)``: how many batches ran and how many connections they held.
    """
    order = list(connections)
    _shuffle(order)
    batches, interval = plan(len(order), window=window, batch_size=batch_size, timeout=timeout)
    start = clock.now()
    ran = drained = 0
    for index, group in enumerate(split(order, batches)):
        if index:
            with clock.move_on_after(start + index * interval - clock.now()):
                await all_closed.wait()
            if all_closed.is_set():
                break
        for conn in group:
            conn.drain()
        ran += 1
        drained += len(group)
        _log.debug(
            "server.drain_batch",
            batch=ran,
            batches=batches,
            connections=len(group),
            open=len(connections),
            elapsed=round(clock.now() - start, 3),
        )
    return ran, drained
