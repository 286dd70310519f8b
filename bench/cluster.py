"""Cross-node delivery through Redis against same-node delivery (not a test).

Reports, in one run, throughput (messages/s) and latency (p50, p99: from the
``send`` call to the receiving actor's ``receive``) of messages sent to a name,
``user:sink``, held by one actor:

* **same node, in-process**: the default single-node backplane, the floor;
* **same node, Redis**: the same actors on a node with a Redis backplane (the
  runtime delivers locally and still publishes once, since other nodes could
  hold the name too: every send pays a Redis round trip);
* **cross node, Redis**: the sink lives in another process (another node),
  so every message goes sender → Redis → receiving node.

Each path runs with one sender (every send waits for Redis's answer before the
next: latency-bound) and with several concurrent senders (their publishes share
pipelines: throughput-bound). The benchmark starts its own ``redis-server`` on
a free port (never the machine's Redis) and its receiving node as a child
process; sender and receiver read the same monotonic clock (``perf_counter``,
system-wide on Linux), so cross-process latencies are comparable. Every
configuration runs ``--repeats`` times; the table shows medians.

Usage: ``python -m bench.cluster [--messages N] [--senders 1,16] [--repeats N]
[--backends asyncio,trio]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from actors import Actor, MailboxConfig
from supervisor import ActorSystem
from supervisor.redis import RedisBackplane

SINK = "user:sink"
"""The name the receiving actor answers to."""


# --- the receiving side ---------------------------------------------------------------------


class _Sink(Actor):
    """Records the latency of every message; reports when the end marker arrives."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report
        self.latencies: list[int] = []
        self.last = 0

    async def on_start(self) -> None:
        self.context.register(SINK)

    async def on_receive(self, message: Any) -> None:
        now = time.perf_counter_ns()
        if isinstance(message, list):
            self.latencies.append(now - message[1])
            self.last = now
            return
        if isinstance(message, dict) and "end" in message:
            latencies = sorted(self.latencies)
            received = len(latencies)
            elapsed = (self.last - message["started"]) / 1e9 if received else 0.0
            self.report(
                {
                    "received": received,
                    "rate": received / elapsed if elapsed > 0 else 0.0,
                    "p50": _percentile(latencies, 0.50) / 1e3,
                    "p99": _percentile(latencies, 0.99) / 1e3,
                }
            )
            self.latencies = []
            self.last = 0


def _percentile(sorted_values: list[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return float(sorted_values[index])


def _mailbox(messages: int) -> MailboxConfig:
    # Room for a whole run: the benchmark measures transport, not overflow policy.
    return MailboxConfig(capacity=messages + 1024)


async def _receiver_main(url: str, messages: int) -> None:
    """The child process: one node holding the sink; results as JSON lines on stdout."""

    def report(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)

    backplane = RedisBackplane(url)
    async with ActorSystem(backplane=backplane) as system:
        await system.spawn(lambda: _Sink(report), mailbox=_mailbox(messages))
        await backplane.synced()
        print(json.dumps({"ready": True}), flush=True)
        # Ends when the parent closes stdin.
        await anyio.to_thread.run_sync(sys.stdin.read)


# --- the sending side -------------------------------------------------------------------------


async def _send_round(system: ActorSystem, messages: int, senders: int) -> None:
    started = time.perf_counter_ns()
    per_sender = messages // senders

    async def sender() -> None:
        for index in range(per_sender):
            await system.send(SINK, [index, time.perf_counter_ns()])

    async with anyio.create_task_group() as tg:
        for _ in range(senders):
            tg.start_soon(sender)
    # Sent after every publish was acknowledged: Redis forwards it last.
    await system.send(SINK, {"end": True, "started": started})


@dataclass(frozen=True, slots=True)
class Result:
    """One run of one configuration."""

    path: str
    backend: str
    senders: int
    received: int
    sent: int
    rate: float
    p50: float
    p99: float


async def _same_node(
    url: str | None, backend: str, messages: int, senders: int, repeats: int
) -> list[Result]:
    path = "same node, Redis" if url else "same node, in-process"
    results: list[Result] = []
    reports: list[dict[str, Any]] = []
    arrived = anyio.Event()

    def report(result: dict[str, Any]) -> None:
        reports.append(result)
        arrived.set()

    backplane = RedisBackplane(url) if url else None
    async with ActorSystem(backplane=backplane) as system:
        await system.spawn(lambda: _Sink(report), mailbox=_mailbox(messages))
        for _ in range(repeats):
            arrived = anyio.Event()
            await _send_round(system, messages, senders)
            await arrived.wait()
            results.append(_result(path, backend, senders, messages, reports[-1]))
    return results


async def _cross_node(
    url: str, backend: str, label: str, messages: int, senders: int, repeats: int
) -> list[Result]:
    command = [sys.executable, "-m", "bench.cluster", "--receive", url]
    command += ["--messages", str(messages), "--backends", backend]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    child = await anyio.to_thread.run_sync(start)
    assert child.stdin is not None
    assert child.stdout is not None
    stdout = child.stdout
    results: list[Result] = []
    try:
        ready = json.loads(await anyio.to_thread.run_sync(stdout.readline))
        assert ready == {"ready": True}, ready
        async with ActorSystem(backplane=RedisBackplane(url)) as system:
            for _ in range(repeats):
                await _send_round(system, messages, senders)
                line = await anyio.to_thread.run_sync(stdout.readline)
                result = _result("cross node, Redis", label, senders, messages, json.loads(line))
                results.append(result)
    finally:
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        stdout.close()
    return results


def _result(path: str, backend: str, senders: int, messages: int, report: dict[str, Any]) -> Result:
    return Result(
        path=path,
        backend=backend,
        senders=senders,
        received=report["received"],
        sent=messages // senders * senders,
        rate=report["rate"],
        p50=report["p50"],
        p99=report["p99"],
    )


# --- redis-server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _redis_server() -> Iterator[tuple[str, str]]:
    """Run a private redis-server on a free port; yield its URL and version."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (apt install redis-server)")
    version = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    port = _free_port()
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--daemonize", "no", "--logfile", ""]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "Ready to accept connections" in line:
            break
    else:
        raise SystemExit("redis-server did not start")
    # Keep reading its log so that a full pipe never stalls it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    shown = next((word[2:] for word in version if word.startswith("v=")), "?")
    try:
        yield f"redis://127.0.0.1:{port}/0", shown
    finally:
        process.terminate()
        process.wait(10)


# --- report ----------------------------------------------------------------------------------


_ROW = "{:<15} {:<22} {:>7} {:>9} {:>8} {:>9} {:>5}"


def _table(results: list[Result]) -> str:
    groups: dict[tuple[str, str, int], list[Result]] = {}
    for result in results:
        groups.setdefault((result.backend, result.path, result.senders), []).append(result)
    header = _ROW.format("backend", "path", "senders", "msg/s", "p50 µs", "p99 µs", "lost")
    lines = [header, "-" * len(header)]
    for (backend, path, senders), runs in groups.items():
        rate = statistics.median(r.rate for r in runs)
        p50 = statistics.median(r.p50 for r in runs)
        p99 = statistics.median(r.p99 for r in runs)
        lost = sum(r.sent - r.received for r in runs)
        numbers = (f"{rate:,.0f}", f"{p50:,.0f}", f"{p99:,.0f}")
        lines.append(_ROW.format(backend, path, senders, *numbers, lost))
    return "\n".join(lines)


async def _run_backend(
    url: str, backend: str, label: str, messages: int, senders_list: list[int], repeats: int
) -> list[Result]:
    results: list[Result] = []
    for senders in senders_list:
        results += await _same_node(None, label, messages, senders, repeats)
        results += await _same_node(url, label, messages, senders, repeats)
        results += await _cross_node(url, backend, label, messages, senders, repeats)
    return results


def _backend_options(backend: str) -> tuple[str, dict[str, Any], str]:
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio", {}, "asyncio"
        return "asyncio", {"use_uvloop": True}, "asyncio+uvloop"
    return backend, {}, backend


def _run(main: Callable[..., Awaitable[Any]], backend: str, *args: Any) -> Any:
    name, options, _ = _backend_options(backend)
    return anyio.run(main, *args, backend=name, backend_options=options)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=summary)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run")
    parser.add_argument("--senders", default="1,16", help="concurrent senders, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--backends", default="asyncio", help="asyncio, trio or both")
    parser.add_argument("--receive", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # The benchmark's own output only: wsup's log lines would interleave with it.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    if args.receive:
        _run(_receiver_main, args.backends, args.receive, args.messages)
        return
    senders = [int(s) for s in args.senders.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: list[Result] = []
    with _redis_server() as (url, version):
        print(
            f"wsup cluster benchmark: {args.messages:,} messages per run, median of "
            f"{args.repeats}; Python {platform.python_version()}, Redis {version}, "
            f"{os.cpu_count()} CPUs; sender, receiver and redis-server on one machine"
        )
        for backend in backends:
            label = _backend_options(backend)[2]
            settings = (url, backend, label, args.messages, senders, args.repeats)
            results += _run(_run_backend, backend, *settings)
    print(_table(results))


if __name__ == "__main__":
    main()
