"""Python's garbage collector: its pauses as a metric, its settings while serving.

Theory of operation: CPython calls every function in ``gc.callbacks`` with
``"start"`` before each collection and ``"stop"`` after it, on whichever thread
allocated the object that set the collection off, with the collection's
generation. :class:`GcPauses` reads the clock at both and adds the difference
to per-generation bucket arrays (a :class:`~.BatchedHistogram` each); the
metrics' flush (every second and before every scrape, on the event loop's
thread) moves them into ``wsup_gc_pause_seconds``. The callback takes no lock:
a collection can start while its thread holds one of ``prometheus_client``'s,
which are not re-entrant. A collection run on another thread while the loop's
flushes may, rarely, lose that one observation.

:class:`CollectorTuning` is what ``ServerConfig.gc_tuning`` turns on: CPython's
default thresholds make a burst of connections cost several full
collections, each one stopping the process for longer the more connections
it holds (docs/performance.md, "The garbage collector").
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

from ..metrics import GC_GENERATIONS, Metrics
from ._instrumentation import BatchedHistogram

__all__ = ["TUNED_THRESHOLD", "CollectorTuning", "GcPauses"]


class GcPauses:
    """Times every garbage collection of the process into ``metrics.gc_pause``.

    Costs two calls and two clock reads per collection (about a microsecond;
    a young collection itself takes tens). The callback sees every collection
    of the process, whichever thread or server set it off.

    Args:
        metrics: where the pauses are counted (its flush runs :meth:`flush`).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._by_generation = [
            BatchedHistogram(metrics.gc_pause.labels(generation=generation))
            for generation in GC_GENERATIONS
        ]
        self._started = 0.0
        self._installed = False
        metrics.add_flusher(self.flush)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0

    def install(self) -> None:
        """Start timing collections (once; a second call does nothing)."""
        if not self._installed:
            self._installed = True
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        """Stop timing collections and flush what was timed; installed again by :meth:`install`."""
        if self._installed:
            self._installed = False
            gc.callbacks.remove(self._callback)
            self.flush()

    def flush(self) -> None:
        """Add the pauses timed since the last flush to the histogram."""
        for batch in self._by_generation:
            batch.flush()


#: ``gc.set_threshold`` while a tuned server serves (CPython's default: 700, 10, 10).
#: A young collection every 10,000 net allocations instead of 700: the objects of a
#: handshake mostly die before one looks at them, and a burst of connections
#: promotes its objects in a few dozen collections instead of hundreds. A middle
#: generation of at most four young ones (40,000 objects) keeps its pause within
#: tens of milliseconds. A full collection waits for 25 middle ones, a million net
#: allocations (about 20,000 connections' objects), and CPython still delays it
#: until the objects promoted since the last one reach a quarter of those it kept.
TUNED_THRESHOLD: Final = (10_000, 4, 25)


class CollectorTuning:
    """The collector's settings while a server serves, and their undoing.

    :meth:`apply` runs one full collection, then freezes what is alive (the
    imports, the app, the server: ``gc.freeze()``, so no later collection
    traverses them) and sets :data:`TUNED_THRESHOLD`. :meth:`restore` unfreezes
    and puts the previous thresholds back. Both are process-wide: only for a
    process that serves one server (``wsup serve``). Garbage cycles are still
    collected: young ones by the young collections, old ones by full
    collections, which CPython runs once the old generation has grown by a
    quarter since the last one, and no sooner than a million net allocations
    after it. So the garbage left in the old generation stays bounded: about a
    quarter of what it holds alive, or a million objects when that is more
    (70,000 with CPython's own settings).
    """

    def __init__(self) -> None:
        self._previous: tuple[int, int, int] | None = None
        self._froze = False

    def apply(self) -> dict[str, Any]:
        """Collect, freeze and raise the thresholds; the settings, for the start-up log.

        Costs one full collection (tens of milliseconds after start-up).
        Objects already frozen by someone else stay frozen, and are not
        unfrozen by :meth:`restore`.
        """
        self._previous = gc.get_threshold()
        gc.collect()
        self._froze = gc.get_freeze_count() == 0
        if self._froze:
            gc.freeze()
        gc.set_threshold(*TUNED_THRESHOLD)
        return {"frozen": gc.get_freeze_count(), "threshold": list(TUNED_THRESHOLD)}

    def restore(self) -> None:
        """Unfreeze what :meth:`apply` froze and restore the thresholds (once)."""
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
        if self._froze:
            gc.unfreeze()
            self._froze = False
