"""Tests for supervisor.metrics: names, types, labels and exposition of wsup's metrics."""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from actors import DEAD_LETTER_REASONS
from supervisor import metrics as metrics_module
from supervisor.metrics import (
    ACCEPT_ERRORS,
    ACTOR_KINDS,
    BACKPLANE_DIRECTIONS,
    CLOSE_INITIATORS,
    CLOSE_REASONS,
    CONNECTION_STATES,
    DROP_POLICIES,
    GC_GENERATIONS,
    HANDSHAKE_RESULTS,
    MESSAGE_KINDS,
    METRIC_DOCS,
    Metrics,
    close_reason_for_code,
)

# The contract of SPEC §3 (plus wsup_accept_failures_total), written out
# independently of the implementation: exposed family name -> (type, label names).
SPEC_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wsup_connections": ("gauge", ("state",)),
    "wsup_connections_accepted_total": ("counter", ()),
    "wsup_accept_failures_total": ("counter", ("error",)),
    "wsup_limited_total": ("counter", ("limit",)),
    "wsup_handshakes_total": ("counter", ("result",)),
    "wsup_handshake_duration_seconds": ("histogram", ()),
    "wsup_connections_closed_total": ("counter", ("reason", "initiator")),
    "wsup_connection_duration_seconds": ("histogram", ()),
    "wsup_messages_received_total": ("counter", ("kind",)),
    "wsup_messages_sent_total": ("counter", ("kind",)),
    "wsup_received_bytes_total": ("counter", ()),
    "wsup_sent_bytes_total": ("counter", ()),
    "wsup_ping_rtt_seconds": ("histogram", ()),
    "wsup_mailbox_messages": ("gauge", ()),
    "wsup_mailbox_wait_seconds": ("histogram", ()),
    "wsup_message_processing_seconds": ("histogram", ()),
    "wsup_messages_dropped_total": ("counter", ("policy",)),
    "wsup_dead_letters_total": ("counter", ("reason",)),
    "wsup_outbound_buffer_bytes": ("gauge", ()),
    "wsup_actors": ("gauge", ("kind",)),
    "wsup_actor_crashes_total": ("counter", ("kind",)),
    "wsup_actor_restarts_total": ("counter", ("kind",)),
    "wsup_supervisor_escalations_total": ("counter", ()),
    "wsup_empty_group_publishes_total": ("counter", ()),
    "wsup_event_loop_lag_seconds": ("histogram", ()),
    "wsup_gc_pause_seconds": ("histogram", ("generation",)),
    "wsup_draining": ("gauge", ()),
    "wsup_backplane_up": ("gauge", ()),
    "wsup_backplane_messages_total": ("counter", ("direction",)),
    "wsup_backplane_publish_duration_seconds": ("histogram", ()),
    "wsup_build_info": ("gauge", ("version", "python", "backend")),
    "wsup_api_requests_total": ("counter", ("endpoint", "result")),
    "wsup_api_request_duration_seconds": ("histogram", ()),
    "wsup_history_appends_total": ("counter", ()),
    "wsup_history_recoveries_total": ("counter", ("result",)),
    "wsup_history_recovered_messages_total": ("counter", ()),
    "wsup_resumes_total": ("counter", ("result",)),
}

# Label name -> every value it may take (build_info's labels are free-form).
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "state": ("handshaking", "open", "detached", "draining", "closing"),
    "result": ("accepted", "rejected", "failed", "timeout"),
    "reason": (),  # two metrics use "reason" with different sets; checked per metric
    "initiator": ("server", "client", "network"),
    "kind": (),  # text/binary or actor kinds, checked per metric
    "policy": ("drop_newest", "drop_oldest", "reject", "block_timeout", "disconnect"),
    "direction": ("sent", "received", "failed"),
    "error": ("emfile", "enfile", "enobufs", "enomem"),
    "endpoint": ("send", "broadcast", "presence", "other"),
    "generation": ("0", "1", "2"),
    "limit": (
        "inbound_delay",
        "inbound_close",
        "max_connections",
        "max_handshakes",
        "max_connections_per_address",
        "accept_rate",
        "handshake_rate",
        "handshake_rate_per_address",
        "message_timeout",
        "request_head",
    ),
}

PER_METRIC_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "wsup_connections": {"state": LABEL_VALUES["state"]},
    "wsup_handshakes_total": {"result": LABEL_VALUES["result"]},
    "wsup_accept_failures_total": {"error": LABEL_VALUES["error"]},
    "wsup_limited_total": {"limit": LABEL_VALUES["limit"]},
    "wsup_connections_closed_total": {
        "reason": (
            "normal",
            "going_away",
            "protocol_error",
            "invalid_data",
            "message_too_big",
            "internal_error",
            "slow_consumer",
            "policy",
            "timeout",
            "abnormal",
            "resume_expired",
            "other",
        ),
        "initiator": LABEL_VALUES["initiator"],
    },
    "wsup_messages_received_total": {"kind": ("text", "binary")},
    "wsup_messages_sent_total": {"kind": ("text", "binary")},
    "wsup_messages_dropped_total": {"policy": LABEL_VALUES["policy"]},
    "wsup_dead_letters_total": {
        "reason": ("dropped", "no_recipient", "failed", "stopped", "backplane_down")
    },
    "wsup_actors": {"kind": ("connection", "service", "supervisor")},
    "wsup_actor_crashes_total": {"kind": ("connection", "service", "supervisor")},
    "wsup_actor_restarts_total": {"kind": ("connection", "service", "supervisor")},
    "wsup_backplane_messages_total": {"direction": LABEL_VALUES["direction"]},
    "wsup_api_requests_total": {
        "endpoint": LABEL_VALUES["endpoint"],
        "result": (
            "ok",
            "bad_request",
            "unauthorized",
            "not_found",
            "method_not_allowed",
            "too_large",
            "unavailable",
        ),
    },
    "wsup_history_recoveries_total": {
        "result": ("recovered", "epoch_changed", "trimmed", "unavailable", "invalid")
    },
    "wsup_resumes_total": {
        "result": ("resumed", "relayed", "expired", "unknown", "mismatch", "other_node")
    },
}


def exposed_name(family: Metric) -> str:
    """Return the name a family has in the ``# TYPE`` line of the text format."""
    return family.name + "_total" if family.type == "counter" else family.name


@pytest.fixture
def metrics() -> Metrics:
    """A Metrics on its own private registry, with build info set."""
    m = Metrics(CollectorRegistry())
    m.set_build_info(version="0.1.0", python="3.11.0", backend="asyncio")
    return m


def parsed(m: Metrics) -> dict[str, Metric]:
    """Parse ``m.render()`` back into families keyed by exposed name."""
    text = m.render().decode("utf-8")
    return {exposed_name(f): f for f in text_string_to_metric_families(text)}


def test_process_metrics_are_exposed_next_to_wsup_ones(metrics: Metrics) -> None:
    """Descriptors, memory and CPU of the process: what an operator reads first under load."""
    families = parsed(metrics)
    for name in (
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in families, name
    open_fds = families["process_open_fds"].samples[0].value
    assert 0 < open_fds <= families["process_max_fds"].samples[0].value
    assert families["process_resident_memory_bytes"].samples[0].value > 1_000_000


def test_every_spec_metric_is_exposed_with_its_type_and_labels(metrics: Metrics) -> None:
    """Each SPEC §3 metric is in the exposition with the agreed type and label names."""
    families = {n: f for n, f in parsed(metrics).items() if n.startswith("wsup_")}
    assert set(families) == set(SPEC_METRICS)
    for name, (typ, labels) in SPEC_METRICS.items():
        family = families[name]
        assert family.type == typ, name
        label_names = {k for s in family.samples for k in s.labels} - {"le"}
        assert label_names == set(labels), name


def test_labelled_children_exist_at_zero_for_every_value(metrics: Metrics) -> None:
    """Every combination of a metric's fixed label values is a series at 0 before any event."""
    families = parsed(metrics)
    for name, values in PER_METRIC_VALUES.items():
        samples = [s for s in families[name].samples if not s.name.endswith("_created")]
        expected_count = math.prod(len(v) for v in values.values())
        assert len(samples) == expected_count, name
        for label, allowed in values.items():
            assert {s.labels[label] for s in samples} == set(allowed), (name, label)
        assert all(s.value == 0 for s in samples), name


def test_module_label_sets_match_the_contract() -> None:
    """The module's exported label tuples are the values the contract lists."""
    closed = PER_METRIC_VALUES["wsup_connections_closed_total"]
    assert LABEL_VALUES["state"] == CONNECTION_STATES
    assert LABEL_VALUES["result"] == HANDSHAKE_RESULTS
    assert closed["reason"] == CLOSE_REASONS
    assert closed["initiator"] == CLOSE_INITIATORS
    assert MESSAGE_KINDS == ("text", "binary")
    assert LABEL_VALUES["policy"] == DROP_POLICIES
    assert PER_METRIC_VALUES["wsup_dead_letters_total"]["reason"] == DEAD_LETTER_REASONS
    assert ACTOR_KINDS == ("connection", "service", "supervisor")
    assert LABEL_VALUES["direction"] == BACKPLANE_DIRECTIONS
    assert LABEL_VALUES["error"] == ACCEPT_ERRORS
    assert LABEL_VALUES["generation"] == GC_GENERATIONS


def test_gc_pauses_exist_at_zero_for_every_generation(metrics: Metrics) -> None:
    """wsup_gc_pause_seconds has an empty histogram per generation before any collection."""
    samples = [
        s
        for s in parsed(metrics)["wsup_gc_pause_seconds"].samples
        if s.name == "wsup_gc_pause_seconds_count"
    ]
    assert {s.labels["generation"]: s.value for s in samples} == {"0": 0, "1": 0, "2": 0}


def test_unlabelled_metrics_start_at_zero(metrics: Metrics) -> None:
    """Counters and gauges without labels read 0 and histograms are empty on creation."""
    families = parsed(metrics)
    for name, (_typ, labels) in SPEC_METRICS.items():
        if labels:
            continue
        values = [s.value for s in families[name].samples if not s.name.endswith("_created")]
        assert values, name
        assert all(v == 0 for v in values), name


def test_render_parses_and_reflects_updates(metrics: Metrics) -> None:
    """render() is valid text exposition whose samples follow the metric updates."""
    metrics.connections_accepted.inc()
    metrics.handshakes.labels(result="rejected").inc(2)
    metrics.connections.labels(state="open").set(3)
    metrics.ping_rtt.observe(0.004)
    families = parsed(metrics)

    def value(name: str, sample: str, **labels: str) -> float:
        for s in families[name].samples:
            if s.name == sample and s.labels == labels:
                return s.value
        raise AssertionError(f"no sample {sample}{labels}")

    assert value("wsup_connections_accepted_total", "wsup_connections_accepted_total") == 1
    assert value("wsup_handshakes_total", "wsup_handshakes_total", result="rejected") == 2
    assert value("wsup_handshakes_total", "wsup_handshakes_total", result="accepted") == 0
    assert value("wsup_connections", "wsup_connections", state="open") == 3
    assert value("wsup_ping_rtt_seconds", "wsup_ping_rtt_seconds_count") == 1
    assert value("wsup_ping_rtt_seconds", "wsup_ping_rtt_seconds_bucket", le="0.005") == 1
    assert value("wsup_ping_rtt_seconds", "wsup_ping_rtt_seconds_bucket", le="0.0025") == 0


def test_render_omits_created_samples(metrics: Metrics) -> None:
    """The exposition carries no *_created series, and the live metrics are unaffected."""
    body = metrics.render().decode("utf-8")
    assert "_created" not in body
    # A second render must still see full families: the filter works on copies.
    metrics.sent_bytes.inc(10)
    assert "wsup_sent_bytes_total 10.0" in metrics.render().decode("utf-8")


def test_content_type_is_prometheus_text_format() -> None:
    """content_type announces the Prometheus text format 0.0.4."""
    assert Metrics.content_type.startswith("text/plain; version=0.0.4")


def test_render_for_negotiates_openmetrics(metrics: Metrics) -> None:
    """render_for() answers OpenMetrics to a scraper that asks for it, text otherwise."""
    body, content_type = metrics.render_for("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"_created" not in body
    body, content_type = metrics.render_for(None)
    assert content_type == Metrics.content_type

    def wsup_lines(text: bytes) -> list[bytes]:  # process_* move between two renders
        return [line for line in text.splitlines() if b"process_" not in line]

    assert wsup_lines(body) == wsup_lines(metrics.render())


def test_set_build_info_keeps_exactly_one_series(metrics: Metrics) -> None:
    """set_build_info() replaces the previous labels instead of adding a second series."""
    metrics.set_build_info(version="0.2.0", python="3.12.1", backend="trio")
    samples = parsed(metrics)["wsup_build_info"].samples
    assert len(samples) == 1
    assert samples[0].labels == {"version": "0.2.0", "python": "3.12.1", "backend": "trio"}
    assert samples[0].value == 1


def test_build_info_absent_until_set() -> None:
    """No build_info series is exposed before set_build_info(), so no fake labels appear."""
    families = parsed(Metrics())
    assert families["wsup_build_info"].samples == []


def test_no_label_outside_the_fixed_sets(metrics: Metrics) -> None:
    """Only the small fixed label names are used: no id, user, path or peer label."""
    allowed = set(LABEL_VALUES) | {"le", "version", "python", "backend"}
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, family.name


def test_metric_docs_cover_exactly_the_exposed_families(metrics: Metrics) -> None:
    """METRIC_DOCS has one entry per exposed wsup family and it is the family's HELP text."""
    families = {n: f for n, f in parsed(metrics).items() if n.startswith("wsup_")}
    assert set(METRIC_DOCS) == set(families)
    for name, family in families.items():
        assert family.documentation == METRIC_DOCS[name]
        assert "\n" not in METRIC_DOCS[name]


def attribute_name(exposed: str) -> str:
    """Derive the Metrics attribute name from an exposed family name."""
    name = exposed.removeprefix("wsup_")
    for suffix in ("_total", "_seconds"):
        name = name.removesuffix(suffix)
    return name


def families_of(obj: Counter | Gauge | Histogram) -> Iterator[Metric]:
    """Collect the families a metric object yields."""
    yield from obj.collect()


def test_attributes_are_named_after_their_metrics(metrics: Metrics) -> None:
    """metrics.<name> is the object for wsup_<name>[_total|_seconds], of the right class."""
    classes = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    for exposed, (typ, _labels) in SPEC_METRICS.items():
        obj = getattr(metrics, attribute_name(exposed))
        assert isinstance(obj, classes[typ]), exposed
        assert {exposed_name(f) for f in families_of(obj)} == {exposed}


def test_histogram_buckets_cover_their_ranges(metrics: Metrics) -> None:
    """Bucket bounds increase, end at +Inf, and span each metric's documented range."""
    families = parsed(metrics)
    ranges = {
        "wsup_connection_duration_seconds": (1.0, 86400.0),
        "wsup_event_loop_lag_seconds": (0.001, 10.0),
        "wsup_gc_pause_seconds": (0.0001, 1.0),
        "wsup_handshake_duration_seconds": (0.001, 10.0),
        "wsup_ping_rtt_seconds": (0.001, 10.0),
    }
    for name, (typ, _labels) in SPEC_METRICS.items():
        if typ != "histogram":
            continue
        first_child = families[name].samples[0].labels  # every child has the same buckets
        bounds = [
            float(s.labels["le"])
            for s in families[name].samples
            if s.name.endswith("_bucket")
            and all(s.labels[k] == v for k, v in first_child.items() if k != "le")
        ]
        assert bounds == sorted(set(bounds)), name
        assert bounds[-1] == math.inf, name
        assert len(bounds) >= 10, name
        if name in ranges:
            low, high = ranges[name]
            assert bounds[0] <= low, name
            assert bounds[-2] >= high, name


def test_two_instances_on_one_registry_are_refused() -> None:
    """Registering wsup's metrics twice on one registry raises instead of double counting."""
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(registry)


def test_private_registries_are_independent() -> None:
    """Two Metrics with default registries do not share counts."""
    a, b = Metrics(), Metrics()
    a.dead_letters.labels(reason="dropped").inc()
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("wsup_dead_letters_total", {"reason": "dropped"}) == 0
    assert a.registry.get_sample_value("wsup_dead_letters_total", {"reason": "dropped"}) == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "normal"),
        (1001, "going_away"),
        (1002, "protocol_error"),
        (1003, "invalid_data"),
        (1006, "abnormal"),
        (None, "abnormal"),
        (1007, "invalid_data"),
        (1008, "policy"),
        (1009, "message_too_big"),
        (1011, "internal_error"),
        (1013, "slow_consumer"),
        (1012, "other"),
        (4000, "other"),
        (3001, "other"),
    ],
)
def test_close_reason_for_code(code: int | None, reason: str) -> None:
    """Close codes map to the fixed reason labels; unknown and app codes map to "other"."""
    assert close_reason_for_code(code) == reason
    assert reason in CLOSE_REASONS


def test_all_is_complete() -> None:
    """__all__ lists exactly the public names the module defines (not the ones it imports)."""
    tree = ast.parse(inspect.getsource(metrics_module))
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    public = {name for name in defined if not name.startswith("_")}
    assert set(metrics_module.__all__) == public
