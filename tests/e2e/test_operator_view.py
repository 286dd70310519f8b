"""What an operator sees of refused and plain-HTTP connections: counters and log lines.

``wsup_connections_accepted_total`` counts every TCP connection the listeners
accept; ``wsup_handshakes_total{result}`` counts the upgrades; every refused
handshake leaves one ``handshake.rejected`` line. Each test runs on both I/O
paths: asyncio transports (``_aio``) and anyio streams (trio).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from supervisor import App, Handler, HTTPResponse, Reject, Request, ServerConfig
from tests.helpers.metrics import sample
from tests.helpers.raw import exchange_bytes
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class _Echo(Handler):
    """Echoes every message."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def _token_hook(request: Request) -> Reject | None:
    """Lets ``?token=good`` in; anything else gets 401."""
    if request.query_param("token") == "good":
        return None
    return Reject(401, "missing token\n")


async def _token_hook_async(request: Request) -> Reject | None:
    """The async twin of :func:`_token_hook`."""
    return _token_hook(request)


def _app(hook: Any = _token_hook, **config: Any) -> App:
    app = App(config=ServerConfig(**config))
    app.add_route("/echo", _Echo, hook=hook)

    @app.http("/status")
    def status(request: Request) -> HTTPResponse:
        return HTTPResponse("fine\n")

    return app


def _open_and_echo(url: str) -> str | bytes:
    with connect(url, proxy=None, open_timeout=10) as ws:
        ws.send("hi")
        return ws.recv(timeout=10)


def _refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        connect(url, proxy=None, open_timeout=10, **kwargs)
    return info.value.response.status_code


@pytest.fixture
def server_logs_at_debug() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture structlog events with the server's logger at DEBUG, as ``--log-level debug``."""
    logger = logging.getLogger("wsup.server")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        logger.setLevel(previous)


async def test_connections_accepted_counts_every_tcp_connection() -> None:
    """3 upgrades, 5 refused upgrades, a plain GET (426) and 2 HTTP requests are 11 accepted
    TCP connections; the handshakes read 3 accepted, 5 rejected, 1 failed."""
    async with running_server(_app()) as server:
        port = server.ports[0][1]
        for _ in range(3):
            assert await in_thread(_open_and_echo, ws_url(server, "/echo?token=good")) == "hi"
        for _ in range(5):
            assert await in_thread(_refused_status, ws_url(server, "/echo")) == 401
        plain = await exchange_bytes(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 426")
        assert (await exchange_bytes(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        assert (await exchange_bytes(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        assert sample(server, "wsup_connections_accepted_total") == 11
        assert sample(server, "wsup_handshakes_total", result="accepted") == 3
        assert sample(server, "wsup_handshakes_total", result="rejected") == 5
        assert sample(server, "wsup_handshakes_total", result="failed") == 1


async def test_the_metrics_port_does_not_count_as_accepted_connections() -> None:
    """Scrapes on ``metrics_port`` are not client traffic: the accept counter stays put."""
    async with running_server(_app(), metrics_port=0) as server:
        metrics_port = server.metrics_ports[0][1]
        answer = await exchange_bytes(metrics_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert sample(server, "wsup_connections_accepted_total") == 0


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_a_hook_rejection_is_logged(
    style: str, server_logs_at_debug: list[MutableMapping[str, Any]]
) -> None:
    """A hook's 401 leaves one INFO ``handshake.rejected`` line with status, path, client."""
    hook = _token_hook if style == "sync" else _token_hook_async
    async with running_server(_app(hook)) as server:
        assert await in_thread(_refused_status, ws_url(server, "/echo?token=bad")) == 401
    rejected = [e for e in server_logs_at_debug if e["event"] == "handshake.rejected"]
    assert len(rejected) == 1
    assert rejected[0]["log_level"] == "info"
    assert rejected[0]["reason"] == "hook"
    assert rejected[0]["status"] == 401
    assert rejected[0]["path"] == "/echo"
    assert rejected[0]["client"] == "127.0.0.1"


async def test_every_refusal_by_the_server_is_logged(
    server_logs_at_debug: list[MutableMapping[str, Any]],
) -> None:
    """Unknown route and disallowed Origin log ``handshake.rejected`` with their reason;
    the connection limit, an overload, logs ``server.limited`` (at a bounded rate)."""
    app = _app(None, origins=("https://good.example",), max_connections=1)
    async with running_server(app) as server:
        assert await in_thread(_refused_status, ws_url(server, "/nowhere")) == 404
        evil = ws_url(server, "/echo")
        assert await in_thread(lambda: _refused_status(evil, origin="https://evil.example")) == 403
        good: dict[str, Any] = {"origin": "https://good.example"}

        def one_held_then_one_refused() -> int:
            with connect(ws_url(server, "/echo"), proxy=None, open_timeout=10, **good) as ws:
                ws.send("hold")
                assert ws.recv(timeout=10) == "hold"
                return _refused_status(ws_url(server, "/echo"), **good)

        assert await in_thread(one_held_then_one_refused) == 503
        assert sample(server, "wsup_handshakes_total", result="rejected") == 3
    rejected = [
        (e["reason"], e["status"], e["path"], e["log_level"])
        for e in server_logs_at_debug
        if e["event"] == "handshake.rejected"
    ]
    assert rejected == [
        ("no_route", 404, "/nowhere", "info"),
        ("origin", 403, "/echo", "info"),
    ]
    limited = [
        (e["limit"], e["path"], e["client"], e["log_level"])
        for e in server_logs_at_debug
        if e["event"] == "server.limited"
    ]
    assert limited == [("max_connections", "/echo", "127.0.0.1", "warning")]


async def test_a_failed_handshake_is_logged_at_debug(
    server_logs_at_debug: list[MutableMapping[str, Any]],
) -> None:
    """A plain GET on a WebSocket route (426) logs ``handshake.failed`` with the error."""
    async with running_server(_app()) as server:
        answer = await exchange_bytes(server.ports[0][1], b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 426")
    failed = [e for e in server_logs_at_debug if e["event"] == "handshake.failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "debug"
    assert failed[0]["result"] == "failed"
    assert failed[0]["path"] == "/echo"
    assert failed[0]["error"].startswith("426")
    assert failed[0]["client"] == "127.0.0.1"


class _Fragile(Handler):
    """Raises on ``boom``, echoes anything else."""

    async def on_message(self, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        await self.conn.send(message)


async def test_a_connection_crash_is_logged_with_its_route_and_path(
    server_logs_at_debug: list[MutableMapping[str, Any]],
) -> None:
    """``actor.crashed`` and ``actor.restarted`` of a connection name its route and path."""
    app = App()
    app.add_route("/rooms/{room}", _Fragile)
    async with running_server(app) as server:

        def crash_then_echo() -> str | bytes:
            with connect(ws_url(server, "/rooms/lobby"), proxy=None, open_timeout=10) as ws:
                ws.send("boom")
                ws.send("still here")  # processed by the restarted behaviour
                return ws.recv(timeout=10)

        assert await in_thread(crash_then_echo) == "still here"
    for event in ("actor.crashed", "actor.restarted"):
        lines = [e for e in server_logs_at_debug if e["event"] == event]
        assert len(lines) == 1, event
        assert lines[0]["route"] == "/rooms/{room}"
        assert lines[0]["path"] == "/rooms/lobby"
        assert lines[0]["actor"].startswith("conn:")


async def test_server_started_lists_the_http_routes(
    server_logs_at_debug: list[MutableMapping[str, Any]],
) -> None:
    """``server.started`` names the ``App.http`` paths beside the WebSocket routes."""
    async with running_server(_app()):
        pass
    started = [e for e in server_logs_at_debug if e["event"] == "server.started"]
    assert len(started) == 1
    assert started[0]["routes"] == ["/echo"]
    assert started[0]["http_routes"] == ["/status"]


def test_the_rejected_label_lists_every_refusal_reason() -> None:
    """The catalogue's ``rejected`` covers what the server counts there, not only hooks."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `result` |"))
    for cause in ("no route", "origin", "connection limit", "drain", "hook"):
        assert cause in row, cause
