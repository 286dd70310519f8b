"""The burst measurement's summaries (``python -m bench.burst``)."""

from __future__ import annotations

from bench.burst import _lag_summary, _percentile

BUCKET = 'wsup_event_loop_lag_seconds_bucket{{le="{}"}}'


def test_the_lag_summary_reads_the_burst_out_of_the_histograms_difference() -> None:
    """Beats before the burst do not count; the bounds are those of the burst's beats."""
    before = {BUCKET.format(le): n for le, n in (("0.1", 50.0), ("1.0", 50.0), ("+Inf", 50.0))}
    after = {BUCKET.format(le): n for le, n in (("0.1", 149.0), ("1.0", 150.0), ("+Inf", 150.0))}
    assert _lag_summary(before, after) == {"beats": 100.0, "p99_under_s": 0.1, "max_under_s": 1.0}


def test_percentiles_of_sorted_times() -> None:
    times = [float(n) for n in range(100)]
    assert (_percentile(times, 0.5), _percentile(times, 0.99), _percentile(times, 1.0)) == (
        50.0,
        99.0,
        99.0,
    )
