"""Batched histogram observations expose exactly what direct observations would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from supervisor._instrumentation import BatchedHistogram, MetricsInstrumentation
from supervisor.metrics import Metrics

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
