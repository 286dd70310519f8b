"""Tests for round-trip percentiles and the histogram the load generators send."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.latency import (
    EXACT_BELOW,
    Histogram,
    bucket,
    bucket_bounds,
    percentile,
    rank,
)

# Round-trip times in nanoseconds: 1 ns to about 20 minutes.
durations = st.integers(min_value=0, max_value=2**40)


def test_percentile_of_one_to_hundred() -> None:
    """On 1..100 the p-th nearest-rank percentile is p itself."""
    samples = list(range(100, 0, -1))
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 0) == 1


def test_percentile_is_a_sample_not_an_interpolation() -> None:
    """p50 of an even count is the lower middle sample; p99 of ten is the largest."""
    samples = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 1000.0]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 90) == 90.0
    assert percentile(samples, 99) == 1000.0


def test_rank_ignores_float_noise() -> None:
    """99.9 % of 1,000 samples is rank 999, although 99.9 * 1000 / 100 is not exactly 999."""
    assert rank(99.9, 1000) == 999
    assert rank(99, 1000) == 990
    assert rank(50, 1) == 1


@pytest.mark.parametrize(("percent", "count"), [(50, 0), (-1, 10), (100.5, 10)])
def test_rank_rejects_nonsense(percent: float, count: int) -> None:
    """No samples, or a percentile outside 0-100, raise ValueError."""
    with pytest.raises(ValueError, match=r"no samples|outside"):
        rank(percent, count)


def test_histogram_is_exact_below_256_ns() -> None:
    """Values below EXACT_BELOW have a bucket each, so percentiles come out exact."""
    histogram = Histogram()
    for value in range(1, 101):
        histogram.record(value)
    assert histogram.count == 100
    assert histogram.percentile(50) == 50
    assert histogram.percentile(99) == 99
    assert bucket_bounds(bucket(EXACT_BELOW - 1)) == (EXACT_BELOW - 1, EXACT_BELOW - 1)


def test_histogram_of_microsecond_round_trips() -> None:
    """9,900 round trips of 100 µs and 100 of 2 ms: p50 about 100 µs, p99 too, p99.5 about 2 ms."""
    histogram = Histogram()
    for _ in range(9_900):
        histogram.record(100_000)
    for _ in range(100):
        histogram.record(2_000_000)
    assert histogram.percentile(50) == pytest.approx(100_000, rel=1 / 256)
    assert histogram.percentile(99) == pytest.approx(100_000, rel=1 / 256)
    assert histogram.percentile(99.5) == pytest.approx(2_000_000, rel=1 / 256)


@given(durations)
def test_bucket_holds_its_value(value: int) -> None:
    """A value lies within the bounds of its bucket, and the bucket is at most 1/128 wide."""
    low, high = bucket_bounds(bucket(value))
    assert low <= value <= high
    assert high - low + 1 <= max(1, low // 128)


@given(st.integers(min_value=0, max_value=2**20))
def test_buckets_are_contiguous(index: int) -> None:
    """Bucket index + 1 starts right after bucket index ends: no value falls in a gap."""
    assert bucket_bounds(index + 1)[0] == bucket_bounds(index)[1] + 1


@given(st.lists(durations, min_size=1, max_size=300), st.floats(min_value=0, max_value=100))
def test_histogram_percentile_within_a_bucket_of_exact(samples: list[int], percent: float) -> None:
    """A histogram percentile is within 1/256 of the exact nearest-rank percentile."""
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    exact = percentile(samples, percent)
    assert abs(histogram.percentile(percent) - exact) <= exact / 256 + 0.5


@given(st.lists(durations, max_size=100), st.lists(durations, max_size=100))
def test_merge_equals_recording_everything_in_one(left: list[int], right: list[int]) -> None:
    """Merging two load generators' histograms, through JSON, counts what one would have."""
    one, two, both = Histogram(), Histogram(), Histogram()
    for value in left:
        one.record(value)
        both.record(value)
    for value in right:
        two.record(value)
        both.record(value)
    sent = [json.loads(json.dumps(h.to_json())) for h in (one, two)]
    merged = Histogram.merged(Histogram.from_json(pairs) for pairs in sent)
    assert merged.counts == both.counts
    assert merged.count == len(left) + len(right)


def test_from_json_rejects_other_shapes() -> None:
    """Anything but a list of [index, count] pairs raises ValueError."""
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_json({"p50": 1})
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_json([[1, 2, 3]])


def test_empty_histogram_has_no_percentile() -> None:
    """An empty histogram raises instead of inventing a round-trip time."""
    with pytest.raises(ValueError, match="no samples"):
        Histogram().percentile(50)
