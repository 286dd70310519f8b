"""Measure the server API: sends per second, and a presence query over a big group.

``python -m bench.api`` starts a private ``redis-server`` and two
``wsup serve examples.echo:app --redis ...`` nodes with an API key, then:

1. **sends/s**: ``--clients`` threads POST ``/api/send`` to node one as fast as
   they can for ``--seconds``, to an address held by one WebSocket connection on
   node two, whose client reads every message: once with a new TCP connection
   per request (``Connection: close``), once with one kept-alive connection per
   thread (HTTP/1.1 keep-alive), ``--repeats`` times in turn. Prints
   requests/s and the latency percentiles of each run, then the medians.
2. **presence**: writes ``--members`` members of ``room:big`` into the presence
   hash, half under each node's id (what the nodes write when that many
   connections join; the query reads the same data), then times
   ``GET /api/presence?address=room:big`` on a third node ``--queries`` times
   and prints the median and p99. (A node answers for its own members from
   memory, so the query goes to a node that holds none of them.)

Every number depends on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
PREFIX = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(port: int, path: str = "/readyz", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing ready on port {port}")


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _sends(port: int, payload: bytes, clients: int, seconds: float, keep_alive: bool) -> str:
    """``clients`` threads POST ``/api/send`` for ``seconds``; one line of results."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if not keep_alive:
        headers["Connection"] = "close"

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < stop:
                started = time.perf_counter()
                connection.request("POST", "/api/send", body=payload, headers=headers)
                response = connection.getresponse()
                response.read()
                mine.append(time.perf_counter() - started)
                assert response.status == 200
                if not keep_alive:
                    connection.close()  # the next request opens a new one
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - begun
    flat = [x for mine in latencies for x in mine]
    p50, p99 = (_percentile(flat, q) * 1000 for q in (0.5, 0.99))
    rate = len(flat) / elapsed
    how = "keep-alive" if keep_alive else "a new TCP connection per request"
    _RATES.setdefault(keep_alive, []).append((rate, p50))
    return (
        f"sends ({how}): {len(flat)} in {elapsed:.1f} s = {rate:.0f}/s "
        f"({clients} clients); latency p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )


#: sends/s and p50 (ms) of each run, by keep-alive.
_RATES: dict[bool, list[tuple[float, float]]] = {}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    """Run both measurements and print them."""
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each sends mode")
    parser.add_argument("--no-presence", action="store_true", help="measure sends only")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("bench.api needs redis-server")
    with ExitStack() as stack:
        redis_port = _free_port()
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        redis = subprocess.Popen(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            cwd=directory,
            stdout=subprocess.DEVNULL,
        )
        stack.callback(redis.kill)
        url = f"redis://127.0.0.1:{redis_port}/0"
        ports = [_free_port(), _free_port()]
        env = {**os.environ, "WSUP_API_KEY": KEY, "WSUP_REDIS_PREFIX": PREFIX}
        time.sleep(0.5)

        def start_node(port: int) -> None:
            node = subprocess.Popen(
                [
                    *(sys.executable, "-m", "supervisor", "serve", "examples.echo:app"),
                    *("--port", str(port), "--redis", url, "--log-level", "warning"),
                ],
                cwd=ROOT,
                env=env,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(node.kill)

        for port in ports:
            start_node(port)
        for port in ports:
            _wait_http(port)

        # 1. sends/s: node one's API to a connection on node two (its conn address).
        ws = stack.enter_context(connect(f"ws://127.0.0.1:{ports[1]}/echo"))
        status, body = _request(ports[1], "POST", "/api/broadcast", b'{"message": "hello"}')
        assert status == 200, body
        assert ws.recv(timeout=10) == "hello"
        received = [0]

        def read() -> None:
            try:
                while True:
                    ws.recv()
                    received[0] += 1
            except Exception:
                return

        threading.Thread(target=read, daemon=True).start()
        payload = json.dumps({"address": "all", "message": "x" * 64}).encode()
        for _ in range(args.repeats):
            for keep_alive in (False, True):
                print(_sends(ports[0], payload, args.clients, args.seconds, keep_alive))
        for keep_alive, runs in sorted(_RATES.items()):
            how = "keep-alive" if keep_alive else "a new TCP connection per request"
            rate = statistics.median(r for r, _ in runs)
            p50 = statistics.median(p for _, p in runs)
            print(f"median of {len(runs)} ({how}): {rate:.0f} sends/s, p50 {p50:.2f} ms")
        if args.no_presence:
            return

        # 2. presence over --members members, half on each node.
        import redis as redis_module

        client_redis = redis_module.Redis.from_url(url)
        nodes = sorted(
            key.decode().rpartition(":")[2] for key in client_redis.scan_iter(f"{PREFIX}:node:*")
        )
        assert len(nodes) == 2, nodes
        mapping = {f"conn:{nodes[i % 2]}.{100 + i}": nodes[i % 2] for i in range(args.members)}
        client_redis.hset(f"{PREFIX}:presence:room:big", mapping=mapping)
        querier = _free_port()
        start_node(querier)
        _wait_http(querier)
        times: list[float] = []
        for _ in range(args.queries):
            started = time.perf_counter()
            status, body = _request(querier, "GET", "/api/presence?address=room:big")
            times.append(time.perf_counter() - started)
            assert status == 200
            assert json.loads(body)["count"] == args.members
        median, p99 = statistics.median(times) * 1000, _percentile(times, 0.99) * 1000
        print(
            f"presence of {args.members} members on 2 nodes: median {median:.1f} ms, "
            f"p99 {p99:.1f} ms ({args.queries} queries, HTTP included)"
        )


if __name__ == "__main__":
    main()
