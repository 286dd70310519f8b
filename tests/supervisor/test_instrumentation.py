"""Batched metric updates expose exactly what direct updates would, when they are read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from supervisor.metrics import Metrics
from supervisor.observe._instrumentation import (
    BatchedCounter,
    BatchedGauge,
    BatchedHistogram,
    MetricsInstrumentation,
    hot_gauge,
)

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_batched_observations_equal_direct_ones(values: list[float]) -> None:
    """After a flush, buckets, count and sum equal those of Histogram.observe (edges included)."""
    values = [*values, *BUCKETS]  # exact bucket bounds are "le": they count in their bucket
    direct = Histogram("direct", "d", buckets=BUCKETS, registry=CollectorRegistry())
    batched_target = Histogram("batched", "b", buckets=BUCKETS, registry=CollectorRegistry())
    batched = BatchedHistogram(batched_target)
    for value in values:
        direct.observe(value)
        batched.observe(value)
    batched.flush()
    expected = {(n.replace("direct", "batched"), le): v for (n, le), v in _samples(direct).items()}
    got = _samples(batched_target)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_a_render_flushes_pending_observations() -> None:
    """Observations made through the instrumentation appear in the next /metrics body."""
    metrics = Metrics()
    instrumentation = MetricsInstrumentation(metrics)
    for _ in range(3):
        instrumentation.message_processed("connection", 0.002, 0.0005)
    body = metrics.render().decode()
    assert "wsup_mailbox_wait_seconds_count 3.0" in body
    assert "wsup_message_processing_seconds_count 3.0" in body
    instrumentation.flush()  # nothing pending: a no-op
    assert "wsup_mailbox_wait_seconds_count 3.0" in metrics.render().decode()


def test_any_read_of_the_registry_on_the_owner_thread_flushes() -> None:
    """Batched per-connection gauges and counters are exact for every reader on the loop's
    thread (get_sample_value included); a read from another thread sees the last flush."""
    metrics = Metrics()
    instrumentation = MetricsInstrumentation(metrics)
    accepted = BatchedCounter(metrics.connections_accepted)
    metrics.add_flusher(accepted.flush)
    instrumentation.actor_started("connection")
    instrumentation.actor_started("connection")
    instrumentation.actor_stopped("connection")
    accepted.inc()
    accepted.inc()

    def read(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    seen: list[float | None] = []
    other = threading.Thread(target=lambda: seen.append(read("wsup_connections_accepted_total")))
    other.start()
    other.join()
    assert seen == [0.0]  # not flushed from a foreign thread: the batches are not locked
    assert read("wsup_connections_accepted_total") == 2
    assert read("wsup_actors", kind="connection") == 1
    instrumentation.actor_stopped("connection")
    assert read("wsup_actors", kind="connection") == 0


def test_gauges_are_not_batched_in_multiprocess_mode(tmp_path: Path) -> None:
    """With workers another process reads this one's file: gauges are written at once."""
    metrics = Metrics()
    assert isinstance(hot_gauge(metrics, metrics.draining), BatchedGauge)
    # prometheus_client picks multiprocess mode when it is imported: a fresh interpreter.
    check = (
        "from supervisor.metrics import Metrics\n"
        "from supervisor.observe._instrumentation import hot_gauge\n"
        "m = Metrics()\n"
        "assert m.multiprocess_dir is not None\n"
        "assert hot_gauge(m, m.draining) is m.draining\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=60)
