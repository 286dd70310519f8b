"""Fixtures of the fuzz tests: a server in a blocking portal, the time budget, the summary.

See :mod:`tests.helpers.fuzz` for the two profiles. ``make fuzz`` sets
``WSUP_FUZZ_SECONDS``; the budget is shared equally by every fuzz test
collected (each backend of a server test counts once), and the run ends with
a table of the examples each test ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
import structlog.testing

from examples.echo import app as echo_app
from supervisor import App
from tests.helpers.fuzz import (
    ErrorRecords,
    Fuzzer,
    FuzzRun,
    Served,
    ServeFactory,
    budget_seconds,
)
from tests.helpers.server import running_server

_HERE = Path(__file__).parent
_RUNS: list[FuzzRun] = []
_SHARE: dict[str, float | None] = {"seconds": None}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Share the ``fuzz`` profile's budget among the fuzz tests selected."""
    total = budget_seconds()
    ours = [item for item in items if _HERE in item.path.parents]
    _SHARE["seconds"] = total / len(ours) if total is not None and ours else None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Under the ``fuzz`` profile, report how many examples each test ran."""
    if _SHARE["seconds"] is None or not _RUNS:
        return
    write = terminalreporter.write_line
    width = max(len(run.name) for run in _RUNS)
    terminalreporter.section("fuzz: examples run")
    write(f"{'test':<{width}} {'examples':>9} {'rounds':>6} {'seconds':>8} {'per s':>7}")
    for run in _RUNS:
        rate = run.examples / run.seconds if run.seconds else 0.0
        counts = f"{run.examples:>9} {run.rounds:>6} {run.seconds:>8.1f} {rate:>7.1f}"
        write(f"{run.name:<{width}} {counts}")
    examples = sum(run.examples for run in _RUNS)
    seconds = sum(run.seconds for run in _RUNS)
    write(f"{'total':<{width}} {examples:>9} {'':>6} {seconds:>8.1f}")


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> Fuzzer:
    """Runs this test's property under the active profile and records what ran."""
    record = FuzzRun(request.node.nodeid.removeprefix("tests/fuzz/"))
    _RUNS.append(record)
    return Fuzzer(_SHARE["seconds"], record)


@pytest.fixture
def serve(
    anyio_backend: tuple[str, dict[str, Any]],
) -> Iterator[ServeFactory]:
    """``serve(app=echo_app, **config)``: run a server on this test's backend."""
    backend, options = anyio_backend
    handler = ErrorRecords()

    @contextmanager
    def start(app: App = echo_app, **config: Any) -> Iterator[Served]:
        with (
            structlog.testing.capture_logs() as events,
            anyio.from_thread.start_blocking_portal(backend, options) as portal,
            portal.wrap_async_context_manager(running_server(app, **config)) as server,
        ):
            served = Served(portal, server, events, handler.records)
            yield served
            served.assert_all_closed()
            served.assert_quiet()

    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield start
    finally:
        root.removeHandler(handler)
