"""``wsup serve --redis`` and ``--workers N`` as real processes, with a real redis-server.

Every test runs ``python -m supervisor serve tests.e2e.apps.cluster_app:app`` as
a child process on a free loopback port and follows its JSON log (master and
workers share stderr), with its own ``redis-server`` on a free port. Clients
are ``websockets`` sync clients; which worker a connection landed on is the
``pid`` in its "ready" message. The kernel spreads connections over the workers
(``SO_REUSEPORT``), so tests open connections until they have seen the worker
they need, with a bound that makes "never" a 2**-64 event, not a timing guess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.apps.server_process import ServerProcess, free_port, run_cli
from tests.helpers.clients import http_get
from tests.helpers.redis_server import REDIS_SERVER, RedisServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

APP = "tests.e2e.apps.cluster_app:app"
TIMEOUT = 20.0
"""Seconds to wait for one message or log event (a deadlock guard, not a measurement)."""
ATTEMPTS = 64
"""Connections opened at most to land on a given one of two workers."""


def metric(port: int, name: str, **labels: str) -> float:
    """Scrape ``/metrics`` and return one sample's value."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    raise AssertionError(f"no sample {name}{labels}")


class Client:
    """A cluster-app connection: knows its user and the worker it landed on."""

    def __init__(self, server: ServerProcess, user: str) -> None:
        self.user = user
        self.ws: ClientConnection = connect(
            server.url(f"/node?user={user}"), open_timeout=TIMEOUT, ping_interval=None
        ).__enter__()
        self.ready: dict[str, Any] = json.loads(self.ws.recv(timeout=TIMEOUT))["ready"]
        self.pid: int = self.ready["pid"]

    def send(self, to: str, text: str) -> None:
        """Ask this connection to send ``text`` to ``to``; check the reply."""
        self.ws.send(json.dumps({"op": "send", "to": to, "text": text}))
        assert json.loads(self.ws.recv(timeout=TIMEOUT)) == {"reply": "sent"}

    def recv(self) -> str | bytes:
        """Return the next message."""
        return self.ws.recv(timeout=TIMEOUT)

    def close_code(self) -> int | None:
        """Wait for the server to close the connection; return its close code."""
        try:
            while True:
                self.ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None

    def close(self) -> None:
        """Close from this side (quietly, whatever state it is in)."""
        with contextlib.suppress(Exception):  # already broken is fine
            self.ws.close()


def land_on(server: ServerProcess, pid: int, clients: list[Client]) -> Client:
    """Open connections (kept in ``clients``) until one lands on worker ``pid``."""
    for _ in range(ATTEMPTS):
        client = Client(server, f"user{len(clients)}")
        clients.append(client)
        if client.pid == pid:
            return client
    raise AssertionError(f"{ATTEMPTS} connections and none landed on worker {pid}")


# --- one process with --redis ---------------------------------------------------------------


def test_unreachable_redis_is_one_error_line_naming_the_url() -> None:
    """``--redis`` to a port nobody listens on: exit 1 and one line naming the URL (no
    password) and the way out."""
    port = free_port()
    url = f"redis://:secret@127.0.0.1:{port}/0"
    result = run_cli("serve", APP, "--redis", url, "--port", str(free_port()))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    shown = f"redis://:***@127.0.0.1:{port}/0"
    assert lines[0].startswith(f"wsup: error: cannot connect to Redis at {shown}: ")
    assert "--redis-optional" in lines[0]
    assert "secret" not in result.stderr


def test_redis_optional_starts_unready_and_becomes_ready_with_redis() -> None:
    """``--redis-optional``: serves without Redis, /readyz 503 until Redis appears."""
    redis_server = RedisServer(free_port())
    try:
        with ServerProcess(APP, "--redis", redis_server.url, "--redis-optional") as node:
            node.wait_started()
            assert http_get(node.port, "/readyz") == (503, "backplane down\n")
            assert http_get(node.port, "/healthz")[0] == 200
            redis_server.start()
            node.wait_for_event("backplane.connected", timeout=TIMEOUT)
            assert http_get(node.port, "/readyz") == (200, "ready\n")
            node.signal(signal.SIGTERM)
            assert node.wait(TIMEOUT) == 0
    finally:
        redis_server.stop()


# --- --workers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "2", "--port", "0"], "--workers needs a fixed --port"),
        (["--redis-node-ttl", "0"], "--redis-node-ttl must be > 0"),
    ],
)
def test_bad_cluster_options_are_usage_errors(args: list[str], expected: str) -> None:
    """Impossible worker or Redis settings: one line, exit 2, nothing started."""
    result = run_cli("serve", APP, "--port", str(free_port()), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wsup: error: {expected}")


def test_one_worker_is_the_single_process_server() -> None:
    """``--workers 1`` (the default) serves from the process itself, with no master."""
    with ServerProcess(APP, "--workers", "1") as server:
        server.wait_started()
        status, body = http_get(server.port, "/whoami")
        assert status == 200
        assert json.loads(body)["pid"] == server.pid
        assert server.events("worker.spawned") == []
        server.signal(signal.SIGTERM)
        assert server.wait(TIMEOUT) == 0


def test_a_worker_that_cannot_start_stops_the_master() -> None:
    """``--workers 2`` with Redis unreachable: the first worker's error, once, and exit 1."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli("serve", APP, "--workers", "2", "--redis", url, "--port", str(free_port()))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("wsup: error:")]
    assert errors == [errors[0]]
    assert f"cannot connect to Redis at {url}" in errors[0]
    assert '"workers.start_failed"' in result.stderr


def test_workers_share_the_port_restart_a_crashed_worker_and_drain_on_sigterm(
    redis_server: RedisServer,
) -> None:
    """``--workers 2 --redis``: connections land on both workers and reach each other; the
    metrics add up over workers; a killed worker is restarted; SIGTERM drains all, exit 0."""
    clients: list[Client] = []
    args = ["--workers", "2", "--redis", redis_server.url, "--drain-timeout", "10"]
    with ServerProcess(APP, *args) as master:
        try:
            ready = master.wait_started("workers.started")
            first, second = ready["pids"]
            assert master.pid not in (first, second)
            on_first = land_on(master, first, clients)
            on_second = land_on(master, second, clients)

            # A direct message between connections held by different processes.
            on_first.send(f"user:{on_second.user}", "across workers")
            assert on_second.recv() == "across workers"
            # Any worker's /metrics reports the open connections of both.
            assert metric(master.port, "wsup_connections", state="open") == len(clients)

            # A worker killed with SIGKILL is restarted, with a log line naming it.
            os.kill(second, signal.SIGKILL)
            exited = master.wait_for_event("worker.exited", where=lambda r: r["pid"] == second)
            assert exited["status"] == "killed by SIGKILL"
            assert exited["level"] == "warning"
            restarted = master.wait_for_event(
                "worker.started", where=lambda r: r["pid"] not in (first, second)
            )
            third = restarted["pid"]
            for client in [c for c in clients if c.pid == second]:
                client.close()
                clients.remove(client)
            # The dead worker's connections no longer count.
            assert metric(master.port, "wsup_connections", state="open") == len(clients)
            on_third = land_on(master, third, clients)
            on_first.send(f"user:{on_third.user}", "to the new worker")
            assert on_third.recv() == "to the new worker"

            # SIGTERM: every worker drains its connections (close 1001), then all exit.
            master.signal(signal.SIGTERM)
            assert {client.close_code() for client in clients} == {1001}
            assert master.wait(TIMEOUT) == 0
            assert master.events("workers.stopped")[-1]["status"] == 0
            drained = master.events("server.drain_completed")
            assert len(drained) == 2
            assert all(record["cancelled"] == 0 for record in drained)
        finally:
            for client in clients:
                client.close()
