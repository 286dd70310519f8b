"""Out of file descriptors: ``wsup serve`` survives, says so, and serves again afterwards.

Each test starts ``python -m supervisor serve examples.echo:app`` with a low
soft limit of open descriptors and opens more real connections on 127.0.0.1
than the process can hold, on asyncio (uvloop, accepting in transport
callbacks) and on trio (anyio's accept loop).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.clients import http_get, open_ws

pytestmark = pytest.mark.e2e

OPEN_FILES = 128
"""The server's soft descriptor limit: the interpreter and the loop take a few dozen."""
CLIENTS = OPEN_FILES + 40
"""Connections opened at once: more than the server can hold whatever its own share."""


def upgrade_request(port: int) -> bytes:
    """An opening handshake for ``/echo``: an accepted socket becomes an open connection."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@contextlib.contextmanager
def flood(port: int, count: int) -> Iterator[list[socket.socket]]:
    """Open ``count`` connections that each ask for a WebSocket; close them all on exit.

    The kernel completes each TCP handshake whether or not the server accepts,
    so every ``connect`` returns; the ones not accepted wait in the backlog.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            socks.append(sock)
            sock.sendall(upgrade_request(port))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def metric(port: int, name: str, **labels: str) -> float:
    """Read one sample from the server's /metrics."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_running_out_of_descriptors_is_survived_logged_counted_and_recovered(
    backend: str,
) -> None:
    """accept() failing with EMFILE leaves the server up, logged, counted, and serving later."""
    with ServerProcess("examples.echo:app", "--backend", backend, open_files=OPEN_FILES) as server:
        server.wait_started()
        with open_ws(server.url("/echo")) as early:
            with flood(server.port, CLIENTS):
                failed = server.wait_for_event("server.accept_failed")
                assert failed["errno"] == "EMFILE"
                assert failed["level"] == "error"
                assert server.returncode is None
                # A connection opened before keeps working while descriptors are exhausted.
                early.send("still here")
                assert early.recv(timeout=20) == "still here"
            # The flood's sockets are closed: the server frees their descriptors and
            # accepts again (the backlog first, then this client).
            assert http_get(server.port, "/healthz") == (200, "ok\n")
            failures = metric(server.port, "wsup_accept_failures_total", error="emfile")
            assert failures >= 1
            with open_ws(server.url("/echo")) as late:
                late.send("new client")
                assert late.recv(timeout=20) == "new client"
        assert server.returncode is None
        assert not server.events("server.crashed")
