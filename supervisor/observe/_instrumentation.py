"""Runtime events → ``wsup_*`` metrics."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Histogram

from actors import Instrumentation

from ..metrics import Metrics

__all__ = [
    "BatchedCounter",
    "BatchedGauge",
    "BatchedHistogram",
    "MetricsInstrumentation",
    "hot_gauge",
]


class BatchedCounter:
    """Increments of a ``prometheus_client`` counter (child), added in batches.

    ``Counter.inc`` takes a lock and three calls (some 4,000 CPU instructions);
    here it is a plain integer addition, and :meth:`flush` adds the total to
    the counter: before every read of the registry on the event loop's thread
    (a scrape included) and every second, like :class:`BatchedHistogram`.
    """

    __slots__ = ("_counter", "pending")

    def __init__(self, counter: Any) -> None:
        self._counter = counter
        self.pending = 0

    def inc(self, amount: int = 1) -> None:
        """Count ``amount`` more."""
        self.pending += amount

    def flush(self) -> None:
        """Add what was counted since the last flush to the counter."""
        if self.pending:
            amount, self.pending = self.pending, 0
            self._counter.inc(amount)


class BatchedGauge(BatchedCounter):
    """Increments and decrements of a ``prometheus_client`` gauge (child), in batches.

    Like :class:`BatchedCounter` (a gauge takes negative increments), for the
    gauges that move with every connection. Only for a single process: in
    multiprocess mode another worker's scrape reads this one's file, which a
    batch would leave up to a second behind, so :func:`hot_gauge` returns the
    gauge itself there.
    """

    __slots__ = ()

    def dec(self, amount: int = 1) -> None:
        """Subtract ``amount``."""
        self.pending -= amount


def hot_gauge(metrics: Metrics, gauge: Any) -> Any:
    """A :class:`BatchedGauge` over ``gauge``, or ``gauge`` itself in multiprocess mode.

    The caller flushes it with its other batches.
    """
    return gauge if metrics.multiprocess_dir is not None else BatchedGauge(gauge)


class BatchedHistogram:
    """Per-message observations for a ``prometheus_client`` histogram, added in batches.

    ``Histogram.observe`` takes two locks per call; on the per-message path of
    a busy server that alone cost a fifth of the CPU (measured with
    ``python -m bench.instrumentation``). Here an observation is a binary
    search and a list increment on the event loop's thread; :meth:`flush`
    adds the counts to the real histogram, so the exposition (and
    multiprocess mode) is unchanged. The server flushes every second and
    before every scrape.

    Relies on ``Histogram``'s ``_upper_bounds``, ``_buckets`` (per-bucket,
    non-cumulative counts) and ``_sum``, stable across prometheus-client
    releases; a test pins that the exposition equals direct observations.
    """

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (buckets are ``le``: value <= bound)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        """Add what was observed since the last flush to the histogram."""
        counts = self._counts
        if not any(counts):
            return
        buckets = self._histogram._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
                counts[index] = 0
        self._histogram._sum.inc(self._sum)
        self._sum = 0.0


class MetricsInstrumentation(Instrumentation):
    """Updates :class:`~supervisor.metrics.Metrics` from runtime hooks.

    Labelled children are resolved once here, so the per-message hooks cost a
    dictionary lookup and a locked float update each.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._wait = BatchedHistogram(metrics.mailbox_wait)
        self._processing = BatchedHistogram(metrics.message_processing)
        # Actors start and stop with every connection: children resolved once, batched.
        self._actors: dict[str, Any] = {}
        metrics.add_flusher(self.flush)

    def flush(self) -> None:
        """Add batched observations to the histograms and gauges (before a read, every second)."""
        self._wait.flush()
        self._processing.flush()
        for gauge in self._actors.values():
            if isinstance(gauge, BatchedGauge):
                gauge.flush()

    def _actor_gauge(self, kind: str) -> Any:
        gauge = self._actors.get(kind)
        if gauge is None:
            gauge = self._actors[kind] = hot_gauge(
                self.metrics, self.metrics.actors.labels(kind=kind)
            )
        return gauge

    def message_processed(self, kind: str, wait: float, duration: float) -> None:
        """Observe mailbox wait and processing time (batched: see :class:`BatchedHistogram`)."""
        # BatchedHistogram.observe, inlined: this runs once per message.
        histogram = self._wait
        histogram._counts[bisect_left(histogram._bounds, wait)] += 1
        histogram._sum += wait
        histogram = self._processing
        histogram._counts[bisect_left(histogram._bounds, duration)] += 1
        histogram._sum += duration

    def message_dropped(self, policy: str) -> None:
        """Count a mailbox drop."""
        self.metrics.messages_dropped.labels(policy=policy).inc()

    def dead_letter(self, reason: str) -> None:
        """Count a dead letter."""
        self.metrics.dead_letters.labels(reason=reason).inc()

    def actor_started(self, kind: str) -> None:
        """One more live actor of ``kind``."""
        self._actor_gauge(kind).inc()

    def actor_stopped(self, kind: str) -> None:
        """One fewer live actor of ``kind``."""
        gauge = self._actors.get(kind)  # known once the first one started
        (gauge if gauge is not None else self._actor_gauge(kind)).dec()

    def actor_crashed(self, kind: str) -> None:
        """Count a crash."""
        self.metrics.actor_crashes.labels(kind=kind).inc()

    def actor_restarted(self, kind: str) -> None:
        """Count a restart."""
        self.metrics.actor_restarts.labels(kind=kind).inc()

    def escalated(self) -> None:
        """Count an escalation."""
        self.metrics.supervisor_escalations.inc()

    def published_to_empty_group(self) -> None:
        """Count a publish that reached no member."""
        self.metrics.empty_group_publishes.inc()

    def backplane_message(self, direction: str) -> None:
        """Count a backplane message."""
        self.metrics.backplane_messages.labels(direction=direction).inc()

    def backplane_published(self, seconds: float) -> None:
        """Observe a publish."""
        self.metrics.backplane_publish_duration.observe(seconds)

    def backplane_state(self, up: bool) -> None:
        """Record backplane health."""
        self.metrics.backplane_up.set(1 if up else 0)

    def history_appended(self) -> None:
        """Count a message added to a history."""
        self.metrics.history_appends.inc()

    def history_recovered(self, result: str, records: int) -> None:
        """Count a recovery and the messages it handed back."""
        self.metrics.history_recoveries.labels(result=result).inc()
        if records:
            self.metrics.history_recovered_messages.inc(records)
