"""A burst of connects against ``wsup serve``: how admission settings change its outcome.

``python -m bench.burst --clients 3000 [--processes 2] [-- wsup serve flags...]``
starts ``wsup serve examples.echo:app`` on a free loopback port with the flags
given after ``--`` (``--max-handshakes 256``, ``--accept-rate 1000/200``...),
then client processes that all connect at the same instant. Each client sends
an upgrade request; on a 101 it holds the connection until every client is in
and the server's figures are read (so closing them all is not counted); on a
503 it waits ``Retry-After`` seconds and tries again, as a well-behaved client
does; a connect that fails or times out is retried after a second. It
prints one JSON object: the time until the last client was in, percentiles of
the time each client took, the 503s and failures by kind, and what the server
counted (``wsup_limited_total``, the event-loop lag histogram's top buckets
and its 99th percentile, its CPU seconds).

It measures the choice made in ``docs/hardening.md`` (answer 503 with
``Retry-After`` or leave connections in the listen backlog); the reconnect
storm of a whole deploy is the ``make bench`` storm scenario's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

from bench import procfs
from bench.storm import LAG_BOUNDS, quantile

REQUEST = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
CONNECT_TIMEOUT = 30.0


async def _one_client(port: int, start: float, outcome: Counter[str]) -> tuple[float, Any]:
    """Connect until upgraded; the seconds it took from ``start`` and the open stream."""
    while True:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT
            )
        except TimeoutError:
            outcome["connect_timeout"] += 1
            await asyncio.sleep(1.0)
            continue
        except OSError as exc:
            outcome[f"connect_{type(exc).__name__}"] += 1
            await asyncio.sleep(1.0)
            continue
        try:
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            outcome[f"handshake_{type(exc).__name__}"] += 1
            writer.close()
            await asyncio.sleep(1.0)
            continue
        if head.startswith(b"HTTP/1.1 101"):
            outcome["upgraded"] += 1
            return time.monotonic() - start, writer
        status = head[9:12].decode()
        outcome[f"status_{status}"] += 1
        retry = 1.0
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("retry-after:"):
                retry = float(line.split(":", 1)[1])
        writer.close()
        await asyncio.sleep(retry)


async def _clients(port: int, count: int, start: float, queue: Any, done: Any) -> None:
    """Connect ``count`` clients; report; close them once ``done`` is set (after the
    server was scraped, so that closing them all is not part of the burst's figures)."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    outcome: Counter[str] = Counter()
    results = await asyncio.gather(*(_one_client(port, start, outcome) for _ in range(count)))
    queue.put({"times": sorted(t for t, _ in results), "outcome": dict(outcome)})
    await asyncio.to_thread(done.wait)
    for _, writer in results:
        writer.close()


def _client_process(port: int, count: int, start: float, queue: Any, done: Any) -> None:
    import uvloop

    uvloop.run(_clients(port, count, start, queue, done))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The server's ``wsup_limited_total`` and loop-lag buckets, by sample line."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = (
        "wsup_limited_total{",
        "wsup_event_loop_lag_seconds_bucket{",
        "wsup_event_loop_lag_seconds_sum ",
        "wsup_handshakes_total{",
        "wsup_gc_pause_seconds_",
    )
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, value = line.rsplit(" ", 1)
            if float(value):
                samples[name] = float(value)
    return samples


def _lag_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The event-loop lag during the burst, from the histogram's difference: the beats,
    their mean, the 99th percentile as Prometheus's ``histogram_quantile`` estimates it,
    and the bucket bounds under which 99 % and all of them fell."""
    prefix = "wsup_event_loop_lag_seconds_bucket{le="
    buckets = sorted(
        (float(name[len(prefix) + 1 : -2]), after[name] - before.get(name, 0.0))
        for name in after
        if name.startswith(prefix)
    )
    total = buckets[-1][1] if buckets else 0.0
    p99 = next((le for le, n in buckets if n >= 0.99 * total), None)
    top = next((le for le, n in buckets if n >= total), None)
    lag_sum = "wsup_event_loop_lag_seconds_sum"
    spent = after.get(lag_sum, 0.0) - before.get(lag_sum, 0.0)
    # Buckets with no beat are left out of a scrape: count each bound at its cumulative value.
    bounds = (*LAG_BOUNDS, math.inf)
    counts = [max((n for le, n in buckets if le <= bound), default=0.0) for bound in bounds]
    estimate = quantile(0.99, counts) if total else math.nan
    return {
        "beats": total,
        "mean_s": round(spent / total, 4) if total else None,
        "p99_s": None if math.isnan(estimate) else round(estimate, 4),
        "p99_under_s": p99,
        "max_under_s": top,
    }


def _gc_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The garbage collector's pauses during the burst, by generation: how many, their
    total and mean, and the bucket bound under which the longest fell."""
    summary: dict[str, Any] = {}
    for generation in ("0", "1", "2"):
        label = f'generation="{generation}"'

        def delta(name: str, label: str = label) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        count = delta(f"wsup_gc_pause_seconds_count{{{label}}}")
        total = delta(f"wsup_gc_pause_seconds_sum{{{label}}}")
        prefix = f"wsup_gc_pause_seconds_bucket{{{label},le="
        buckets = sorted(
            (float(name[len(prefix) + 1 : -2]), delta(name))
            for name in after
            if name.startswith(prefix)
        )
        top = next((le for le, n in buckets if n >= count), None) if count else None
        summary[generation] = {
            "count": count,
            "total_s": round(total, 4),
            "mean_s": round(total / count, 5) if count else None,
            "max_under_s": top,
        }
    return summary


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("serve_flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flags = [f for f in args.serve_flags if f != "--"]
    port, metrics_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "supervisor", "serve", "examples.echo:app"]
    command += ["--port", str(port), "--metrics-port", str(metrics_port)]
    command += ["--backend", args.backend, "--log-level", "error", *flags]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.1)
        cpu_before = procfs.cpu_seconds(server.pid)
        scraped_before = _scrape(metrics_port)
        start = time.monotonic() + 1.0  # every process connects at this instant
        context = multiprocessing.get_context("spawn")
        queue: Any = context.Queue()
        done = context.Event()
        share = [args.clients // args.processes] * args.processes
        share[0] += args.clients - sum(share)
        workers = [
            context.Process(target=_client_process, args=(port, n, start, queue, done))
            for n in share
        ]
        for worker in workers:
            worker.start()
        parts = [queue.get() for _ in workers]
        scraped = _scrape(metrics_port)
        cpu = procfs.cpu_seconds(server.pid) - cpu_before
        rss = procfs.rss_bytes(server.pid)
        done.set()
        for worker in workers:
            worker.join()
        times = sorted(t for part in parts for t in part["times"])
        outcome: Counter[str] = Counter()
        for part in parts:
            outcome.update(part["outcome"])
        print(
            json.dumps(
                {
                    "clients": args.clients,
                    "backend": args.backend,
                    "flags": flags,
                    "all_in_s": round(times[-1], 3),
                    "p50_s": round(_percentile(times, 0.5), 3),
                    "p99_s": round(_percentile(times, 0.99), 3),
                    "outcome": dict(outcome),
                    "server_cpu_s": round(cpu, 2),
                    "server_rss_mib": round(rss / 2**20, 1),
                    "server": {
                        name: value
                        for name, value in scraped.items()
                        if not name.startswith(("wsup_event_loop_lag", "wsup_gc_pause"))
                    },
                    "loop_lag": _lag_summary(scraped_before, scraped),
                    "gc_pauses": _gc_summary(scraped_before, scraped),
                },
                indent=1,
            )
        )
    finally:
        os.killpg(server.pid, 9)
        server.wait()


if __name__ == "__main__":
    main()
