"""Tests for the attack table's own logic (``python -m bench.attacks``): what a row says."""

from __future__ import annotations

import json

from bench.attack_clients import KINDS, Report
from bench.attacks import ATTACKS, MIB, Run, Usage, table


def test_every_attack_has_its_client() -> None:
    """Each attack of the table is a kind the client process knows."""
    assert {attack.client for attack in ATTACKS} <= set(KINDS)


def test_a_report_counts_outcomes_and_the_median_time_to_end() -> None:
    """Outcomes by kind, what was sent, and the median of the times the server ended one."""
    report = Report()
    report.ended("close 1008", 0.0)
    report.outcomes["open"] += 1
    report.sent["frames"] += 3
    report.ended_after[:] = [10.0, 12.0]
    assert json.loads(report.as_json()) == {
        "outcomes": {"close 1008": 1, "open": 1},
        "sent": {"frames": 3},
        "ended_median_s": 11.0,
    }


def test_the_table_puts_both_servers_side_by_side() -> None:
    """One row per server: RSS in MiB before, at the peak and after, CPU seconds used,
    descriptors, what the clients saw, whether it still serves."""
    attack = ATTACKS[0]
    runs = [
        Run(
            attack.name,
            attack.limit,
            server,
            Usage(40 * MIB, 15, 1.0),
            Usage(48 * MIB, 31, 2.5),
            Usage(44 * MIB, 15, 2.5),
            {
                "outcomes": {"close 1009": 16},
                "sent": {"bytes": 2_500_000, "echoed": 1200},
                "ended_median_s": 0.03,
            },
            serves,
        )
        for server, serves in (("wsup", True), ("websockets", False))
    ]
    rows = table((attack,), runs).splitlines()
    assert rows[2] == (
        f"| max_size | {attack.what} | wsup | 40 → 48 → 44 | 1.5 | 15 → 31 → 15 "
        "| 2.5 MB, 1,200 echoed | close 1009: 16 (median 0.03 s) | yes |"
    )
    assert "| websockets |" in rows[3]
    assert rows[3].endswith("| no |")
