"""The burst measurement's summaries (``python -m bench.burst``)."""

from __future__ import annotations

from bench.burst import _gc_summary, _lag_summary, _percentile

BUCKET = 'wsup_event_loop_lag_seconds_bucket{{le="{}"}}'


def test_the_lag_summary_reads_the_burst_out_of_the_histograms_difference() -> None:
    """Beats before the burst do not count; the bounds are those of the burst's beats."""
    before = {BUCKET.format(le): n for le, n in (("0.1", 50.0), ("1.0", 50.0), ("+Inf", 50.0))}
    after = {BUCKET.format(le): n for le, n in (("0.1", 149.0), ("1.0", 150.0), ("+Inf", 150.0))}
    before["wsup_event_loop_lag_seconds_sum"] = 1.0
    after["wsup_event_loop_lag_seconds_sum"] = 3.0
    assert _lag_summary(before, after) == {
        "beats": 100.0,
        "mean_s": 0.02,
        "p99_s": 0.1,
        "p99_under_s": 0.1,
        "max_under_s": 1.0,
    }


def test_the_lag_p99_is_interpolated_within_its_bucket() -> None:
    """As histogram_quantile does: 99 of 100 beats under 0.5 s, the 99th at 0.5 s."""
    after = {BUCKET.format(le): n for le, n in (("0.25", 98.0), ("0.5", 100.0), ("+Inf", 100.0))}
    assert _lag_summary({}, after)["p99_s"] == 0.375


def test_percentiles_of_sorted_times() -> None:
    times = [float(n) for n in range(100)]
    assert (_percentile(times, 0.5), _percentile(times, 0.99), _percentile(times, 1.0)) == (
        50.0,
        99.0,
        99.0,
    )


GC = 'wsup_gc_pause_seconds_{}{{generation="{}"{}}}'


def test_the_gc_summary_counts_the_bursts_collections_by_generation() -> None:
    """Collections before the burst do not count; the longest falls under its bucket's bound."""
    before = {GC.format("count", "2", ""): 1.0, GC.format("sum", "2", ""): 0.05}
    before[GC.format("bucket", "2", ',le="0.1"')] = 1.0
    before[GC.format("bucket", "2", ',le="0.25"')] = 1.0
    after = {GC.format("count", "2", ""): 3.0, GC.format("sum", "2", ""): 0.45}
    after[GC.format("bucket", "2", ',le="0.1"')] = 1.0
    after[GC.format("bucket", "2", ',le="0.25"')] = 3.0
    after[GC.format("count", "0", "")] = 5.0
    after[GC.format("sum", "0", "")] = 0.005
    after[GC.format("bucket", "0", ',le="0.001"')] = 5.0
    summary = _gc_summary(before, after)
    assert summary["2"] == {"count": 2.0, "total_s": 0.4, "mean_s": 0.2, "max_under_s": 0.25}
    assert summary["0"] == {"count": 5.0, "total_s": 0.005, "mean_s": 0.001, "max_under_s": 0.001}
    assert summary["1"] == {"count": 0.0, "total_s": 0.0, "mean_s": None, "max_under_s": None}
