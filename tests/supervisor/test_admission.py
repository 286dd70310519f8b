"""Admission control's decisions (supervisor/server/_admission.py), on a hand-driven clock."""

from __future__ import annotations

import dataclasses
import math

import pytest

from supervisor import Rate, ServerConfig
from supervisor.metrics import LIMIT_NAMES, Metrics
from supervisor.observe._watchdog import LoopWatchdog
from supervisor.server._admission import ADMISSION_LIMITS, OTHER_LIMITS, Admission


def admission(jitter: float = 0.0, **config: object) -> Admission:
    return Admission(ServerConfig(**config), 0.0, jitter=lambda: jitter)  # type: ignore[arg-type]


def test_by_default_only_max_handshakes_pauses_accepting() -> None:
    gate = admission()
    assert not gate.per_address
    for _ in range(2048):
        assert gate.accept_wait(0.0) is None
        gate.socket_accepted(0.0)
    assert gate.accept_wait(0.0) == ("max_handshakes", math.inf)
    assert gate.request("10.0.0.1", 99_999, 0.0) is None


def test_accepting_resumes_when_a_handshake_is_over() -> None:
    gate = admission(max_handshakes=2)
    gate.socket_accepted(0.0)
    gate.socket_accepted(0.0)
    assert gate.handshaking == 2
    assert gate.accept_wait(0.0) == ("max_handshakes", math.inf)
    gate.socket_settled()
    assert gate.accept_wait(0.0) is None


def test_the_accept_rate_says_how_long_until_the_next_socket() -> None:
    gate = admission(accept_rate=Rate(0.25, burst=1), max_handshakes=None)
    assert gate.accept_wait(0.0) is None
    gate.socket_accepted(0.0)
    assert gate.accept_wait(1.0) == ("accept_rate", 3.0)
    assert gate.accept_wait(1.0) == ("accept_rate", 3.0)  # asking takes no token
    assert gate.accept_wait(4.0) is None


@pytest.mark.parametrize(("jitter", "expected"), [(0.0, 3), (0.5, 5), (0.999, 6)])
def test_retry_after_is_stretched_by_up_to_as_much_again(jitter: float, expected: int) -> None:
    """Clients refused together come back spread over [wait, 2 x wait]."""
    gate = admission(jitter, handshake_rate=Rate(0.4, burst=1))
    assert gate.request("a", 0, 0.0) is None
    refusal = gate.request("a", 0, 0.0)
    assert refusal is not None
    assert refusal.retry_after == expected


def test_the_caps_come_before_the_rates_and_take_no_token() -> None:
    gate = admission(
        max_connections=3, max_connections_per_address=1, handshake_rate=Rate(1, burst=2)
    )
    assert gate.per_address
    full = gate.request("a", 3, 0.0)
    assert full is not None
    assert full.limit == "max_connections"
    assert gate.request("a", 0, 0.0) is None  # the first of two tokens
    capped = gate.request("a", 1, 0.0)
    assert capped is not None
    assert capped.limit == "max_connections_per_address"
    assert gate.request("b", 1, 0.0) is None  # the bucket's second token was still there
    rated = gate.request("c", 1, 0.0)
    assert rated is not None
    assert rated.limit == "handshake_rate"


def test_an_upgrade_let_through_holds_its_slot_until_given_back() -> None:
    """The slot is taken when the request passes, before any hook runs: a second
    upgrade from the address is refused while the first is still handshaking."""
    gate = admission(max_connections_per_address=1)
    assert gate.request("a", 0, 0.0) is None
    assert gate.open_from("a") == 1
    refused = gate.request("a", 0, 0.0)
    assert refused is not None
    assert refused.limit == "max_connections_per_address"
    gate.release("a")  # that handshake opened no connection
    assert gate.open_from("a") == 0
    assert gate.request("a", 0, 0.0) is None


def test_a_refused_upgrade_holds_no_slot() -> None:
    gate = admission(max_connections_per_address=2, handshake_rate=Rate(1, burst=1))
    assert gate.request("a", 0, 0.0) is None
    assert gate.request("a", 0, 0.0) is not None  # over handshake_rate
    assert gate.open_from("a") == 1


def test_every_limit_name_is_classified_once() -> None:
    """A new ``limit`` label must say whether admission control sets it; an admission
    limit is a setting (``server.started`` lists it by that name)."""
    assert set(LIMIT_NAMES) == ADMISSION_LIMITS | OTHER_LIMITS
    assert not ADMISSION_LIMITS & OTHER_LIMITS
    fields = {field.name for field in dataclasses.fields(ServerConfig)}
    assert fields >= ADMISSION_LIMITS


def test_the_per_address_rate_is_per_address() -> None:
    gate = admission(handshake_rate_per_address=Rate(1, burst=1))
    assert gate.request("a", 0, 0.0) is None
    refused = gate.request("a", 0, 0.5)
    assert refused is not None
    assert refused.limit == "handshake_rate_per_address"
    assert gate.request("b", 0, 0.5) is None
    assert gate.request("a", 0, 1.0) is None


def test_without_a_per_address_limit_nothing_is_counted_per_address() -> None:
    gate = admission()
    assert gate.request("a", 0, 0.0) is None
    assert gate.open_from("a") == 0
    gate.connection_closed("a")  # ignored


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_handshakes", 0, "max_handshakes must be >= 1"),
        ("max_connections_per_address", 0, "max_connections_per_address must be >= 1"),
        ("readiness_loop_lag", 0.0, "readiness_loop_lag must be > 0"),
    ],
)
def test_bad_settings_are_named(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServerConfig(**{field: value})  # type: ignore[arg-type]


def test_the_watchdog_reports_the_largest_lag_of_the_last_second_or_two() -> None:
    watchdog = LoopWatchdog(Metrics(), threshold=0.25)
    start = watchdog._window_start
    watchdog._record(0.4, start + 0.1)
    watchdog._record(0.01, start + 0.2)
    assert watchdog.recent_lag(start + 0.5) == 0.4
    watchdog._record(0.02, start + 1.1)  # a new second: the last one's 0.4 still counts
    assert watchdog.recent_lag(start + 1.5) == 0.4
    watchdog._record(0.03, start + 2.2)
    assert watchdog.recent_lag(start + 2.5) == 0.03
    assert watchdog.recent_lag(start + 5.0) == 0.0  # no beat for seconds
