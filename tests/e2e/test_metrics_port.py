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
from tests.helpers.processes import free_port
from tests.helpers.server import running_server

pytestmark = pytest.mark.anyio


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


async def test_metrics_port_serves_ops_endpoints_only(anyio_backend: Any) -> None:
    """/metrics, /healthz, /readyz answer on the metrics port; a WebSocket route there is 404."""
    async with running_server(app, metrics_port=free_port()) as server:
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


async def test_metrics_port_keeps_answering_after_stop_accepting(anyio_backend: Any) -> None:
    """ "Stop accepting, keep serving" closes the main port only: probes still reach the node."""
    async with running_server(app, metrics_port=free_port()) as server:
        host, port = server.metrics_ports[0]
        server.stop_accepting()
        await anyio.wait_all_tasks_blocked()
        status, body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/readyz")
        assert (status, body) == (503, "not accepting connections\n")
        assert (await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/healthz"))[0] == 200
        main_host, main_port = server.ports[0]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((main_host, main_port), timeout=5).close()
