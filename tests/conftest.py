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


def _can_run(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is scheduled to run, not waiting for anything (anyio's test)."""
    waiter = task._fut_waiter  # type: ignore[attr-defined]
    return waiter is None or bool(waiter.done())


async def _wait_all_tasks_blocked(cls: type[AsyncIOBackend]) -> None:
    """anyio's ``wait_all_tasks_blocked`` on asyncio, looking again every millisecond.

    anyio's own sleeps 100 ms whenever it finds a task that can run (one just
    started, or just woken), and the tests settle the loop thousands of times:
    about half a minute of the suite was spent in those sleeps. The condition is
    anyio's; the pause between looks is 1 ms, a real sleep rather than a bare yield,
    so that a task waiting here counts as blocked for another task that waits here
    too. Once a task could run, every task must be found blocked three looks in a
    row: a task that just finished wakes the one waiting for it through callbacks
    that no task shows yet, and the 100 ms pause let them run before the next look.
    """
    await cls.checkpoint()
    this_task = asyncio.current_task()
    woke = False
    quiet = 0  # looks in a row, since a task could run, that found every task blocked
    while True:
        if any(task is not this_task and _can_run(task) for task in asyncio.all_tasks()):
            woke, quiet = True, 0
        elif not woke or quiet == 2:
            return
        else:
            quiet += 1
        await asyncio.sleep(0.001)


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
