"""The reconnect storm: every client of a stopped server comes back at once.

Theory of operation: a deploy (or a crash) sends every client of a server
back at the same time. The scenario starts **two instances** of the server
under test on 127.0.0.1, the old one and its replacement, both pinned to the
server CPU, as a rolling deploy on one host has them; connects ``conns``
clients to the old one from a few client processes
(:mod:`bench.storm_clients`), sends the old one SIGTERM and measures until
every client is connected to the new one. Each client reconnects the way a
well-behaved client does (exponential backoff with full jitter, base 0.5 s,
cap 10 s, ``Retry-After`` honoured), straight to the new instance: it plays
the part of the load balancer, which would have taken the old instance out of
rotation. The same for every server: what differs is how the old one lets its
clients go (all at once, or paced like wsup's drain) and how the new one
takes the herd.

Measured on the new instance from SIGTERM until the last client is back: its
CPU time, its peak resident memory (``VmHWM``, the high-water mark: it was
idle before), and its event loop's lag, the time its loop was busy when a
timer was due (wsup: ``wsup_event_loop_lag_seconds`` scraped from
``/metrics`` before and after; the peers: the same probe,
``bench/servers/lagprobe.py``, sampled every 50 ms into a file). Both are read
through wsup's histogram buckets and one estimator (:func:`quantile`), so the
figures compare. The clients report when their connection ended, every
failed attempt by reason, and when they were back.

Why two instances rather than one restarted on the same port: a server
restarted in place is not there while the old one drains, so the figures
would mostly measure how long the old process takes to exit and the
backoff; with a replacement that listens before the SIGTERM, they measure
what the issue is about, the herd and what it does to the server that takes it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.latency import Histogram
from bench.processes import Event, ServerProcess
from bench.registry import LoopLag
from bench.scenarios import (
    FD_MARGIN,
    Context,
    CpuWindow,
    Failed,
    Metric,
    Sample,
    Scenario,
    Sizes,
)
from bench.storm_clients import REASONS

#: Where the clients connect from, in turn: each address has the whole ephemeral
#: port range for each server, and attempts abandoned after a timeout keep their
#: port in TIME_WAIT for a minute; one address ran short in a slow storm.
SOURCE_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")

#: ``wsup_event_loop_lag_seconds``' bucket bounds (``supervisor/metrics.py``);
#: the peers' probe samples are counted in the same buckets.
LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_METRIC = "wsup_event_loop_lag_seconds"

#: Column labels of the failure reasons (:data:`bench.storm_clients.REASONS`).
REASON_LABELS = {
    "refused": "refused",
    "reset": "reset",
    "timeout": "timeout",
    "closed": "closed",
    "503_retry_after": "503+RA",
    "503": "503",
    "other_status": "other status",
    "other_error": "other error",
}

STORM_METRICS = (
    Metric("back_s", "all back s", "lower"),
    Metric("reconnect_p50_s", "reconnect p50 s"),
    Metric("reconnect_p99_s", "reconnect p99 s"),
    Metric("last_drop_s", "last drop s"),
    Metric("lag_p99_ms", "lag p99 ms", "lower"),
    Metric("cpu_s", "CPU s", "lower"),
    Metric("peak_rss_mib", "peak RSS MiB"),
    Metric("drain_cpu_s", "old CPU s"),
    *(Metric(f"failed_{reason}", REASON_LABELS[reason]) for reason in REASONS),
)

#: The storm's variants: name, what the servers run with, and per-server arguments
#: (``None``: every server, as it comes). The per-address limits of admission
#: control have no row: every client here comes from one of four addresses.
VARIANTS: tuple[tuple[str, str, Mapping[str, tuple[str, ...]] | None], ...] = (
    (
        "storm",
        "every server with its default settings (wsup: paced drain, at most 2,048 handshakes "
        "in progress)",
        None,
    ),
    (
        "storm-nowindow",
        "wsup with --drain-window 0: every connection closed at once",
        {"wsup": ("--drain-window", "0")},
    ),
    (
        "storm-handshakes256",
        "wsup with --max-handshakes 256: past 256 handshakes in progress, new connections "
        "wait in the listen backlog",
        {"wsup": ("--max-handshakes", "256")},
    ),
    (
        "storm-rate1000",
        "wsup with --handshake-rate 1000/2000: past 1,000 upgrades a second (bursts of "
        "2,000), 503 with Retry-After",
        {"wsup": ("--handshake-rate", "1000/2000")},
    ),
)


def cumulative(samples: Iterable[float], bounds: Sequence[float] = LAG_BOUNDS) -> list[float]:
    """Cumulative counts of ``samples`` per bucket ``le=bound``, then ``+Inf``."""
    counts = [0.0] * (len(bounds) + 1)
    for value in samples:
        index = next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))
        counts[index] += 1
    total = 0.0
    for index, count in enumerate(counts):
        total += count
        counts[index] = total
    return counts


def quantile(q: float, counts: Sequence[float], bounds: Sequence[float] = LAG_BOUNDS) -> float:
    """The ``q`` quantile of a histogram as Prometheus's ``histogram_quantile`` estimates it.

    ``counts`` are cumulative per bucket (``le=bound``, then ``+Inf``). Linear
    within the bucket where the rank falls (from 0 for the first bucket); a
    rank in ``+Inf`` gives the highest finite bound. ``nan`` without samples.
    """
    total = counts[-1]
    if total <= 0:
        return float("nan")
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds):
        return bounds[-1]
    lower = bounds[index - 1] if index else 0.0
    below = counts[index - 1] if index else 0.0
    inside = counts[index] - below
    return lower + (bounds[index] - lower) * ((rank - below) / inside if inside else 1.0)


def parse_lag(text: str) -> list[float]:
    """The cumulative bucket counts of ``wsup_event_loop_lag_seconds`` in a scrape."""
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LAG_METRIC + "_bucket":
                counts[float(sample.labels["le"])] = sample.value
    bounds = sorted(counts)
    if [bound for bound in bounds if bound != float("inf")] != list(LAG_BOUNDS):
        raise Failed(f"{LAG_METRIC} has buckets {bounds}, not {list(LAG_BOUNDS)}")
    return [counts[bound] for bound in bounds]


#: Seconds a scrape of ``/metrics`` may take, and how many tries it gets: a server
#: still under the herd (clients not back in time) can take long to answer.
SCRAPE_TIMEOUT = 30.0
SCRAPE_TRIES = 3


def scrape_lag(port: int) -> list[float]:
    """``GET /metrics`` of the wsup server on ``port``; its lag histogram's counts.

    Raises:
        Failed: no answer after :data:`SCRAPE_TRIES` tries.
    """
    url = f"http://127.0.0.1:{port}/metrics"
    error: OSError | None = None
    for _ in range(SCRAPE_TRIES):
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as answer:
                return parse_lag(answer.read().decode())
        except OSError as exc:  # timeouts and refusals alike
            error = exc
    raise Failed(f"GET /metrics of the new instance failed {SCRAPE_TRIES} times: {error}")


def probe_samples(path: Path, start: float, end: float) -> list[float]:
    """The lag samples the peer probe recorded between ``start`` and ``end`` (monotonic)."""
    samples = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and start <= float(fields[0]) <= end:
            samples.append(float(fields[1]))
    return samples


class LagWatch:
    """The new instance's event-loop lag over the storm, whichever way the server tells it."""

    def __init__(self, ctx: Context, lag_file: Path | None) -> None:
        self.kind = ctx.spec.loop_lag
        self.lag_file = lag_file
        self.port = 0
        self.before: list[float] = []
        self.start = 0.0

    async def begin(self, port: int) -> None:
        """Take the starting point (before SIGTERM)."""
        self.port = port
        self.start = time.monotonic()
        if self.kind is LoopLag.METRICS:
            self.before = await asyncio.to_thread(scrape_lag, port)

    async def p99(self) -> float | None:
        """The 99th percentile of the lag since :meth:`begin`, in seconds (``None``: unknown).

        Raises:
            Failed: the server's ``/metrics`` did not answer.
        """
        if self.kind is LoopLag.METRICS:
            after = await asyncio.to_thread(scrape_lag, self.port)
            return quantile(0.99, [a - b for a, b in zip(after, self.before, strict=True)])
        if self.kind is LoopLag.PROBE and self.lag_file is not None:
            samples = probe_samples(self.lag_file, self.start, time.monotonic())
            return quantile(0.99, cumulative(samples))
        return None


def summarize(reports: list[Event], conns: int, signalled: float, timeout: float) -> Sample:
    """The sample of one storm from the client processes' ``storm`` events (no server figures)."""
    back = sum(report["back"] for report in reports)
    values: dict[str, float] = {
        f"failed_{reason}": float(sum(report["reasons"][reason] for report in reports))
        for reason in REASONS
    }
    notes = []
    if back == conns:
        values["back_s"] = max(report["last_back"] for report in reports) - signalled
    else:
        notes.append(f"{conns - back} of {conns} clients not back {timeout:g} s after SIGTERM")
    last_drop = max(report["last_drop"] for report in reports)
    if last_drop:
        values["last_drop_s"] = last_drop - signalled
    reconnect = Histogram.merged(Histogram.from_json(report["reconnect"]) for report in reports)
    if reconnect.count:
        values["reconnect_p50_s"] = reconnect.percentile(50) / 1e9
        values["reconnect_p99_s"] = reconnect.percentile(99) / 1e9
    early = sum(report["early"] for report in reports)
    if early:
        notes.append(f"{early} connections ended before SIGTERM")
    again = sum(report["again"] for report in reports)
    if again:
        notes.append(f"{again} connections to the new instance ended after the 101 and came back")
    for reason in ("other_status", "other_error"):
        details = [report["details"][reason] for report in reports if reason in report["details"]]
        if details:
            notes.append(f"{REASON_LABELS[reason]}, e.g. {details[0]}")
    return Sample(values, notes)


class DrainCpu:
    """CPU time the old instance spends from SIGTERM until it exits (read every 0.1 s)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.start = server.cpu_seconds()
        self.last = self.start
        self.task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        # /proc/PID is gone once the process is reaped: the last reading stands.
        while self.server.process.returncode is None:
            self.last = max(self.last, self.server.cpu_seconds())
            await asyncio.sleep(0.1)

    def stop(self) -> float:
        """CPU seconds so far (all of them if the process has exited)."""
        self.task.cancel()
        return self.last - self.start


def _check_room(server: ServerProcess, conns: int) -> None:
    limit = server.open_files_limit()
    if limit is not None and conns + FD_MARGIN > limit:
        raise Failed(
            f"the server may open {limit} files, not enough for {conns} connections: "
            "raise its soft RLIMIT_NOFILE (python -m bench does, up to the hard limit)"
        )


async def measure_storm(
    ctx: Context, *, conns: int, processes: int, timeout: float, settle: float
) -> Sample:
    """SIGTERM the old instance under ``conns`` clients; measure until all are on the new one."""
    lag_file = ctx.log_dir / f"{ctx.tag}-lag.txt" if ctx.spec.loop_lag is LoopLag.PROBE else None
    # Both listen before the clients connect: a port picked later could be one
    # of the 19,000 the clients' connections hold.
    old = await ctx.start_server("echo")
    old_port = ctx.port
    new = await ctx.start_server("echo", lag_file=lag_file)
    for server in (old, new):
        _check_room(server, conns)
    loadgens = await ctx.start_loadgens(
        None,
        "/echo",
        conns,
        extra=(
            "--reconnect-url",
            f"ws://127.0.0.1:{ctx.port}/echo",
            "--source-addresses",
            ",".join(SOURCE_ADDRESSES),
        ),
        min_processes=processes,
        port=old_port,
        module="bench.storm_clients",
    )
    await asyncio.sleep(settle)
    lag = LagWatch(ctx, lag_file)
    await lag.begin(ctx.port)
    for loadgen in loadgens:
        await loadgen.send({"cmd": "watch", "timeout": timeout})
        await loadgen.expect("watching", 30)
    cpu = CpuWindow(ctx, new, loadgens)
    drain = DrainCpu(old)
    signalled = time.monotonic()
    old.terminate()
    reports = [await loadgen.expect("storm", timeout + 30) for loadgen in loadgens]
    server_cpu, _, _ = cpu.stop()
    sample = summarize(reports, conns, signalled, timeout)
    sample.values["cpu_s"] = server_cpu
    sample.values["drain_cpu_s"] = drain.stop()
    sample.values["peak_rss_mib"] = new.peak_rss_bytes() / 2**20
    try:
        p99 = await lag.p99()
    except Failed as exc:
        # The rest of the measurement stands; the column stays empty.
        sample.notes.append(str(exc))
        p99 = None
    if p99 is not None:
        sample.values["lag_p99_ms"] = p99 * 1000
    # The old instance shares the server CPU: its drain counts among "other processes".
    sample.notes.extend(cpu.notes() + cpu.client_notes())
    return sample


def storm_scenarios(sizes: Sizes) -> list[Scenario]:
    """The storm and its variants (see :data:`VARIANTS`), with the counts of ``sizes``."""
    scenarios = []
    for name, setting, server_args in VARIANTS:

        def run(ctx: Context) -> Awaitable[Sample]:
            return measure_storm(
                ctx,
                conns=sizes.storm_conns,
                processes=sizes.storm_processes,
                timeout=sizes.storm_timeout,
                settle=sizes.settle,
            )

        scenarios.append(
            Scenario(
                name=name,
                title=(
                    f"reconnect storm: {sizes.storm_conns:,} clients over "
                    f"{sizes.storm_processes} processes, SIGTERM to the server, every client "
                    "back on a second instance (backoff with full jitter, 0.5 s base, 10 s "
                    f"cap); {setting}"
                ),
                app="echo",
                compression=False,
                metrics=STORM_METRICS,
                run=run,
                timeout=180 + sizes.storm_conns / 100 + sizes.storm_timeout,
                server_args=server_args,
            )
        )
    return scenarios
