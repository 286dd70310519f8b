"""Tests for the soak's verdict (``python -m bench.soak``): what counts as growth."""

from __future__ import annotations

from collections.abc import Sequence

from bench.soak import MIB, Sample, Tolerance, verdict

TOLERANCE = Tolerance(rss_fraction=0.25, rss_floor=32 * MIB, fd_slack=8)


def run(rss_mib: Sequence[float], *, fds_after: int = 15, warmup: float = 20) -> list[Sample]:
    """Two idle samples (15 fds), load samples every 5 s with ``rss_mib``, one cooldown."""
    samples = [Sample(-5, "idle", 40 * MIB, 15, 0.0), Sample(-2, "idle", 40 * MIB, 16, 0.0)]
    samples += [
        Sample(5.0 * i, "load", int(mib * MIB), 2000, 50.0) for i, mib in enumerate(rss_mib)
    ]
    samples.append(Sample(5.0 * len(rss_mib) + 5, "cooldown", int(rss_mib[-1] * MIB), fds_after, 1))
    return samples


def test_flat_memory_and_descriptors_back_pass() -> None:
    """RSS flat after the warm-up and fds back at the baseline: no problem."""
    result = verdict(run([50, 80, 100, 101, 99, 100, 102, 100, 101, 100]), 10, TOLERANCE)
    assert result.passed, result.problems
    assert result.fds_baseline == 15
    assert result.fds_final == 15


def test_the_warm_up_does_not_count() -> None:
    """Growth during the warm-up (buffers and pools filling) is not a leak."""
    samples = run([40, 70, 100, 160, 160, 161, 160, 162, 160, 161])
    assert verdict(samples, warmup=15, tolerance=TOLERANCE).passed
    assert not verdict(samples, warmup=0, tolerance=TOLERANCE).passed


def test_steady_growth_beyond_the_tolerance_fails_and_names_rss() -> None:
    """RSS climbing through the run fails, naming RSS and both levels."""
    result = verdict(run([100 + 10 * i for i in range(12)]), 0, TOLERANCE)
    assert not result.passed
    (problem,) = result.problems
    assert problem.startswith("RSS grew under steady load")
    assert result.rss_early is not None
    assert result.rss_late is not None
    assert result.rss_late > result.rss_early


def test_growth_within_the_floor_or_the_fraction_passes() -> None:
    """+30 MiB on 100 MiB is under the 32 MiB floor; +60 MiB on 400 MiB is under 25%."""
    assert verdict(run([100] * 4 + [115] * 4 + [130] * 4), 0, TOLERANCE).passed
    assert verdict(run([400] * 4 + [430] * 4 + [460] * 4), 0, TOLERANCE).passed
    assert not verdict(run([400] * 4 + [460] * 4 + [520] * 4), 0, TOLERANCE).passed


def test_a_single_spike_is_not_growth() -> None:
    """One sample far above the others (a burst of buffered data) does not fail the run."""
    assert verdict(run([100, 101, 100, 100, 300, 100, 101, 100, 100]), 0, TOLERANCE).passed


def test_descriptors_left_open_after_the_clients_stop_fail() -> None:
    """More than fd_slack descriptors above the idle baseline after the cooldown fails."""
    assert verdict(run([100] * 9, fds_after=15 + 8), 0, TOLERANCE).passed
    result = verdict(run([100] * 9, fds_after=15 + 9), 0, TOLERANCE)
    (problem,) = result.problems
    assert problem.startswith("file descriptors not back")
    assert "24 open, 15 before" in problem


def test_too_short_a_run_is_a_problem_not_a_pass() -> None:
    """Fewer than three samples after the warm-up cannot show growth: that is reported."""
    result = verdict(run([100, 100, 100]), 10, TOLERANCE)
    assert not result.passed
    assert "too few samples" in result.problems[0]
