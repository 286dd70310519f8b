"""Find Node.js and its ``ws`` client for the end-to-end tests that use them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
"""tests/e2e: its ``node_modules`` holds the ``ws`` package."""


def node() -> str:
    """Return the ``node`` executable; fail (never skip) when the client cannot run."""
    executable = shutil.which("node")
    if executable is None:
        pytest.fail("node is not installed: run .ci/test-deps")
    if not (E2E / "node_modules" / "ws" / "package.json").exists():
        pytest.fail("Node's ws client is not installed in tests/e2e: run .ci/test-deps")
    return executable
