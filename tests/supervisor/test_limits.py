"""The admission and rate decisions of supervisor/server/_limits.py, on a hand-driven clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.server._limits import (
    MAX_PAUSE,
    AddressCounter,
    EveryInterval,
    InboundLimiter,
    InboundPolicy,
    InboundVerdict,
    PerKeyBuckets,
    Rate,
    TokenBucket,
)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_rate_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        Rate(bad)


def test_a_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="burst must be >= 1"):
        Rate(10, burst=0.5)


def test_capacity_defaults_to_one_second_and_at_least_one_token() -> None:
    assert Rate(50).capacity == 50
    assert Rate(0.1).capacity == 1
    assert Rate(50, burst=5).capacity == 5


def test_a_bucket_allows_its_burst_then_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket(Rate(2, burst=3), now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # 2 a second: one every 0.5 s
    assert bucket.take(100.25) == pytest.approx(0.25)  # refused takes take nothing
    assert bucket.take(100.5) == 0.0
    assert not bucket.full(100.5)
    assert bucket.full(102.0)


def test_an_amount_over_the_capacity_is_taken_from_a_full_bucket_leaving_debt() -> None:
    bucket = TokenBucket(Rate(10, burst=10), now=0.0)
    assert bucket.take(0.0, 25) == 0.0
    assert bucket.take(0.0, 1) == pytest.approx(1.6)  # 15 in debt + 1, at 10 a second
    assert bucket.take(1.6, 1) == 0.0


def test_charge_takes_what_was_read_and_says_how_long_the_debt_lasts() -> None:
    bucket = TokenBucket(Rate(100, burst=100), now=0.0)
    assert bucket.charge(0.0, 60) == 0.0
    assert bucket.charge(0.0, 90) == pytest.approx(0.5)  # 50 in debt at 100 a second
    assert bucket.charge(0.5, 0) == 0.0


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(Rate(1, burst=1), now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)


@given(
    rate=st.floats(0.5, 1000),
    burst=st.floats(1, 100),
    steps=st.lists(st.tuples(st.floats(0, 2), st.floats(0.1, 20)), max_size=50),
)
def test_a_bucket_never_grants_more_than_its_burst_plus_its_rate(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    """Whatever the arrivals, what was granted by time t is at most burst + rate * t."""
    bucket = TokenBucket(Rate(rate, burst=burst), now=0.0)
    now = granted = 0.0
    for gap, amount in steps:
        now += gap
        amount = min(amount, burst)
        if bucket.take(now, amount) == 0.0:
            granted += amount
        assert granted <= burst + rate * now + 1e-6


def test_per_key_buckets_limit_each_key_apart() -> None:
    buckets = PerKeyBuckets(Rate(1, burst=2))
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert buckets.take("b", 0.0) == 0.0


def test_per_key_buckets_stay_bounded_under_a_flood_of_new_keys() -> None:
    buckets = PerKeyBuckets(Rate(1, burst=1), max_keys=100)
    for n in range(10_000):
        assert buckets.take(f"10.0.{n // 256}.{n % 256}", 0.0) == 0.0
        assert len(buckets) <= 100
    # A refilled bucket is forgotten first: it is the same as a new one.
    buckets = PerKeyBuckets(Rate(1, burst=1), max_keys=2)
    buckets.take("old", 0.0)
    buckets.take("busy", 5.0)
    buckets.take("new", 5.0)
    assert buckets.take("busy", 5.0) > 0  # still remembered, still limited


def test_per_key_buckets_refuse_a_table_of_no_keys() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        PerKeyBuckets(Rate(1), max_keys=0)


def test_address_counter_caps_each_address_and_forgets_released_ones() -> None:
    counter = AddressCounter(2)
    assert counter.acquire("a")
    assert counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    assert counter.count("a") == 2
    counter.release("a")
    assert counter.acquire("a")
    for _ in range(5):  # more releases than acquires are harmless
        counter.release("a")
        counter.release("b")
    assert len(counter) == 0
    with pytest.raises(ValueError, match="per-address limit"):
        AddressCounter(0)


def test_inbound_limiter_delays_reading_by_the_debt() -> None:
    limiter = InboundLimiter(0.0, messages=Rate(10, burst=10), bytes_=Rate(1000))
    assert limiter.received(0.0, 10, 100) == InboundVerdict()
    # 5 messages over: half a second at 10 a second.
    assert limiter.received(0.0, 5, 10).pause == pytest.approx(0.5)
    # Bytes: 3,000 more with 890 left at 1,000 a second: 2.11 s of debt, paid in
    # one pause (nothing is read meanwhile, so the debt does not grow).
    assert limiter.received(0.0, 0, 3000).pause == pytest.approx(2.11)
    assert limiter.received(2.2, 1, 1) == InboundVerdict()


def test_one_pause_is_capped_by_max_pause_then_judged_again() -> None:
    """A debt longer than the cap is paid in several pauses: after each, one read
    (with the pongs in it) is taken and judged again."""
    limiter = InboundLimiter(0.0, messages=Rate(10, burst=10), max_pause=1.0)
    assert limiter.received(0.0, 35, 0).pause == 1.0  # 2.5 s owed
    assert limiter.received(1.0, 1, 0).pause == 1.0  # 1.6 s owed
    assert limiter.received(2.0, 1, 0).pause == pytest.approx(0.7)
    # A longer cap than MAX_PAUSE is cut to it.
    long_cap = InboundLimiter(0.0, messages=Rate(1, burst=1), max_pause=60.0)
    assert long_cap.received(0.0, 100, 0).pause == MAX_PAUSE
    with pytest.raises(ValueError, match="max_pause"):
        InboundLimiter(0.0, max_pause=0)


def test_inbound_limiter_closes_under_the_close_policy() -> None:
    limiter = InboundLimiter(0.0, messages=Rate(2, burst=2), policy=InboundPolicy.CLOSE)
    assert limiter.received(0.0, 2, 0) == InboundVerdict()
    assert limiter.received(0.0, 1, 0) == InboundVerdict(close=True)


def test_inbound_limiter_without_rates_never_objects() -> None:
    limiter = InboundLimiter(0.0)
    assert limiter.received(10**6, 10**6, 10**9) == InboundVerdict()


def test_every_interval_lets_one_line_through_per_key_and_counts_the_rest() -> None:
    lines = EveryInterval(10.0)
    assert lines.allow("inbound_delay", 0.0) == 0
    assert [lines.allow("inbound_delay", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert lines.allow("inbound_close", 5.0) == 0  # another key, its own interval
    assert lines.allow("inbound_delay", 10.0) == 3
    assert lines.allow("inbound_delay", 30.0) == 0
