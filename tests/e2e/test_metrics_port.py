"""``ServerConfig.metrics_port``, ``ops_port_only``, ``ops_allow``, ``server_header``: where
the ops endpoints are served, to whom, and what the ``Server`` header says."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.echo import app
from supervisor.server._server import VERSION
from tests.helpers.clients import open_ws
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


def _head(port: int, request: bytes) -> bytes:
    """Send ``request`` on a raw socket; return the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.partition(b"\r\n\r\n")[0]


async def test_ops_port_only_takes_them_off_the_main_port(anyio_backend: Any) -> None:
    """ops_port_only: the main port answers /metrics 404 like any unknown path; the
    metrics port still serves it."""
    async with running_server(app, metrics_port=free_port(), ops_port_only=True) as server:
        host, port = server.metrics_ports[0]
        main_host, main_port = server.ports[0]
        for path in ("/metrics", "/healthz", "/readyz"):
            status, body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}{path}")
            assert status == 200
            status, body = await anyio.to_thread.run_sync(
                _get, f"http://{main_host}:{main_port}{path}"
            )
            assert (status, body) == (404, f"no route for {path}\n")


async def test_ops_allow_refuses_other_networks_on_every_port(anyio_backend: Any) -> None:
    """ops_allow without the loopback: 403 on both ports; WebSockets are not concerned."""
    async with running_server(app, metrics_port=free_port(), ops_allow=["10.0.0.0/8"]) as server:
        for host, port in (server.ports[0], server.metrics_ports[0]):
            status, body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/metrics")
            assert (status, body) == (403, "forbidden: /metrics is not served to 127.0.0.1\n")
        main_host, main_port = server.ports[0]

        def echo() -> str | bytes:
            with open_ws(f"ws://{main_host}:{main_port}/echo") as ws:
                ws.send("hi")
                return ws.recv()

        assert await anyio.to_thread.run_sync(echo) == "hi"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("version", f"Server: wsup/{VERSION}".encode()), ("name", b"Server: wsup"), ("none", None)],
)
async def test_the_server_header_on_answers_and_the_101(
    anyio_backend: Any, setting: str, expected: bytes | None
) -> None:
    """server_header reaches the wire: on an HTTP answer, a 426 and the 101."""
    upgrade = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    requests = [upgrade, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n"]
    async with running_server(app, server_header=setting) as server:
        _, port = server.ports[0]
        for request in requests:
            head = await anyio.to_thread.run_sync(_head, port, request)
            lines = head.split(b"\r\n")
            servers = [line for line in lines if line.lower().startswith(b"server:")]
            assert servers == ([expected] if expected else []), head
