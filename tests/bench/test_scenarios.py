"""Tests for the bench's scenario catalogue (what ``python -m bench`` runs, not how fast)."""

from __future__ import annotations

import pytest

from bench.scenarios import (
    FULL,
    LOWEST_PORT,
    QUICK,
    Sizes,
    catalogue,
    ephemeral_ports,
    free_port,
    select,
)

RR = ["rr-1conn-32B", "rr-1conn-4KiB", "rr-100conn-32B", "rr-100conn-4KiB"]
ECHO = ["echo-1conn-32B", "echo-1conn-4KiB", "echo-100conn-32B", "echo-100conn-4KiB"]


@pytest.mark.parametrize("sizes", [FULL, QUICK], ids=["full", "quick"])
def test_catalogue_has_request_response_and_pipelined_echo(sizes: Sizes) -> None:
    """Both modes list the four request/response scenarios and keep the four pipelined ones."""
    names = [scenario.name for scenario in catalogue(sizes)]
    assert set(RR) <= set(names)
    assert set(ECHO) <= set(names)
    assert len(names) == len(set(names))


def test_rr_family_selects_exactly_the_request_response_scenarios() -> None:
    """``--scenarios rr`` picks the four request/response scenarios and nothing else."""
    assert [scenario.name for scenario in select(catalogue(FULL), ["rr"])] == RR


def test_rr_scenarios_report_round_trip_percentiles() -> None:
    """Each request/response scenario reports RTT p50 and p99 beside msgs/s and CPU per message."""
    for scenario in select(catalogue(FULL), ["rr"]):
        keys = [metric.key for metric in scenario.metrics]
        assert keys[:4] == ["msgs_per_s", "rtt_p50_us", "rtt_p99_us", "cpu_us_per_msg"]
        assert "client_cpu_pct" in keys
        assert scenario.app == "echo"
        assert not scenario.compression
        assert "one message in flight per connection" in scenario.title


def test_rr_scenarios_use_the_echo_counts() -> None:
    """The 100-connection scenarios open ``echo_many`` connections and run ``echo_seconds``."""
    by_name = {scenario.name: scenario for scenario in catalogue(FULL)}
    assert f"{FULL.echo_many} connections" in by_name["rr-100conn-4KiB"].title
    assert "1 connection x 32 B" in by_name["rr-1conn-32B"].title
    assert f"{FULL.echo_seconds:g} s" in by_name["rr-1conn-32B"].title
    assert by_name["rr-1conn-32B"].timeout > FULL.echo_seconds + FULL.rr_warmup


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    """No outgoing connection can take the port between the pick and the server's bind."""
    low, _ = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert all(LOWEST_PORT <= port < low for port in ports)
    assert len(ports) > 1
