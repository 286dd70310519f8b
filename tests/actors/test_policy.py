"""Tests for the pure decisions: mailbox overflow, restart intensity and backoff."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import Backoff, Intensity, LeasePolicy, OverflowPolicy
from actors._policy import (
    BackoffState,
    IntensityWindow,
    LeaseAction,
    Overflow,
    decide_overflow,
    lease_step,
)

policies = st.sampled_from(list(OverflowPolicy))

# Non-decreasing timestamps: a start plus cumulative non-negative gaps (zero gaps
# model several restarts at the same instant, as under a fake clock).
gaps = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=10.0, allow_nan=False)),
    max_size=60,
)

backoffs = st.builds(
    lambda minimum, spread, factor, jitter, reset_after: Backoff(
        minimum=minimum,
        maximum=minimum + spread,
        factor=factor,
        jitter=jitter,
        reset_after=reset_after,
    ),
    minimum=st.floats(min_value=0.0, max_value=100.0),
    spread=st.floats(min_value=0.0, max_value=1000.0),
    factor=st.floats(min_value=1.0, max_value=1e6),
    jitter=st.floats(min_value=0.0, max_value=2.0),
    reset_after=st.floats(min_value=0.0, max_value=100.0),
)

unit_interval = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


# --- decide_overflow -----------------------------------------------------------


def _apply(verdict: Overflow, depth: int) -> int:
    """Return the depth after acting on ``verdict`` the way the mailbox does."""
    if verdict is Overflow.ACCEPT:
        return depth + 1
    # EVICT_OLDEST removes one then appends one; the others queue nothing.
    return depth


@given(policy=policies, data=st.data())
def test_decide_overflow_never_exceeds_capacity(
    policy: OverflowPolicy, data: st.DataObject
) -> None:
    """Applying the verdict for any depth up to capacity leaves at most ``capacity`` queued."""
    capacity = data.draw(st.integers(min_value=1, max_value=10_000))
    depth = data.draw(st.integers(min_value=0, max_value=capacity))
    verdict = decide_overflow(policy, depth, capacity)
    assert _apply(verdict, depth) <= capacity


@given(policy=policies, data=st.data())
def test_decide_overflow_accepts_iff_below_capacity(
    policy: OverflowPolicy, data: st.DataObject
) -> None:
    """The verdict is ACCEPT exactly when the mailbox holds fewer than ``capacity`` messages."""
    capacity = data.draw(st.integers(min_value=1, max_value=10_000))
    depth = data.draw(st.integers(min_value=0, max_value=capacity))
    assert (decide_overflow(policy, depth, capacity) is Overflow.ACCEPT) == (depth < capacity)


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        (OverflowPolicy.BLOCK, Overflow.WAIT),
        (OverflowPolicy.DROP_NEWEST, Overflow.DROP_NEWEST),
        (OverflowPolicy.DROP_OLDEST, Overflow.EVICT_OLDEST),
        (OverflowPolicy.REJECT, Overflow.REJECT),
    ],
)
def test_decide_overflow_full_verdict_per_policy(policy: OverflowPolicy, verdict: Overflow) -> None:
    """A full mailbox gets the verdict that its policy names."""
    assert decide_overflow(policy, 5, 5) is verdict


def test_overflow_policy_values_are_the_configuration_strings() -> None:
    """Policies compare equal to the strings used in configuration and metric labels."""
    assert [str(p) for p in OverflowPolicy] == ["block", "drop_newest", "drop_oldest", "reject"]
    assert OverflowPolicy("drop_oldest") is OverflowPolicy.DROP_OLDEST


# --- Intensity and IntensityWindow ---------------------------------------------


@pytest.mark.parametrize(("max_restarts", "within"), [(-1, 1.0), (3, 0.0), (3, -1.0)])
def test_intensity_rejects_invalid_bounds(max_restarts: int, within: float) -> None:
    """A negative restart count or a non-positive window raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        Intensity(max_restarts, within)


def _brute_force_allowed(times: list[float], intensity: Intensity) -> list[bool]:
    """Allowed iff at most N restart attempts fall in the window ``(t - T, t]``."""
    return [
        sum(1 for earlier in times[: i + 1] if earlier > t - intensity.within)
        <= intensity.max_restarts
        for i, t in enumerate(times)
    ]


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    within=st.floats(min_value=0.01, max_value=20.0),
    start=st.floats(min_value=-1e6, max_value=1e6),
    steps=gaps,
)
def test_intensity_window_matches_brute_force(
    max_restarts: int, within: float, start: float, steps: list[float]
) -> None:
    """Each verdict equals a brute-force count of the restarts in the sliding window."""
    intensity = Intensity(max_restarts, within)
    times = list(itertools.accumulate(steps, initial=start))
    window = IntensityWindow(intensity)
    verdicts = [window.record(t) for t in times]
    assert verdicts == _brute_force_allowed(times, intensity)
    assert window.count(times[-1]) == sum(1 for t in times if t > times[-1] - within)


@given(
    max_restarts=st.integers(min_value=0, max_value=6),
    within=st.floats(min_value=0.01, max_value=20.0),
    steps=gaps,
)
def test_intensity_window_never_allows_more_than_n_in_any_window(
    max_restarts: int, within: float, steps: list[float]
) -> None:
    """No window of ``within`` seconds ever contains more than ``max_restarts`` allowed restarts."""
    window = IntensityWindow(Intensity(max_restarts, within))
    times = list(itertools.accumulate(steps, initial=0.0))
    allowed = [t for t in times if window.record(t)]
    for end in allowed:
        assert sum(1 for t in allowed if end - within < t <= end) <= max_restarts


def test_intensity_window_allows_n_then_refuses_at_one_instant() -> None:
    """N restarts at the same instant are allowed and the (N+1)-th is refused."""
    window = IntensityWindow(Intensity(3, 5.0))
    assert [window.record(10.0) for _ in range(4)] == [True, True, True, False]


def test_intensity_window_forgets_restarts_older_than_the_window() -> None:
    """A restart exactly ``within`` seconds old no longer counts."""
    window = IntensityWindow(Intensity(1, 5.0))
    assert window.record(0.0)
    assert not window.record(4.999)
    assert window.count(5.0) == 1
    assert window.record(10.0)


def test_intensity_window_memory_stays_bounded() -> None:
    """The window keeps only the restarts still inside it."""
    window = IntensityWindow(Intensity(2, 1.0))
    for i in range(1000):
        window.record(float(i))
    assert len(window._times or ()) == 1


# --- Backoff -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minimum": -1.0},
        {"minimum": 2.0, "maximum": 1.0},
        {"factor": 0.5},
        {"jitter": -0.1},
        {"reset_after": -1.0},
    ],
)
def test_backoff_rejects_invalid_parameters(kwargs: dict[str, float]) -> None:
    """Negative times, maximum below minimum, factor below 1 or negative jitter raise."""
    with pytest.raises(ValueError, match=r"must be|need"):
        Backoff(**kwargs)


@given(backoff=backoffs, rand=unit_interval, attempt=st.integers(min_value=0, max_value=500))
def test_backoff_delay_is_monotone_in_attempt(backoff: Backoff, rand: float, attempt: int) -> None:
    """For a fixed random draw the delay never shrinks as the attempt count grows."""
    assert backoff.delay(attempt, rand) <= backoff.delay(attempt + 1, rand)


@given(backoff=backoffs, rand=unit_interval, attempt=st.integers(min_value=0, max_value=10**9))
def test_backoff_delay_is_bounded(backoff: Backoff, rand: float, attempt: int) -> None:
    """Every delay lies between ``minimum`` and ``maximum * (1 + jitter)``."""
    delay = backoff.delay(attempt, rand)
    assert backoff.minimum <= delay <= backoff.maximum * (1 + backoff.jitter)


def test_backoff_delay_grows_exponentially_up_to_the_maximum() -> None:
    """Without jitter the delays are minimum * factor**n, capped at maximum."""
    backoff = Backoff(minimum=0.1, maximum=1.0, factor=2.0, jitter=0.0)
    assert [backoff.delay(n, 0.9) for n in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )


def test_backoff_delay_jitter_scales_by_the_random_draw() -> None:
    """The random draw multiplies the delay by ``1 + jitter * rand``."""
    backoff = Backoff(minimum=1.0, maximum=10.0, factor=2.0, jitter=0.5)
    assert backoff.delay(1, 0.0) == pytest.approx(2.0)
    assert backoff.delay(1, 0.5) == pytest.approx(2.5)


def test_backoff_zero_minimum_restarts_at_once() -> None:
    """``Backoff(minimum=0)`` gives a zero delay for every attempt."""
    backoff = Backoff(minimum=0.0)
    assert {backoff.delay(n, 0.99) for n in (0, 1, 10, 10**6)} == {0.0}


# --- BackoffState --------------------------------------------------------------


def _expected_delays(backoff: Backoff, calls: list[float], rand: float) -> list[float]:
    """Brute force: the attempt resets once ``reset_after`` passed since the last restart."""
    delays: list[float] = []
    attempt = 0
    last_restart: float | None = None
    for now in calls:
        if last_restart is not None and now - last_restart >= backoff.reset_after:
            attempt = 0
        delay = backoff.delay(attempt, rand)
        delays.append(delay)
        attempt += 1
        last_restart = now + delay
    return delays


@given(
    backoff=backoffs,
    rand=unit_interval,
    steps=st.lists(st.floats(min_value=0.0, max_value=300.0), max_size=30),
)
def test_backoff_state_matches_brute_force(
    backoff: Backoff, rand: float, steps: list[float]
) -> None:
    """Delays follow the consecutive-attempt count, reset after the quiet period."""
    calls = list(itertools.accumulate(steps, initial=0.0))
    state = BackoffState(backoff, rand=lambda: rand)
    assert [state.next_delay(now) for now in calls] == _expected_delays(backoff, calls, rand)


def test_backoff_state_resets_after_quiet_period() -> None:
    """After ``reset_after`` quiet seconds since the last restart, the delay is back to minimum."""
    backoff = Backoff(minimum=1.0, maximum=100.0, factor=2.0, jitter=0.0, reset_after=30.0)
    state = BackoffState(backoff)
    assert [state.next_delay(0.0), state.next_delay(1.0), state.next_delay(3.0)] == [1.0, 2.0, 4.0]
    assert state.last_restart == 7.0
    # 29.9 s after the last restart: still counted as consecutive.
    assert state.next_delay(36.9) == 8.0
    assert state.last_restart == pytest.approx(44.9)
    assert state.next_delay(44.9 + 30.0) == 1.0
    assert state.attempt == 1


def test_backoff_state_uses_its_random_source() -> None:
    """The injected random source feeds the jitter."""
    backoff = Backoff(minimum=1.0, maximum=10.0, jitter=1.0)
    draws = iter([0.0, 0.5])
    state = BackoffState(backoff, rand=lambda: next(draws))
    assert state.next_delay(0.0) == 1.0
    assert state.next_delay(1.0) == pytest.approx(3.0)


# --- lease renewal ----------------------------------------------------------------------------


@given(
    ttl=st.floats(min_value=0.5, max_value=60),
    margin_share=st.floats(min_value=0, max_value=0.4),
    renew_share=st.floats(min_value=0.05, max_value=0.9),
    confirmed=st.floats(min_value=0, max_value=1e6),
    elapsed=st.floats(min_value=0, max_value=120),
)
def test_a_lease_holder_never_acts_past_its_lease(
    ttl: float, margin_share: float, renew_share: float, confirmed: float, elapsed: float
) -> None:
    """Whatever the time, the holder is told LOST from ttl - margin after its last confirmed
    renewal, and never WAITs past that point or renews after it."""
    margin = ttl * margin_share
    policy = LeasePolicy(ttl=ttl, margin=margin, renew_every=(ttl - margin) * renew_share)
    now = confirmed + elapsed
    action, at = lease_step(now, policy, confirmed)
    expires = confirmed + ttl - margin
    if now >= expires:
        assert (action, at) == (LeaseAction.LOST, now)
    elif action is LeaseAction.WAIT:
        assert now < at <= expires
    else:
        assert action is LeaseAction.RENEW
        assert at == expires
        assert now >= confirmed + policy.renew_every


def test_a_lease_is_renewed_on_schedule() -> None:
    """Wait until renew_every, renew until ttl - margin, then it is lost."""
    policy = LeasePolicy(ttl=3.0, renew_every=1.0, margin=0.3)
    assert lease_step(10.0, policy, 10.0) == (LeaseAction.WAIT, 11.0)
    assert lease_step(11.0, policy, 10.0) == (LeaseAction.RENEW, 12.7)
    assert lease_step(12.7, policy, 10.0) == (LeaseAction.LOST, 12.7)


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 1.0, "margin": 1.0},
        {"ttl": 3.0, "renew_every": 2.8, "margin": 0.3},
        {"ttl": 3.0, "renew_every": 0.0},
        {"retry_every": 0.0},
    ],
)
def test_a_lease_policy_that_would_lapse_is_refused(options: dict[str, float]) -> None:
    """A margin as long as the lease, a renewal after it lapses, or no retry are refused."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        LeasePolicy(**options)
