"""``ServerConfig.metrics_port``: the ops endpoints on a second port, and only them."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.echo import app
from tests.helpers.server import running_server

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


async def test_metrics_port_serves_ops_endpoints_only(anyio_backend: Any) -> None:
    """/metrics, /healthz, /readyz answer on the metrics port; a WebSocket route there is 404."""
    async with running_server(app, metrics_port=_free_port()) as server:
        host, port = server.metrics_ports[0]
        base = f"http://{host}:{port}"
        status, body = await anyio.to_thread.run_sync(_get, base + "/metrics")
        assert status == 200
        names = {family.name for family in text_string_to_metric_families(body)}
        assert "wsup_connections_accepted" in names
        assert (await anyio.to_thread.run_sync(_get, base + "/healthz"))[0] == 200
        assert (await anyio.to_thread.run_sync(_get, base + "/readyz"))[0] == 200
        status, body = await anyio.to_thread.run_sync(_get, base + "/echo")
        assert status == 404
        assert "serves /metrics" in body
        main_host, main_port = server.ports[0]
        status, _ = await anyio.to_thread.run_sync(_get, f"http://{main_host}:{main_port}/metrics")
        assert status == 200
