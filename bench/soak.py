"""A bounded soak: churn, slow readers, floods, ping floods and idle holders together.

``python -m bench.soak --seconds 300`` (``make soak SOAK_SECONDS=300``) starts
``wsup serve bench.wsup_app:soak`` as a subprocess, lets it settle, then runs
every kind of client of :mod:`bench.soak_clients` at once, each kind in
processes of its own (one process holds at most a few thousand sockets, far
from its descriptor limit). Every ``--interval`` seconds it samples the
server: resident memory (``VmRSS``), open descriptors (``/proc/PID/fd``), CPU
use, open connections and the event loop's lag (the mean of
``wsup_event_loop_lag_seconds`` over the interval, from ``/metrics``). When the
clients stop, it keeps sampling for up to ``--cooldown`` seconds, until the
descriptors are back near where they started.

It prints the time series and a summary, and exits with status 1, naming
what went wrong, when (see :func:`verdict`):

* resident memory grew under steady load: the median of the last third of the
  load samples after warm-up exceeds the median of the first third by more
  than ``max(--rss-floor MiB, --rss-fraction x the first third)``. Medians of
  thirds ignore a single spike (a burst of slow readers filling their
  buffers); a leak of a few hundred bytes per connection or per message
  grows steadily and shows. RSS is not expected to fall back after the load:
  CPython keeps freed memory for reuse.
* descriptors did not come back: after the cooldown the server holds more
  than ``--fd-slack`` descriptors above its idle baseline;
* the server died, stopped answering ``/healthz``, logged an ERROR, or a kind
  of client made no progress at all (the soak then proved nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import procfs
from bench.processes import ROOT, ServerProcess, _die_with_parent, _kill_group
from bench.registry import Compression, Launch, ServerSpec, wsup_serve_command

APP = "bench.wsup_app:soak"
#: Which progress count proves that a kind of client did its work.
PROGRESS = {
    "churn": "cycles",
    "slow": "messages",
    "flood": "messages",
    "ping": "pings",
    "idle": "connections",
}
MIB = 1 << 20


@dataclass(frozen=True)
class Tolerance:
    """What growth the soak forgives.

    Attributes:
        rss_fraction: RSS growth allowed, as a fraction of the early level.
        rss_floor: RSS growth always allowed, in bytes (noise of a small heap).
        fd_slack: descriptors allowed above the idle baseline after the cooldown.
    """

    rss_fraction: float = 0.25
    rss_floor: int = 32 * MIB
    fd_slack: int = 8


@dataclass(frozen=True)
class Sample:
    """One look at the server.

    Attributes:
        t: seconds since the load started (negative before it).
        phase: ``"idle"`` (before the load), ``"load"`` or ``"cooldown"``.
        rss: resident memory in bytes.
        fds: open file descriptors.
        cpu: CPU use since the previous sample, in percent of one core.
        lag: mean event-loop lag over the interval in seconds (``None``: no scrape).
        connections: open WebSocket connections (``None``: no scrape).
    """

    t: float
    phase: str
    rss: int
    fds: int
    cpu: float
    lag: float | None = None
    connections: int | None = None


@dataclass
class Verdict:
    """The soak's conclusion: what grew or failed (nothing: it passed), and the numbers."""

    problems: list[str] = field(default_factory=list)
    rss_early: int | None = None
    rss_late: int | None = None
    fds_baseline: int | None = None
    fds_final: int | None = None

    @property
    def passed(self) -> bool:
        """Whether nothing grew or failed."""
        return not self.problems


def verdict(samples: Sequence[Sample], warmup: float, tolerance: Tolerance) -> Verdict:
    """Judge a soak from its samples (pure; see the module documentation for the rules).

    Args:
        samples: every sample, in time order.
        warmup: seconds of load before RSS counts (pools, caches and buffers fill).
        tolerance: what growth is forgiven.
    """
    result = Verdict()
    idle = [s for s in samples if s.phase == "idle"]
    steady = [s for s in samples if s.phase == "load" and s.t >= warmup]
    cooldown = [s for s in samples if s.phase == "cooldown"]
    if len(steady) < 3:
        result.problems.append(
            f"too few samples after the warm-up to judge RSS ({len(steady)}, need 3): "
            "soak longer or sample more often"
        )
    else:
        third = len(steady) // 3
        early = int(statistics.median(s.rss for s in steady[:third]))
        late = int(statistics.median(s.rss for s in steady[-third:]))
        result.rss_early, result.rss_late = early, late
        allowed = max(tolerance.rss_floor, int(tolerance.rss_fraction * early))
        if late - early > allowed:
            result.problems.append(
                f"RSS grew under steady load: {early / MIB:.1f} -> {late / MIB:.1f} MiB "
                f"(+{(late - early) / MIB:.1f} MiB; allowed +{allowed / MIB:.1f} MiB)"
            )
    if not idle or not cooldown:
        result.problems.append("no idle or cooldown sample: descriptors cannot be compared")
    else:
        baseline = min(s.fds for s in idle)
        final = cooldown[-1].fds
        result.fds_baseline, result.fds_final = baseline, final
        if final > baseline + tolerance.fd_slack:
            result.problems.append(
                f"file descriptors not back after the clients stopped: {final} open, "
                f"{baseline} before the load (allowed +{tolerance.fd_slack})"
            )
    return result


def open_fds(pid: int) -> int:
    """Descriptors ``pid`` holds open (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def scrape(port: int) -> tuple[float, float, int] | None:
    """Event-loop lag sum and count, and open connections, from ``/metrics``; ``None`` on error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    lag_sum = lag_count = 0.0
    connections = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "wsup_event_loop_lag_seconds_sum":
                lag_sum = sample.value
            elif sample.name == "wsup_event_loop_lag_seconds_count":
                lag_count = sample.value
            elif sample.name == "wsup_connections" and sample.labels.get("state") == "open":
                connections = int(sample.value)
    return lag_sum, lag_count, connections


def server_errors(log: Path) -> list[str]:
    """The JSON log lines of ``log`` at ERROR or above."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("level") in ("error", "critical"):
                found.append(line)
    return found


def healthy(port: int) -> bool:
    """Whether ``/healthz`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class Sampler:
    """Takes :class:`Sample` s of one server process."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port
        self.samples: list[Sample] = []
        self._cpu = procfs.cpu_seconds(pid)
        self._wall = time.monotonic()
        self._lag: tuple[float, float] | None = None

    async def take(self, t: float, phase: str) -> Sample:
        """Sample now; ``t`` is the time relative to the load's start."""
        scraped = await asyncio.to_thread(scrape, self.port)
        cpu, wall = procfs.cpu_seconds(self.pid), time.monotonic()
        usage = 100 * (cpu - self._cpu) / max(wall - self._wall, 1e-9)
        self._cpu, self._wall = cpu, wall
        lag = connections = None
        if scraped is not None:
            lag_sum, lag_count, connections = scraped
            if self._lag is not None and lag_count > self._lag[1]:
                lag = (lag_sum - self._lag[0]) / (lag_count - self._lag[1])
            self._lag = (lag_sum, lag_count)
        sample = Sample(
            t, phase, procfs.rss_bytes(self.pid), open_fds(self.pid), usage, lag, connections
        )
        self.samples.append(sample)
        return sample


def row(sample: Sample) -> str:
    """One line of the time series."""
    lag = "-" if sample.lag is None else f"{sample.lag * 1000:.1f}"
    conns = "-" if sample.connections is None else str(sample.connections)
    return (
        f"{sample.t:>7.0f} {sample.phase:<8} {sample.rss / MIB:>8.1f} {sample.fds:>6} "
        f"{sample.cpu:>6.0f} {lag:>8} {conns:>7}"
    )


HEADER = (
    f"{'t (s)':>7} {'phase':<8} {'RSS MiB':>8} {'fds':>6} {'CPU %':>6} {'lag ms':>8} {'conns':>7}"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _server_spec(app: str) -> ServerSpec:
    def command(launch: Launch) -> list[str]:
        return wsup_serve_command(app, launch.port)

    return ServerSpec("wsup", f"wsup serve {app}", command, Compression.UNSUPPORTED, drains=True)


async def _spawn_clients(
    kind: str, processes: int, total: int, port: int, seconds: float, logs: Path
) -> list[asyncio.subprocess.Process]:
    started = []
    for index in range(processes):
        count = total // processes + (1 if index < total % processes else 0)
        if count == 0:
            continue
        with (logs / f"{kind}-{index}.log").open("wb") as errors:
            started.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.soak_clients",
                    kind,
                    "--port",
                    str(port),
                    "--seconds",
                    str(seconds),
                    "--count",
                    str(count),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                    cwd=ROOT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
    return started


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    add = parser.add_argument
    add("--seconds", type=float, default=300, help="how long the clients run (300)")
    add("--warmup", type=float, help="seconds of load before RSS counts (a fifth, at most 60)")
    add("--interval", type=float, default=5, help="seconds between samples (5)")
    add("--cooldown", type=float, default=60, help="at most this long for fds to come back (60)")
    add("--app", default=APP, help=f"the app to serve ({APP})")
    add("--churn", type=int, default=20, help="concurrent churn loops (20)")
    add("--slow", type=int, default=60, help="slow readers (60)")
    add("--flood", type=int, default=8, help="flooding connections (8)")
    add("--ping", type=int, default=8, help="ping-flooding connections (8)")
    add("--idle", type=int, default=2000, help="idle connections (2000)")
    add("--processes", type=int, default=2, help="client processes per kind (2)")
    add("--rss-fraction", type=float, default=Tolerance.rss_fraction)
    add("--rss-floor", type=float, default=Tolerance.rss_floor / MIB, help="MiB (32)")
    add("--fd-slack", type=int, default=Tolerance.fd_slack)
    add("--logs", type=Path, help="keep the server's and clients' logs here")
    return parser.parse_args(argv)


async def soak(args: argparse.Namespace, logs: Path) -> int:
    """Run the soak; the exit status."""
    port = _free_port()
    tolerance = Tolerance(args.rss_fraction, int(args.rss_floor * MIB), args.fd_slack)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.seconds / 5)
    spec = _server_spec(args.app)
    launch = Launch(port=port, app="echo", compression=False, ping_interval=20)
    server = await ServerProcess.spawn(spec, launch, prefix=(), log=logs / "server.log")
    clients: list[asyncio.subprocess.Process] = []
    counts: dict[str, dict[str, int]] = {}
    try:
        await server.wait_listening(port, timeout=30)
        sampler = Sampler(server.pid, port)
        print(
            f"wsup soak: {args.app} on 127.0.0.1:{port} (pid {server.pid}), load for "
            f"{args.seconds:.0f} s (warm-up {warmup:.0f} s), a sample every {args.interval:.0f} s"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print(HEADER)
        for i in range(2):
            await asyncio.sleep(args.interval / 2)
            print(row(await sampler.take(-args.interval * (1 - i / 2), "idle")), flush=True)
        kinds = {
            "churn": args.churn,
            "slow": args.slow,
            "flood": args.flood,
            "ping": args.ping,
            "idle": args.idle,
        }
        started = time.monotonic()
        for kind, total in kinds.items():
            clients += await _spawn_clients(kind, args.processes, total, port, args.seconds, logs)
        # Clients stop on their own after --seconds; their close handshakes take a moment.
        waiting = asyncio.gather(*(client.communicate() for client in clients))
        while not waiting.done():
            done, _ = await asyncio.wait([waiting], timeout=args.interval)
            t = time.monotonic() - started
            if not done:
                print(row(await sampler.take(t, "load")), flush=True)
            if t > args.seconds + 60:
                break
        outputs = waiting.result() if waiting.done() else []
        for stdout, _ in outputs:
            with contextlib.suppress(ValueError):
                line = json.loads(stdout.decode().strip().splitlines()[-1])
                kind_counts = counts.setdefault(line.pop("kind"), {})
                for key, value in line.items():
                    kind_counts[key] = kind_counts.get(key, 0) + int(value)
        stopped = time.monotonic()
        baseline = min(s.fds for s in sampler.samples if s.phase == "idle")
        while time.monotonic() - stopped < args.cooldown:
            await asyncio.sleep(args.interval)
            sample = await sampler.take(time.monotonic() - started, "cooldown")
            print(row(sample), flush=True)
            if sample.fds <= baseline + tolerance.fd_slack:
                break
        result = verdict(sampler.samples, warmup, tolerance)
        if server.process.returncode is not None:
            result.problems.append(f"the server exited with status {server.process.returncode}")
        elif not await asyncio.to_thread(healthy, port):
            result.problems.append("the server does not answer /healthz with 200 any more")
        errors = server_errors(logs / "server.log")
        if errors:
            result.problems.append(
                f"the server logged {len(errors)} ERROR line(s), first: {errors[0]}"
            )
        for kind, key in PROGRESS.items():
            if kinds[kind] and not counts.get(kind, {}).get(key):
                result.problems.append(f"{kind} clients made no progress ({key}: 0); logs: {logs}")
        _summary(sampler.samples, counts, result, args.seconds)
        return 0 if result.passed else 1
    finally:
        for client in clients:
            await _kill_group(client, grace=0)
        await server.stop()


def _summary(
    samples: Sequence[Sample], counts: dict[str, dict[str, int]], result: Verdict, seconds: float
) -> None:
    load = [s for s in samples if s.phase == "load"]
    lags = [s.lag for s in load if s.lag is not None]
    print("\nclients (totals over the run):")
    for kind, kind_counts in sorted(counts.items()):
        shown = ", ".join(f"{key} {value}" for key, value in sorted(kind_counts.items()))
        print(f"  {kind:<6} {shown}")
    churn = counts.get("churn", {}).get("cycles", 0)
    print(f"  churn rate: {churn / seconds:.0f} connect-message-close cycles/s")
    print("server:")
    if result.rss_early is not None and result.rss_late is not None:
        print(
            f"  RSS after warm-up {result.rss_early / MIB:.1f} MiB, at the end of the load "
            f"{result.rss_late / MIB:.1f} MiB (medians of the first and last thirds); "
            f"peak {max(s.rss for s in samples) / MIB:.1f} MiB"
        )
    if result.fds_baseline is not None:
        print(
            f"  fds {result.fds_baseline} idle, peak {max(s.fds for s in samples)}, "
            f"{result.fds_final} after the cooldown"
        )
    if load:
        print(f"  CPU mean {statistics.mean(s.cpu for s in load):.0f}% of one core under load")
    if lags:
        print(
            f"  event-loop lag: mean {statistics.mean(lags) * 1000:.1f} ms, "
            f"worst interval {max(lags) * 1000:.1f} ms"
        )
    if result.passed:
        print("soak: PASSED (no growth beyond tolerance, descriptors back, server healthy)")
    else:
        print("soak: FAILED")
        for problem in result.problems:
            print(f"  - {problem}")


def main(argv: list[str] | None = None) -> None:
    """Run the soak from the command line; exit 1 when it fails."""
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        logs = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        logs.mkdir(parents=True, exist_ok=True)
        # Ctrl-C and SIGTERM end the run through the finally blocks: children are stopped.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        status = asyncio.run(soak(args, logs))
    sys.exit(status)


if __name__ == "__main__":
    main()
