"""``examples/ticker.py`` from outside: real ``wsup serve`` processes, a real redis-server.

The contract: ``/ticker/{symbol}`` for BTC, ETH, SOL (others close with 4004);
a singleton, critical feed publishes ``{"symbol", "price", "seq"}`` to each room
every 100 ms with ``seq`` +1 per tick across the cluster; ``crash-feed`` makes
it raise once; 3 restarts in 5 s are allowed and one more crash makes the
process turn unready, drain and exit non-zero; with ``--workers 2 --redis`` all
clients see one series. Handover after SIGKILL is measured and printed (run
with ``-s`` to see it), never asserted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.clients import http_get
from tests.helpers.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.e2e

APP = "examples.ticker:app"
TIMEOUT = 20.0
"""Seconds to wait for one message or log event (a deadlock guard, not a measurement)."""
CRITICAL_EXIT_STATUS = 3

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def open_ticker(server: ServerProcess, symbol: str) -> ClientConnection:
    """Connect to ``/ticker/{symbol}``."""
    return connect(server.url(f"/ticker/{symbol}"), open_timeout=TIMEOUT, ping_interval=None)


def tick(ws: ClientConnection) -> dict[str, Any]:
    """Receive one price message, decoded."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    decoded: dict[str, Any] = json.loads(message)
    return decoded


def seqs(ws: ClientConnection, count: int) -> list[int]:
    """Receive ``count`` ticks; return their seq numbers."""
    return [tick(ws)["seq"] for _ in range(count)]


def consecutive(numbers: list[int]) -> bool:
    """Whether each number is the previous one plus one."""
    return all(b == a + 1 for a, b in itertools.pairwise(numbers))


def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; return its close code."""
    try:
        while True:
            ws.recv(timeout=TIMEOUT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def test_each_symbol_gets_its_prices_and_an_unknown_symbol_is_closed_with_4004() -> None:
    """BTC, ETH and SOL each receive their own prices with the same consecutive seq
    series; /ticker/DOGE is closed with 4004."""
    with ServerProcess(APP) as server:
        server.wait_started()
        with (
            open_ticker(server, "BTC") as btc,
            open_ticker(server, "ETH") as eth,
            open_ticker(server, "SOL") as sol,
        ):
            for ws, symbol in ((btc, "BTC"), (eth, "ETH"), (sol, "SOL")):
                prices = [tick(ws) for _ in range(5)]
                assert {p["symbol"] for p in prices} == {symbol}
                assert all(isinstance(p["price"], float) and p["price"] > 0 for p in prices)
                assert set(prices[0]) == {"symbol", "price", "seq"}
                assert consecutive([p["seq"] for p in prices])
        with open_ticker(server, "DOGE") as doge, pytest.raises(ConnectionClosed) as info:
            doge.recv(timeout=TIMEOUT)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4004


def test_three_crashes_are_restarts_and_the_fourth_stops_the_process() -> None:
    """Three crash-feed messages: the feed restarts and seq goes on by one. A fourth within
    5 s: /readyz 503, the connection drains with 1001, wsup serve exits with status 3."""
    with ServerProcess(APP) as server:
        server.wait_started()
        with open_ticker(server, "BTC") as ws:
            before = seqs(ws, 3)
            for n in range(1, 4):
                ws.send("crash-feed")
                server.wait_for_event("actor.restarted", count=n, timeout=TIMEOUT)
            after = seqs(ws, 5)
            # No tick lost or repeated over the restarts: one series.
            assert consecutive(before + after)
            assert http_get(server.port, "/readyz")[0] == 200

            ws.send("crash-feed")
            failure = server.wait_for_event("server.critical_failure", timeout=TIMEOUT)
            assert failure["child"] == "PriceFeed"
            # During the readiness grace the node says it is leaving.
            assert http_get(server.port, "/readyz") == (503, "critical 'PriceFeed' failed\n")
            assert close_code(ws) == 1001
        assert server.wait(TIMEOUT) == CRITICAL_EXIT_STATUS
        assert [r["level"] for r in server.events("supervisor.critical_failed")] == ["critical"]
        assert len(server.events("actor.crashed")) == 4


@needs_redis
def test_the_feed_runs_once_across_nodes_and_moves_when_its_node_is_killed(
    redis_server: RedisServer,
) -> None:
    """Two nodes on one Redis: one feed, one seq series on both. SIGKILL its node: the
    other node takes the lease over and the series goes on, with no duplicate."""
    args = ["--redis", redis_server.url]
    with ServerProcess(APP, *args) as a, ServerProcess(APP, *args) as b:
        for node in (a, b):
            node.wait_started()
        with open_ticker(a, "SOL") as on_a, open_ticker(b, "SOL") as on_b:
            seen_a, seen_b = seqs(on_a, 10), seqs(on_b, 10)
            assert consecutive(seen_a)
            assert consecutive(seen_b)
            holders = [n for n in (a, b) if n.events("singleton.acquired")]
            assert len(holders) == 1, "the feed must run on exactly one node"
            holder = holders[0]
            survivor, client = (b, on_b) if holder is a else (a, on_a)
            last = seqs(client, 1)[0]

            killed_at = time.monotonic()
            os.kill(holder.pid, signal.SIGKILL)
            resumed = seqs(client, 1)[0]
            handover = time.monotonic() - killed_at
            later = seqs(client, 10)
            acquired = survivor.wait_for_event("singleton.acquired", timeout=TIMEOUT)
            print(f"\nsingleton handover after SIGKILL: {handover:.3f} s (seq {last} -> {resumed})")
            assert acquired["token"] >= 2  # a new fencing token: a new holder
            assert resumed > last
            assert consecutive([resumed, *later])
            holder.wait(TIMEOUT)


@needs_redis
def test_two_workers_share_one_feed_and_one_series(redis_server: RedisServer) -> None:
    """``--workers 2 --redis``: every client, whichever worker it landed on, sees the
    same consecutive seq series, without duplicates; one worker holds the lease."""
    args = ["--workers", "2", "--redis", redis_server.url]
    with ServerProcess(APP, *args) as master, contextlib.ExitStack() as stack:
        master.wait_started("workers.started")
        # Eight connections: the kernel spreads them over both workers (all on one
        # has probability 2**-7, and the check below holds either way).
        clients = [stack.enter_context(open_ticker(master, "ETH")) for _ in range(8)]
        series = [seqs(ws, 20) for ws in clients]
        for numbers in series:
            assert consecutive(numbers), numbers
        start = max(numbers[0] for numbers in series)
        common = [[n for n in numbers if start <= n < start + 10] for numbers in series]
        assert all(c == common[0] for c in common)
        assert len(master.events("singleton.acquired")) == 1
