"""The garbage collector: its pauses in ``wsup_gc_pause_seconds``, its tuning while serving."""

from __future__ import annotations

import gc
import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor import App
from supervisor.metrics import Metrics
from supervisor.observe._gc import TUNED_THRESHOLD, CollectorTuning, GcPauses
from tests.helpers.server import http_url, running_server


def _pauses(metrics: Metrics) -> dict[str, float]:
    """Collections counted so far, by generation (a read on this thread flushes)."""
    return {
        generation: metrics.registry.get_sample_value(
            "wsup_gc_pause_seconds_count", {"generation": generation}
        )
        or 0.0
        for generation in ("0", "1", "2")
    }


@pytest.fixture
def untuned() -> Iterator[None]:
    """The test starts and ends with no frozen object and CPython's thresholds."""
    threshold = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_every_collection_is_timed_under_its_generation() -> None:
    """Collections of each generation count in their own series, and only while installed."""
    metrics = Metrics()
    pauses = GcPauses(metrics)
    pauses.install()
    pauses.install()  # a second install does not count twice
    try:
        for generation in (0, 1, 2):
            gc.collect(generation)
        counted = _pauses(metrics)
        assert all(counted[g] >= 1 for g in ("0", "1", "2")), counted
        total = metrics.registry.get_sample_value("wsup_gc_pause_seconds_sum", {"generation": "2"})
        assert total is not None
        assert total > 0
    finally:
        pauses.remove()
    assert pauses._callback not in gc.callbacks
    gc.collect(2)
    assert _pauses(metrics) == counted


def test_the_tuning_freezes_raises_the_thresholds_and_is_undone(untuned: None) -> None:
    """apply() freezes what is alive and sets the thresholds; restore() puts both back."""
    before = gc.get_threshold()
    tuning = CollectorTuning()
    applied = tuning.apply()
    assert gc.get_threshold() == TUNED_THRESHOLD
    assert gc.get_freeze_count() > 0
    assert applied == {"frozen": gc.get_freeze_count(), "threshold": list(TUNED_THRESHOLD)}
    tuning.restore()
    tuning.restore()  # once only
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_objects_frozen_by_the_host_stay_frozen(untuned: None) -> None:
    """A process that froze its own objects keeps them frozen after the server's restore."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    tuning = CollectorTuning()
    tuning.apply()
    tuning.restore()
    assert gc.get_freeze_count() >= frozen > 0


@pytest.mark.anyio
async def test_an_embedded_server_leaves_the_collector_alone(untuned: None) -> None:
    """By default (gc_tuning None) serving changes neither thresholds nor frozen objects."""
    before = gc.get_threshold()
    async with running_server(App()):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text: str = answer.read().decode()
    return text


@pytest.mark.anyio
async def test_a_tuned_server_tunes_while_serving_and_exports_its_pauses(
    untuned: None, anyio_backend: Any
) -> None:
    """gc_tuning=True: frozen and raised thresholds while serving, both undone after;
    /metrics exposes every generation's pauses, the full collection counted."""
    before = gc.get_threshold()
    async with running_server(App(), gc_tuning=True) as server:
        assert gc.get_threshold() == TUNED_THRESHOLD
        assert gc.get_freeze_count() > 0
        gc.collect(2)
        text = await anyio.to_thread.run_sync(_scrape, http_url(server, "/metrics"))
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    family = next(
        f for f in text_string_to_metric_families(text) if f.name == "wsup_gc_pause_seconds"
    )
    assert family.type == "histogram"
    counts = {
        s.labels["generation"]: s.value
        for s in family.samples
        if s.name == "wsup_gc_pause_seconds_count"
    }
    assert set(counts) == {"0", "1", "2"}
    assert counts["2"] >= 2  # the tuning's own collection and the one above
