"""Shared fixtures: every async test runs on asyncio (with uvloop) and on trio.

The run's header records the versions of the outside programs the end-to-end
tests drive, so that a failure can be matched with what was installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from anyio._backends._asyncio import AsyncIOBackend
from hypothesis import settings

# No test may depend on how fast this machine is: hypothesis's per-example time
# limit (200 ms by default) is a timing assertion, and it fails on a busy CI host.
settings.register_profile("wsup", deadline=None)
settings.load_profile("wsup")


async def _wait_all_tasks_blocked(cls: type[AsyncIOBackend]) -> None:
    """anyio's ``wait_all_tasks_blocked`` on asyncio, looking again every millisecond.

    anyio's own sleeps 100 ms each time it finds a task that can run (one just
    started, or just woken), and the tests settle the loop thousands of times:
    about half a minute of the suite was spent in those sleeps. The condition is
    anyio's, unchanged; only the pause between looks is shorter. It is still a
    real sleep, not a bare yield, so that a task waiting here counts as blocked for
    another task that waits here too.
    """
    await cls.checkpoint()
    this_task = asyncio.current_task()
    while True:
        for task in asyncio.all_tasks():
            if task is this_task:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                await asyncio.sleep(0.001)
                break
        else:
            return


AsyncIOBackend.wait_all_tasks_blocked = classmethod(_wait_all_tasks_blocked)  # type: ignore[method-assign,assignment]

#: The programs tests/e2e drives, and how each tells its version.
PROGRAMS = {
    "redis-server": ["redis-server", "--version"],
    "prometheus": ["prometheus", "--version"],
    "promtool": ["promtool", "--version"],
    "chromium": ["chromium", "--version"],
    "node": ["node", "--version"],
}
WS_PACKAGE = Path(__file__).parent / "e2e" / "node_modules" / "ws" / "package.json"


def _first_line(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable ({exc})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else f"no version (exit {done.returncode})"


def pytest_report_header() -> list[str]:
    """Print the versions of the outside programs before the first test runs."""
    lines = [f"{name}: {_first_line(argv)}" for name, argv in PROGRAMS.items()]
    ws = json.loads(WS_PACKAGE.read_text())["version"] if WS_PACKAGE.exists() else "not installed"
    lines.append(f"node ws package: {ws}")
    return lines


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Run each anyio test once per backend."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend
