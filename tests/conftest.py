"""Shared fixtures: every async test runs on asyncio (with uvloop) and on trio."""

from __future__ import annotations

from typing import Any

import pytest


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
