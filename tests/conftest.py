"""Shared fixtures: every async test runs on asyncio (with uvloop) and on trio.

The run's header records the versions of the outside programs the end-to-end
tests drive, so that a failure can be matched with what was installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# No test may depend on how fast this machine is: hypothesis's per-example time
# limit (200 ms by default) is a timing assertion, and it fails on a busy CI host.
settings.register_profile("wsup", deadline=None)
settings.load_profile("wsup")

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
