"""The dashboard, the Prometheus rules and the operations docs agree with the metrics.

promtool checks and unit-tests ``dashboards/rules.yml`` and lints the live
exposition; the other tests cross-check names between ``supervisor.metrics``,
``dashboards/wsup.json``, ``dashboards/rules.yml`` and ``docs/operations.md``.
promtool comes from ``make test-deps``: when it is missing these tests fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor.metrics import METRIC_DOCS, Metrics

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "wsup.json"
RULES = ROOT / "dashboards" / "rules.yml"
RULES_TEST = ROOT / "dashboards" / "rules_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

EXPECTED_ALERTS = {
    "WsupRestartStorm",
    "WsupDrainStuck",
    "WsupMailboxOverflowing",
    "WsupHandshakeFailureRatioHigh",
    "WsupEventLoopLagHigh",
    "WsupBackplaneDown",
    "WsupAcceptFailing",
    "WsupAdmissionRefusing",
    "WsupFileDescriptorsHigh",
    "WsupSupervisorEscalated",
}
EXPECTED_ROWS = [
    "Overview",
    "Traffic",
    "Actors & mailboxes",
    "Supervision",
    "Runtime health",
    "Backplane",
]

METRIC_NAME = re.compile(r"\bwsup_[a-zA-Z0-9_]+")
RECORDED_NAME = re.compile(r"\bwsup:[a-zA-Z0-9_:]+")
RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\(")


# --- Helpers --------------------------------------------------------------------


def run_promtool(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run promtool from the repository root and capture its output as text.

    Fails the calling test (never skips it) when promtool is not installed.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make test-deps` (apt package prometheus)")
    return subprocess.run(
        [promtool, *args],
        cwd=ROOT,
        input=stdin.decode("utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Rule:
    """One rule of rules.yml, as much of it as the tests look at."""

    kind: str  # "record" or "alert"
    name: str
    expr: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def read_rules() -> list[Rule]:
    """Read the rules of rules.yml with a line reader that knows the file's layout.

    Good enough for this one hand-written file (promtool validates its syntax);
    a layout it does not understand makes the tests below fail, not pass.
    """
    rules: list[Rule] = []
    lines = RULES.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"^(\s*)- (record|alert): (\S+)\s*$", line)
        if match:
            rules.append(Rule(kind=match[2], name=match[3]))
        elif rules and (kv := re.match(r"^(\s+)(\w+): ?(.*)$", line)):
            indent, key, value = len(kv[1]), kv[2], kv[3].strip()
            if value in {"|", ">-", ">", "|-"}:
                # A block scalar: every following line indented deeper belongs to it.
                block: list[str] = []
                while i + 1 < len(lines) and (
                    not lines[i + 1].strip()
                    or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                ):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(part for part in block if part)
            value = value.strip('"')
            if key == "expr":
                rules[-1].expr = value
            else:
                rules[-1].fields[key] = value
        i += 1
    return rules


def dashboard() -> dict[str, Any]:
    """Load dashboards/wsup.json."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: targets, annotations, variables."""
    exprs = [t["expr"] for p in all_panels(board) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def range_arguments(expr: str) -> list[str]:
    """Return the argument text of every rate()/irate()/increase() call in ``expr``."""
    arguments = []
    for match in RANGE_FUNCTION.finditer(expr):
        depth, start = 1, match.end()
        pos = start
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[pos], 0)
            pos += 1
        arguments.append(expr[start : pos - 1])
    return arguments


def exposed_sample_names() -> set[str]:
    """Every sample name a fully populated Metrics exposes (``_total``, ``_bucket``...)."""
    metrics = Metrics()
    metrics.set_build_info(version="0", python="0", backend="asyncio")
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def heading_anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the Markdown headings in ``markdown``."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            text = match[1].lower()
            text = re.sub(r"[^\w\- ]", "", text)
            anchors.add(text.replace(" ", "-"))
    return anchors


# --- promtool -------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    """promtool accepts rules.yml: valid YAML, valid PromQL, valid templates."""
    result = run_promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_promtool_unit_tests() -> None:
    """Every alert fires and stays silent exactly as rules_test.yml says."""
    result = run_promtool("test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_exposition_passes_promtool_check_metrics() -> None:
    """promtool's metrics linter reports no problem with the wsup exposition."""
    metrics = Metrics()
    metrics.set_build_info(version="0.1.0", python="3.11.0", backend="asyncio")
    metrics.handshake_duration.observe(0.01)
    metrics.connections_closed.labels(reason="normal", initiator="client").inc()
    result = run_promtool("check", "metrics", stdin=metrics.render())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


# --- Rules ----------------------------------------------------------------------


def test_rule_reader_sees_every_rule() -> None:
    """The line reader finds as many rules as the file declares, with an expression each."""
    text = RULES.read_text(encoding="utf-8")
    rules = read_rules()
    assert len(rules) == len(re.findall(r"^\s*- (?:record|alert):", text, re.MULTILINE))
    assert all(rule.expr for rule in rules)


def test_alerts_are_the_expected_ones() -> None:
    """rules.yml defines exactly the documented set of alerts."""
    alerts = {r.name for r in read_rules() if r.kind == "alert"}
    assert alerts == EXPECTED_ALERTS


def test_alerts_carry_severity_and_annotations() -> None:
    """Each alert has a severity and a summary, description and runbook_url."""
    for rule in read_rules():
        if rule.kind != "alert":
            continue
        assert rule.fields.get("severity") in {"warning", "critical"}, rule.name
        for key in ("summary", "description", "runbook_url"):
            assert rule.fields.get(key), (rule.name, key)


def test_runbook_urls_point_at_existing_sections() -> None:
    """Each runbook_url is docs/operations.md#<alert lowercased>, and that section exists."""
    anchors = heading_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in read_rules():
        if rule.kind != "alert":
            continue
        anchor = rule.name.lower()
        assert rule.fields["runbook_url"] == f"docs/operations.md#{anchor}"
        assert anchor in anchors, rule.name


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    """rules_test.yml has, for each alert, a case expecting it and a case expecting nothing."""
    text = RULES_TEST.read_text(encoding="utf-8")
    for alert in EXPECTED_ALERTS:
        silent = re.findall(rf"alertname: {alert}\n\s+exp_alerts: \[\]", text)
        firing = re.findall(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels:", text)
        assert silent, f"no case where {alert} stays silent"
        assert firing, f"no case where {alert} fires"


def test_every_recording_rule_is_unit_tested() -> None:
    """Each recording rule is the expression of a promql_expr_test in rules_test.yml."""
    text = RULES_TEST.read_text(encoding="utf-8")
    tested = set(re.findall(r"^\s+- expr: (\S+)\s*$", text, re.MULTILINE))
    recorded = {r.name for r in read_rules() if r.kind == "record"}
    assert recorded
    assert recorded <= tested


def test_recording_rules_follow_naming_convention() -> None:
    """Recording rules are named level:metric:operations with the wsup level."""
    for rule in read_rules():
        if rule.kind == "record":
            assert re.fullmatch(r"wsup:[a-z0-9_]+:[a-z0-9_]+", rule.name), rule.name


# --- Dashboard ------------------------------------------------------------------


def test_dashboard_identity_and_variables() -> None:
    """The dashboard has its stable uid, a recent schema and datasource/job/instance variables."""
    board = dashboard()
    assert board["uid"] == "wsup-overview"
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert variables["instance"]["type"] == "query"
    assert '"$job"' in variables["instance"]["definition"]


def test_dashboard_rows_in_order() -> None:
    """The rows an operator scans are there, in the documented order."""
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == EXPECTED_ROWS


def test_every_panel_has_unit_description_and_datasource() -> None:
    """Every panel has a unit, a description, and queries the ${datasource} variable."""
    board = dashboard()
    panels = [p for p in all_panels(board) if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels:
        title = panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), title
        assert panel.get("description", "").strip(), title
        assert panel["datasource"]["uid"] == "${datasource}", title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", title
            assert target["expr"].strip(), title


def test_every_panel_filters_by_job_and_instance() -> None:
    """Every panel query is scoped by the job and instance variables."""
    for panel in all_panels(dashboard()):
        for target in panel.get("targets", []):
            for selector in re.findall(r"\bwsup_[a-z0-9_]+\{([^}]*)\}", target["expr"]):
                assert 'job=~"$job"' in selector, target["expr"]
                assert 'instance=~"$instance"' in selector, target["expr"]
            assert re.search(r"\bwsup_[a-z0-9_]+\{", target["expr"]), target["expr"]


def test_dashboard_rates_use_rate_interval() -> None:
    """Every rate()/irate()/increase() in the dashboard ranges over $__rate_interval."""
    calls = 0
    for expr in dashboard_exprs(dashboard()):
        for argument in range_arguments(expr):
            calls += 1
            assert argument.endswith("[$__rate_interval]"), expr
    assert calls > 0


def test_range_argument_parser() -> None:
    """The helper extracts nested call arguments, so the check above is meaningful."""
    expr = 'sum(rate(a{b=~"(x)"}[5m])) / increase(c[$__rate_interval])'
    assert range_arguments(expr) == ['a{b=~"(x)"}[5m]', "c[$__rate_interval]"]


# --- Names agree ----------------------------------------------------------------


def test_metric_names_in_dashboard_and_rules_exist() -> None:
    """Every wsup_* series the dashboard and rules query is exposed by Metrics."""
    exposed = exposed_sample_names()
    exprs = dashboard_exprs(dashboard()) + [rule.expr for rule in read_rules()]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used
    assert used <= exposed, sorted(used - exposed)


def test_recorded_names_used_are_defined() -> None:
    """Every wsup:* name used in a rule or the dashboard is a recording rule of rules.yml."""
    rules = read_rules()
    defined = {r.name for r in rules if r.kind == "record"}
    exprs = dashboard_exprs(dashboard()) + [rule.expr for rule in rules]
    used = {name for expr in exprs for name in RECORDED_NAME.findall(expr)}
    assert used <= defined, sorted(used - defined)
    tested = set(RECORDED_NAME.findall(RULES_TEST.read_text(encoding="utf-8")))
    assert tested <= defined, sorted(tested - defined)


def test_every_metric_family_is_documented() -> None:
    """Each exposed family appears in docs/operations.md, a wsup_* one with its meaning."""
    docs = OPERATIONS.read_text(encoding="utf-8")
    metrics = Metrics()
    metrics.set_build_info(version="0", python="0", backend="asyncio")
    families = {
        f.name + "_total" if f.type == "counter" else f.name for f in metrics.registry.collect()
    }
    wsup = {name for name in families if name.startswith("wsup_")}
    assert wsup == set(METRIC_DOCS)
    for name in sorted(wsup):
        assert re.search(rf"`{name}`", docs), f"{name} missing from docs/operations.md"
        assert METRIC_DOCS[name] in docs, f"meaning of {name} differs in docs/operations.md"
    # The process collector's families are named (their meaning is the client library's).
    for name in sorted(families - wsup):
        assert name.startswith("process_"), name
        assert f"`{name}`" in docs, f"{name} missing from docs/operations.md"


def test_every_alert_and_recording_rule_is_documented() -> None:
    """docs/operations.md names every alert and recording rule."""
    docs = OPERATIONS.read_text(encoding="utf-8")
    for rule in read_rules():
        assert rule.name in docs, rule.name
