"""The scenarios: what is measured, how, and with which counts.

Theory of operation: every measurement (one scenario, one server, one repeat)
starts a fresh server on a fresh port, starts the load generators it needs,
measures, and stops everything (see :class:`Context`). A fresh server keeps
memory baselines clean and keeps one scenario's leftovers (TIME_WAIT sockets,
grown buffers) out of the next. Server CPU time is read from ``/proc`` at the
start and end of the measured window only, so connecting and tearing down are
never counted.

A scenario's ``run`` returns a :class:`Sample` of metric values, or raises
:class:`NotApplicable` (the server lacks the feature) or :class:`Failed`.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import procfs
from bench.latency import Histogram
from bench.processes import Children, Event, Loadgen, LoadgenTimeout, ServerProcess
from bench.procfs import Pinning
from bench.registry import AppKind, Compression, Launch, ServerSpec

#: Keepalive ping interval given to every server that takes one (websockets' default).
PING_INTERVAL = 20.0
#: Descriptors kept free in a process that holds many connections (listener, logs, pipes...).
FD_MARGIN = 100
#: Most connections one load generator process opens.
MAX_CONNS_PER_LOADGEN = 10_000


class NotApplicable(Exception):
    """The scenario does not apply to this server (the reason is the message)."""


class Failed(Exception):
    """The measurement went wrong (the reason is the message)."""


@dataclass(frozen=True)
class Metric:
    """One reported quantity.

    Attributes:
        key: key in :attr:`Sample.values` and in the JSON output.
        label: column heading, with its unit.
        better: ``"higher"`` or ``"lower"`` gets a ratio to the baseline;
            ``None`` marks an informational value (no ratio).
    """

    key: str
    label: str
    better: Literal["higher", "lower"] | None = None


@dataclass
class Sample:
    """What one measurement produced.

    Attributes:
        values: metric key to value.
        notes: anything the reader should know about this measurement.
    """

    values: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Starts processes for one measurement and remembers them for cleanup.

    Attributes:
        spec: the server under test.
        pin: CPU pinning prefixes.
        log_dir: where process output goes.
        tag: prefix for this measurement's log files.
        server_args: appended to every server command line of the measurement
            (the scenario's settings for this server, then ``--server-args``).
        children: everything started, stopped by the caller afterwards.
        start_timeout: seconds a server gets to start listening.
        port: the port of the server started last.
    """

    spec: ServerSpec
    pin: Pinning
    log_dir: Path
    tag: str
    server_args: tuple[str, ...] = ()
    children: Children = field(default_factory=Children)
    start_timeout: float = 15.0
    port: int = 0

    async def start_server(
        self,
        app: AppKind,
        *,
        compression: bool = False,
        ping_interval: float = PING_INTERVAL,
        lag_file: Path | None = None,
    ) -> ServerProcess:
        """Start the server under test on a free port and wait until it listens.

        Raises:
            StartFailed: it did not start.
        """
        self.port = free_port()
        launch = Launch(self.port, app, compression, ping_interval, self.server_args, lag_file)
        index = len(self.children.servers)
        server = await ServerProcess.spawn(
            self.spec,
            launch,
            prefix=self.pin.server,
            log=self.log_dir / f"{self.tag}-server{f'-{index}' if index else ''}.log",
        )
        self.children.servers.append(server)
        await server.wait_listening(self.port, self.start_timeout)
        return server

    async def start_loadgens(
        self,
        mode: str | None,
        path: str,
        conns: int,
        *,
        extra: tuple[str, ...] = (),
        min_processes: int = 1,
        port: int | None = None,
        module: str = "bench.loadgen",
    ) -> list[Loadgen]:
        """Start enough load generators for ``conns`` connections and wait until connected.

        They connect to ``port`` (the server started last by default) and run
        ``python -m MODULE`` (see :meth:`Loadgen.spawn`).

        Raises:
            Failed: a connection could not be opened.
            LoadgenError: a load generator failed.
        """
        processes = max(min_processes, math.ceil(conns / conns_per_loadgen()))
        shares = [conns // processes + (i < conns % processes) for i in range(processes)]
        url = f"ws://127.0.0.1:{self.port if port is None else port}{path}"
        started: list[Loadgen] = []
        for index, share in enumerate(shares):
            loadgen = await Loadgen.spawn(
                mode,
                ["--url", url, "--conns", str(share), *extra],
                prefix=self.pin.loadgen,
                log=self.log_dir / f"{self.tag}-loadgen{len(self.children.loadgens)}-{index}.log",
                module=module,
            )
            self.children.loadgens.append(loadgen)
            started.append(loadgen)
        # Assume at least 200 handshakes per second, however slow the server.
        timeout = 30.0 + conns / 200
        await asyncio.gather(*(loadgen.wait_ready(timeout) for loadgen in started))
        failed = sum(loadgen.ready["failed"] for loadgen in started)
        if failed:
            errors = [loadgen.ready["error"] for loadgen in started if loadgen.ready["error"]]
            raise Failed(f"{failed} of {conns} connections failed ({errors[0] if errors else '?'})")
        return started


#: Lowest port :func:`free_port` picks when the ephemeral range leaves room below it.
LOWEST_PORT = 10_000


def ephemeral_ports() -> tuple[int, int]:
    """``net.ipv4.ip_local_port_range``: where outgoing connections get their local port."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken,
    between this check and the server's ``bind``, as the local port of any
    outgoing connection on the machine, and a scenario opens thousands; below
    the range only another explicit ``bind`` can take it.
    """
    low, _ = ephemeral_ports()
    candidates = list(range(LOWEST_PORT, low)) if low > LOWEST_PORT + 1000 else []
    for port in random.sample(candidates, min(len(candidates), 50)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


def conns_per_loadgen() -> int:
    """Connections per load generator process, within the open-file hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return MAX_CONNS_PER_LOADGEN
    return max(1, min(MAX_CONNS_PER_LOADGEN, hard - FD_MARGIN))


class CpuWindow:
    """CPU time of the server and of the load generators over a measured window.

    When the server is pinned, the window also measures what other processes
    took from the server's CPU (and what the hypervisor stole), because on a
    shared machine that, not the server, is often what limits a run.
    """

    #: Share of the server's CPU taken by others above which a note is added.
    CONTENTION_NOTE = 0.10
    #: Load generators' CPU, in % of one core, above which they may be what limits a run.
    CLIENT_SATURATED = 90.0
    #: Shortest window, in seconds, over which that share is computed.
    MIN_WINDOW = 1.0

    def __init__(self, ctx: Context, server: ServerProcess, loadgens: list[Loadgen]) -> None:
        self.server = server
        self.loadgens = loadgens
        self.cpu = ctx.pin.server_cpu
        self.start = time.monotonic()
        self.server_start = server.cpu_times()
        self.client_start = sum(loadgen.cpu_seconds() for loadgen in loadgens)
        self.usage_start = procfs.cpu_usage(self.cpu) if self.cpu is not None else (0.0, 0.0)
        self.others = 0.0
        self.kernel_pct = 0.0
        """After :meth:`stop`: the share of the server's CPU time spent in the kernel."""
        self.client_pct = 0.0
        """After :meth:`stop`: the load generators' CPU time, in % of the wall time."""

    def stop(self) -> tuple[float, float, float]:
        """Server CPU seconds, load generator CPU seconds and wall seconds since creation."""
        wall = time.monotonic() - self.start
        user, system = self.server.cpu_times()
        user -= self.server_start[0]
        system -= self.server_start[1]
        server = user + system
        self.kernel_pct = system / server * 100 if server > 0 else 0.0
        client = sum(loadgen.cpu_seconds() for loadgen in self.loadgens) - self.client_start
        self.client_pct = client / wall * 100 if wall > 0 else 0.0
        # Below a second, the 10 ms clock ticks make the share meaningless.
        if self.cpu is not None and wall >= self.MIN_WINDOW:
            tasks, steal = procfs.cpu_usage(self.cpu)
            taken = (tasks - self.usage_start[0] - server) + (steal - self.usage_start[1])
            self.others = min(1.0, max(0.0, taken) / wall)
        return server, client, wall

    def notes(self) -> list[str]:
        """A note when other processes took a noticeable share of the server's CPU."""
        if self.others < self.CONTENTION_NOTE:
            return []
        return [f"other processes took {self.others:.0%} of the server's CPU during a window"]

    def client_notes(self) -> list[str]:
        """A note when the load generators were busy enough to limit the throughput.

        They share one CPU when pinned, so their sum is compared with one core.
        """
        if self.client_pct < self.CLIENT_SATURATED:
            return []
        return [
            f"load generators at {self.client_pct:.0f} % of a core during a window: the client "
            "may be what limits the rate (and adds to round-trip times); server CPU per "
            "operation still holds"
        ]


# --- the measurements ---------------------------------------------------------------


async def measure_echo(
    ctx: Context, *, conns: int, size: int, window: int, duration: float
) -> Sample:
    """Echo throughput over ``duration`` s, ``window`` messages in flight per connection."""
    server = await ctx.start_server("echo")
    loadgens = await ctx.start_loadgens(
        "echo", "/echo", conns, extra=("--size", str(size), "--window", str(window))
    )
    cpu = CpuWindow(ctx, server, loadgens)
    for loadgen in loadgens:
        await loadgen.send({"cmd": "run", "duration": duration})
    results = [await loadgen.expect("result", duration + 30) for loadgen in loadgens]
    server_cpu, client_cpu, wall = cpu.stop()
    messages = sum(result["messages"] for result in results)
    errors = sum(result["errors"] for result in results)
    lost = sum(result["lost"] for result in results)
    if errors or lost:
        raise Failed(f"{errors} wrong echoes, {lost} connections lost")
    if not messages:
        raise Failed("no message came back")
    elapsed = max(result["elapsed"] for result in results)
    return Sample(
        {
            "msgs_per_s": messages / elapsed,
            "cpu_us_per_msg": server_cpu / messages * 1e6,
            "server_cpu_pct": server_cpu / wall * 100,
            "kernel_pct": cpu.kernel_pct,
            "client_cpu_pct": client_cpu / wall * 100,
        },
        cpu.notes() + cpu.client_notes(),
    )


async def _run_round_trips(loadgens: list[Loadgen], duration: float) -> list[Event]:
    """One request/response run of every load generator; their results.

    Raises:
        Failed: a wrong echo, a lost connection, or an echo that never came back.
    """
    for loadgen in loadgens:
        await loadgen.send({"cmd": "run", "duration": duration})
    # A run ends by waiting up to 5 s for the echoes in flight.
    results = [await loadgen.expect("result", duration + 30) for loadgen in loadgens]
    errors = sum(result["errors"] for result in results)
    lost = sum(result["lost"] for result in results)
    stalled = sum(result["stalled"] for result in results)
    if errors or lost or stalled:
        raise Failed(
            f"{errors} wrong echoes, {lost} connections lost, {stalled} echoes never came back"
        )
    return results


async def measure_round_trips(
    ctx: Context, *, conns: int, size: int, duration: float, warmup: float
) -> Sample:
    """Request/response echo: one message in flight per connection, every round trip timed.

    ``warmup`` seconds of the same traffic come first, outside the measured window.
    """
    server = await ctx.start_server("echo")
    loadgens = await ctx.start_loadgens("rr", "/echo", conns, extra=("--size", str(size)))
    if warmup > 0:
        await _run_round_trips(loadgens, warmup)
    cpu = CpuWindow(ctx, server, loadgens)
    results = await _run_round_trips(loadgens, duration)
    server_cpu, client_cpu, wall = cpu.stop()
    messages = sum(result["messages"] for result in results)
    if not messages:
        raise Failed("no message came back")
    rtt = Histogram.merged(Histogram.from_json(result["rtt"]) for result in results)
    elapsed = max(result["elapsed"] for result in results)
    return Sample(
        {
            "msgs_per_s": messages / elapsed,
            "rtt_p50_us": rtt.percentile(50) / 1000,
            "rtt_p99_us": rtt.percentile(99) / 1000,
            "cpu_us_per_msg": server_cpu / messages * 1e6,
            "server_cpu_pct": server_cpu / wall * 100,
            "kernel_pct": cpu.kernel_pct,
            "client_cpu_pct": client_cpu / wall * 100,
        },
        cpu.notes() + cpu.client_notes(),
    )


async def _fan_round(
    publisher: Loadgen, loadgens: list[Loadgen], round_id: int, timeout: float
) -> float:
    """Publish round ``round_id``; seconds until the last subscriber received it."""
    await publisher.send({"cmd": "publish", "round": round_id})
    published = await publisher.expect("published", timeout, lambda e: e["round"] == round_id)
    delivered = await asyncio.gather(
        *(
            loadgen.expect("delivered", timeout, lambda e: e["round"] == round_id)
            for loadgen in loadgens
        )
    )
    return float(max(event["t"] for event in delivered) - published["t"])


async def measure_fanout(ctx: Context, *, subscribers: int, rounds: int) -> Sample:
    """Publish ``rounds`` messages one after the other to ``subscribers`` connections."""
    server = await ctx.start_server("fanout")
    loadgens = await ctx.start_loadgens("fanout", "/fanout", subscribers, extra=("--size", "32"))
    publisher = loadgens[0]
    # A server may register a subscriber a moment after the handshake completes:
    # warm up until one round reaches everybody before measuring.
    round_id = 0
    for _ in range(10):
        round_id += 1
        try:
            await _fan_round(publisher, loadgens, round_id, timeout=5.0)
            break
        except LoadgenTimeout:
            continue
    else:
        raise Failed("no warm-up round reached every subscriber")
    cpu = CpuWindow(ctx, server, loadgens)
    latencies = []
    for _ in range(rounds):
        round_id += 1
        latencies.append(await _fan_round(publisher, loadgens, round_id, timeout=30.0))
    server_cpu, client_cpu, _ = cpu.stop()
    latency = statistics.median(latencies)
    deliveries = subscribers * rounds
    return Sample(
        {
            "latency_ms": latency * 1000,
            "deliveries_per_s": subscribers / latency,
            "cpu_us_per_delivery": server_cpu / deliveries * 1e6,
            "kernel_pct": cpu.kernel_pct,
            "client_us_per_delivery": client_cpu / deliveries * 1e6,
        },
        cpu.notes(),
    )


async def measure_handshakes(ctx: Context, *, concurrency: int, duration: float) -> Sample:
    """Connect, open, close in ``concurrency`` loops for ``duration`` seconds."""
    server = await ctx.start_server("echo")
    loadgens = await ctx.start_loadgens(
        "handshake", "/echo", 0, extra=("--concurrency", str(concurrency))
    )
    cpu = CpuWindow(ctx, server, loadgens)
    await loadgens[0].send({"cmd": "run", "duration": duration})
    result = await loadgens[0].expect("result", duration + 30)
    server_cpu, client_cpu, wall = cpu.stop()
    done = result["handshakes"]
    if not done:
        raise Failed(f"no handshake completed ({result['error']})")
    notes = cpu.notes() + cpu.client_notes()
    if result["errors"]:
        notes.append(f"{result['errors']} failed handshakes ({result['error']})")
    return Sample(
        {
            "handshakes_per_s": done / result["elapsed"],
            "cpu_us_per_handshake": server_cpu / done * 1e6,
            "kernel_pct": cpu.kernel_pct,
            "client_cpu_pct": client_cpu / wall * 100,
        },
        notes,
    )


async def measure_memory(ctx: Context, *, conns: int, compression: bool, settle: float) -> Sample:
    """Server RSS growth per idle connection, compression negotiated or not."""
    if compression and ctx.spec.compression is Compression.UNSUPPORTED:
        raise NotApplicable("no permessage-deflate")
    server = await ctx.start_server("echo", compression=compression)
    extra = ("--deflate",) if compression else ()
    # Warm up: the first connections import modules and fill caches; that is
    # not a per-connection cost.
    warmup = await ctx.start_loadgens("hold", "/echo", 20, extra=extra)
    for loadgen in warmup:
        await loadgen.stop()
    await asyncio.sleep(settle)
    before = server.rss_bytes()
    loadgens = await ctx.start_loadgens("hold", "/echo", conns, extra=extra)
    await asyncio.sleep(settle)
    after = server.rss_bytes()
    notes = []
    if compression:
        negotiated = sum(loadgen.ready["deflate"] for loadgen in loadgens)
        if negotiated < conns:
            notes.append(f"deflate negotiated on {negotiated} of {conns} connections")
    return Sample(
        {"kib_per_conn": (after - before) / 1024 / conns, "rss_mib": after / 2**20},
        notes,
    )


async def _open_count(loadgens: list[Loadgen]) -> int:
    total = 0
    for loadgen in loadgens:
        await loadgen.send({"cmd": "status"})
        total += (await loadgen.expect("status", 10))["open"]
    return total


async def measure_idle(ctx: Context, *, conns: int, window: float, settle: float) -> Sample:
    """Server CPU while ``conns`` connections only exchange keepalive pings."""
    server = await ctx.start_server("echo")
    notes = []
    limit = server.open_files_limit()
    if limit is not None and conns > limit - FD_MARGIN:
        notes.append(
            f"{limit - FD_MARGIN} connections instead of {conns}: the server may open {limit} files"
        )
        conns = limit - FD_MARGIN
    loadgens = await ctx.start_loadgens("hold", "/echo", conns, min_processes=2)
    await asyncio.sleep(settle)
    cpu = CpuWindow(ctx, server, loadgens)
    await asyncio.sleep(window)
    server_cpu, _, wall = cpu.stop()
    # No contention note: others may use the CPU an idle server leaves free.
    still_open = await _open_count(loadgens)
    if still_open < conns:
        notes.append(f"{conns - still_open} connections closed during the window")
    return Sample(
        {
            "server_cpu_pct": server_cpu / wall * 100,
            "kernel_pct": cpu.kernel_pct,
            "connections": float(conns),
            "rss_mib": server.rss_bytes() / 2**20,
        },
        notes,
    )


async def measure_drain(ctx: Context, *, conns: int, timeout: float, settle: float) -> Sample:
    """SIGTERM the server; time until every client has seen its connection close."""
    if not ctx.spec.drains:
        raise NotApplicable("does not drain")
    server = await ctx.start_server("echo")
    loadgens = await ctx.start_loadgens("hold", "/echo", conns)
    await asyncio.sleep(settle)
    for loadgen in loadgens:
        await loadgen.send({"cmd": "watch", "timeout": timeout})
    signalled = time.monotonic()
    server.terminate()
    reports = [await loadgen.expect("closed", timeout + 10) for loadgen in loadgens]
    exited = await server.wait_exit(timeout)
    still_open = sum(report["open"] for report in reports)
    if still_open:
        raise Failed(f"{still_open} of {conns} connections still open after {timeout:.0f} s")
    clean = sum(report["clean"] for report in reports)
    values = {
        "drain_s": max(report["last"] for report in reports) - signalled,
        "clean_pct": clean / conns * 100,
    }
    notes = []
    if exited is None:
        notes.append(f"server still running {timeout:.0f} s after SIGTERM")
    else:
        values["exit_s"] = exited - signalled
    return Sample(values, notes)


# --- the catalogue ------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Counts and durations for one mode (full or ``--quick``)."""

    echo_seconds: float
    """Measured window of the echo and request/response scenarios."""
    echo_window: int
    echo_many: int
    """Connections of the ``100conn`` echo and request/response scenarios."""
    rr_warmup: float
    """Seconds of request/response traffic before the measured window."""
    fanout_small: int
    fanout_large: int
    fanout_rounds: int
    handshake_seconds: float
    handshake_concurrency: int
    memory_conns: int
    settle: float
    """Seconds to let a server finish setting up connections before measuring."""
    idle_conns: int
    idle_seconds: float
    drain_conns: int
    storm_conns: int
    """Clients of the storm scenarios (see :mod:`bench.storm`)."""
    storm_processes: int
    """Client processes they are spread over."""
    storm_timeout: float
    """Seconds the clients get to come back after SIGTERM."""


FULL = Sizes(
    echo_seconds=5.0,
    echo_window=32,
    echo_many=100,
    rr_warmup=1.0,
    fanout_small=1_000,
    fanout_large=5_000,
    fanout_rounds=50,
    handshake_seconds=5.0,
    handshake_concurrency=16,
    memory_conns=10_000,
    settle=1.0,
    idle_conns=20_000,
    # Two keepalive intervals: every connection is pinged twice whatever its phase.
    idle_seconds=2 * PING_INTERVAL,
    drain_conns=10_000,
    # The open-file hard limit is 20,000 per process: 19,000 leaves the server room.
    storm_conns=19_000,
    storm_processes=4,
    storm_timeout=120.0,
)

QUICK = Sizes(
    echo_seconds=0.3,
    echo_window=8,
    echo_many=10,
    rr_warmup=0.1,
    fanout_small=50,
    fanout_large=200,
    fanout_rounds=3,
    handshake_seconds=0.3,
    handshake_concurrency=4,
    memory_conns=200,
    settle=0.2,
    idle_conns=400,
    idle_seconds=0.5,
    drain_conns=200,
    storm_conns=200,
    storm_processes=2,
    storm_timeout=60.0,
)


@dataclass(frozen=True)
class Scenario:
    """A named measurement with its metrics and time budget.

    Attributes:
        name: identifier for ``--scenarios`` (a prefix before ``-`` selects a family).
        title: one line for the report, with the counts actually used.
        app: which server application it needs.
        compression: whether it runs with permessage-deflate on.
        metrics: what it reports, in column order.
        run: the measurement.
        timeout: hard limit in seconds for one measurement, start to stop.
        server_args: when set, the scenario runs only against the servers it
            names, each with these arguments added to its command line (a
            setting under test, such as ``--drain-window 0``); n/a for the others.
    """

    name: str
    title: str
    app: AppKind
    compression: bool
    metrics: tuple[Metric, ...]
    run: Callable[[Context], Awaitable[Sample]]
    timeout: float
    server_args: Mapping[str, tuple[str, ...]] | None = None


ECHO_METRICS = (
    Metric("msgs_per_s", "msgs/s", "higher"),
    Metric("cpu_us_per_msg", "CPU µs/msg", "lower"),
    Metric("server_cpu_pct", "server CPU %"),
    Metric("kernel_pct", "in kernel %"),
    Metric("client_cpu_pct", "client CPU %"),
)
RR_METRICS = (
    Metric("msgs_per_s", "msgs/s", "higher"),
    Metric("rtt_p50_us", "RTT p50 µs", "lower"),
    Metric("rtt_p99_us", "RTT p99 µs", "lower"),
    Metric("cpu_us_per_msg", "CPU µs/msg", "lower"),
    Metric("server_cpu_pct", "server CPU %"),
    Metric("kernel_pct", "in kernel %"),
    Metric("client_cpu_pct", "client CPU %"),
)
FANOUT_METRICS = (
    Metric("latency_ms", "publish→last ms", "lower"),
    Metric("deliveries_per_s", "deliveries/s", "higher"),
    Metric("cpu_us_per_delivery", "CPU µs/delivery", "lower"),
    Metric("kernel_pct", "in kernel %"),
    Metric("client_us_per_delivery", "client µs/delivery"),
)
HANDSHAKE_METRICS = (
    Metric("handshakes_per_s", "handshakes/s", "higher"),
    Metric("cpu_us_per_handshake", "CPU µs/handshake", "lower"),
    Metric("kernel_pct", "in kernel %"),
    Metric("client_cpu_pct", "client CPU %"),
)
MEMORY_METRICS = (
    Metric("kib_per_conn", "KiB/conn", "lower"),
    Metric("rss_mib", "RSS MiB"),
)
IDLE_METRICS = (
    Metric("server_cpu_pct", "server CPU %", "lower"),
    Metric("kernel_pct", "in kernel %"),
    Metric("connections", "connections"),
    Metric("rss_mib", "RSS MiB"),
)
DRAIN_METRICS = (
    Metric("drain_s", "drain s", "lower"),
    Metric("clean_pct", "clean close %", "higher"),
    Metric("exit_s", "exit s"),
)


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def catalogue(sizes: Sizes) -> list[Scenario]:
    """Every scenario, in report order, with the counts of ``sizes``."""
    scenarios: list[Scenario] = []
    for conns, tag in ((1, "1conn"), (sizes.echo_many, "100conn")):
        for size, size_tag in ((32, "32B"), (4096, "4KiB")):

            def run_rr(ctx: Context, conns: int = conns, size: int = size) -> Awaitable[Sample]:
                return measure_round_trips(
                    ctx,
                    conns=conns,
                    size=size,
                    duration=sizes.echo_seconds,
                    warmup=sizes.rr_warmup,
                )

            scenarios.append(
                Scenario(
                    name=f"rr-{tag}-{size_tag}",
                    title=(
                        f"request/response echo, {conns} connection{'s' * (conns > 1)} x "
                        f"{_size_label(size)} binary, one message in flight per connection "
                        f"(send, wait for the echo, send the next), {sizes.echo_seconds:g} s "
                        f"after {sizes.rr_warmup:g} s of warm-up"
                    ),
                    app="echo",
                    compression=False,
                    metrics=RR_METRICS,
                    run=run_rr,
                    timeout=sizes.echo_seconds + sizes.rr_warmup + 90,
                )
            )
    for conns, tag in ((1, "1conn"), (sizes.echo_many, "100conn")):
        for size, size_tag in ((32, "32B"), (4096, "4KiB")):

            def run_echo(ctx: Context, conns: int = conns, size: int = size) -> Awaitable[Sample]:
                return measure_echo(
                    ctx,
                    conns=conns,
                    size=size,
                    window=sizes.echo_window,
                    duration=sizes.echo_seconds,
                )

            scenarios.append(
                Scenario(
                    name=f"echo-{tag}-{size_tag}",
                    title=(
                        f"echo, {conns} connection{'s' * (conns > 1)} x {_size_label(size)} "
                        f"binary, {sizes.echo_window} in flight per connection, "
                        f"{sizes.echo_seconds:g} s"
                    ),
                    app="echo",
                    compression=False,
                    metrics=ECHO_METRICS,
                    run=run_echo,
                    timeout=sizes.echo_seconds + 90,
                )
            )
    for subscribers, tag in ((sizes.fanout_small, "1k"), (sizes.fanout_large, "5k")):

        def run_fanout(ctx: Context, subscribers: int = subscribers) -> Awaitable[Sample]:
            return measure_fanout(ctx, subscribers=subscribers, rounds=sizes.fanout_rounds)

        scenarios.append(
            Scenario(
                name=f"fanout-{tag}",
                title=(
                    f"fan-out of one 32 B message to {subscribers:,} subscribers, "
                    f"{sizes.fanout_rounds} rounds, median round"
                ),
                app="fanout",
                compression=False,
                metrics=FANOUT_METRICS,
                run=run_fanout,
                timeout=180 + 30 * sizes.fanout_rounds,
            )
        )
    scenarios.append(
        Scenario(
            name="handshakes",
            title=(
                f"connect + opening handshake + close handshake, "
                f"{sizes.handshake_concurrency} concurrent connectors, "
                f"{sizes.handshake_seconds:g} s"
            ),
            app="echo",
            compression=False,
            metrics=HANDSHAKE_METRICS,
            run=lambda ctx: measure_handshakes(
                ctx,
                concurrency=sizes.handshake_concurrency,
                duration=sizes.handshake_seconds,
            ),
            timeout=sizes.handshake_seconds + 90,
        )
    )
    for compression in (False, True):

        def run_memory(ctx: Context, compression: bool = compression) -> Awaitable[Sample]:
            return measure_memory(
                ctx,
                conns=sizes.memory_conns,
                compression=compression,
                settle=sizes.settle,
            )

        scenarios.append(
            Scenario(
                name="memory-deflate" if compression else "memory",
                title=(
                    f"idle memory, {sizes.memory_conns:,} connections, server RSS delta / N, "
                    + (
                        "client offers permessage-deflate"
                        if compression
                        else "no compression offered"
                    )
                ),
                app="echo",
                compression=compression,
                metrics=MEMORY_METRICS,
                run=run_memory,
                timeout=180 + sizes.memory_conns / 100,
            )
        )
    scenarios.append(
        Scenario(
            name="idle-keepalive",
            title=(
                f"{sizes.idle_conns:,} idle connections over ≥2 load generators, "
                f"keepalive ping every {PING_INTERVAL:g} s (peers), "
                f"server CPU over {sizes.idle_seconds:g} s"
            ),
            app="echo",
            compression=False,
            metrics=IDLE_METRICS,
            run=lambda ctx: measure_idle(
                ctx, conns=sizes.idle_conns, window=sizes.idle_seconds, settle=sizes.settle
            ),
            timeout=180 + sizes.idle_conns / 100 + sizes.idle_seconds,
        )
    )
    scenarios.append(
        Scenario(
            name="drain",
            title=(
                f"SIGTERM with {sizes.drain_conns:,} open connections, "
                "time until every client has seen its connection close"
            ),
            app="echo",
            compression=False,
            metrics=DRAIN_METRICS,
            run=lambda ctx: measure_drain(
                ctx, conns=sizes.drain_conns, timeout=60.0, settle=sizes.settle
            ),
            timeout=180 + sizes.drain_conns / 100,
        )
    )
    # Imported here: bench.storm builds on this module's Context, Sample and Scenario.
    from bench.storm import storm_scenarios

    scenarios.extend(storm_scenarios(sizes))
    return scenarios


def select(scenarios: list[Scenario], selectors: list[str] | None) -> list[Scenario]:
    """Scenarios whose name equals a selector or starts with ``selector-``.

    Raises:
        ValueError: a selector matches nothing.
    """
    if not selectors:
        return scenarios
    chosen: list[Scenario] = []
    for selector in selectors:
        matches = [s for s in scenarios if s.name == selector or s.name.startswith(selector + "-")]
        if not matches:
            names = ", ".join(s.name for s in scenarios)
            raise ValueError(f"no scenario matches {selector!r}; known: {names}")
        chosen.extend(s for s in matches if s not in chosen)
    return [s for s in scenarios if s in chosen]
