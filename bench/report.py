"""Collecting results and printing them: medians, ranges, ratios, JSON.

Each (scenario, server) pair gets one :class:`Outcome` that accumulates the
values of every repeat. The table shows, per metric, the median over repeats
with the min-max range, and the ratio of the median to the baseline server's
median (``ratio``); a ratio above 1 means "more of this metric", whichever
direction is better, and the arrow in the heading says which is.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import Metric, Scenario


@dataclass
class Outcome:
    """Every repeat of one scenario against one server.

    Attributes:
        scenario: scenario name.
        server: server name.
        values: metric key to one value per successful repeat.
        problems: one message per failed repeat.
        status: ``"ok"``, ``"n/a"``, ``"failed to start"`` or ``"failed"``.
        notes: remarks from measurements (deduplicated).
    """

    scenario: str
    server: str
    values: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    status: str = "ok"
    notes: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        """The median of a metric over successful repeats, or ``None``."""
        values = self.values.get(key)
        return statistics.median(values) if values else None


def fmt(value: float) -> str:
    """Three significant figures, with k/M suffixes for large numbers; a count stays whole."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value == int(value):
        return str(int(value))
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(outcome: Outcome, metric: Metric) -> str:
    values = outcome.values.get(metric.key)
    if not values:
        return "-"
    median = fmt(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt(min(values))}-{fmt(max(values))})"


def _ratio(outcome: Outcome, baseline: Outcome | None, metric: Metric) -> str:
    if baseline is None:
        return ""
    mine, theirs = outcome.median(metric.key), baseline.median(metric.key)
    if mine is None or not theirs:
        return ""
    return f"{mine / theirs:.2f}"


def render(
    scenarios: list[Scenario],
    outcomes: dict[tuple[str, str], Outcome],
    servers: list[str],
    baseline: str,
) -> str:
    """The results table, one block per scenario."""
    lines: list[str] = []
    for scenario in scenarios:
        lines.append(f"{scenario.name}: {scenario.title}")
        base = outcomes.get((scenario.name, baseline))
        if base is not None and base.status != "ok":
            base = None
        header = ["server"]
        for metric in scenario.metrics:
            arrow = {"higher": " ↑", "lower": " ↓", None: ""}[metric.better]
            header.append(metric.label + arrow)
            if metric.better is not None:
                header.append("ratio")
        rows: list[list[str]] = []
        remarks: list[str] = []
        for server in servers:
            outcome = outcomes.get((scenario.name, server))
            if outcome is None:
                continue
            if outcome.status != "ok":
                reason = outcome.problems[0] if outcome.problems else ""
                rows.append([server, f"{outcome.status}: {reason}" if reason else outcome.status])
                continue
            row = [server]
            for metric in scenario.metrics:
                row.append(_cell(outcome, metric))
                if metric.better is not None:
                    row.append(_ratio(outcome, base, metric))
            rows.append(row)
            failed = len(outcome.problems)
            if failed:
                remarks.append(f"{server}: {failed} repeat(s) failed: {outcome.problems[0]}")
            remarks.extend(f"{server}: {note}" for note in outcome.notes)
        full = [header, *(row for row in rows if len(row) == len(header))]
        widths = [max(len(row[i]) for row in full) for i in range(len(header))]
        widths[0] = max(len(row[0]) for row in [header, *rows])
        for row in [header, *rows]:
            if len(row) == 2 and len(header) > 2:
                # A status line spans the metric columns.
                lines.append(f"  {row[0]:<{widths[0]}}  {row[1]}")
            else:
                cells = [f"{cell:<{widths[i]}}" for i, cell in enumerate(row)]
                lines.append("  " + "  ".join(cells).rstrip())
        lines.extend(f"  note: {remark}" for remark in remarks)
        lines.append("")
    return "\n".join(lines)


def to_json(
    path: Path,
    *,
    settings: dict[str, Any],
    scenarios: list[Scenario],
    outcomes: dict[tuple[str, str], Outcome],
) -> None:
    """Write every raw value and the settings that produced them."""
    document = {
        "settings": settings,
        "scenarios": [
            {
                "name": scenario.name,
                "title": scenario.title,
                "metrics": [
                    {"key": m.key, "label": m.label, "better": m.better} for m in scenario.metrics
                ],
            }
            for scenario in scenarios
        ],
        "results": [
            {
                "scenario": outcome.scenario,
                "server": outcome.server,
                "status": outcome.status,
                "values": outcome.values,
                "medians": {key: outcome.median(key) for key in outcome.values},
                "problems": outcome.problems,
                "notes": outcome.notes,
            }
            for outcome in outcomes.values()
        ],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
