"""Compare WebSocket servers side by side: ``python -m bench``.

Runs every selected scenario against every selected server in one run,
interleaving servers within each repeat so that slow drift of the machine
(frequency, noisy neighbours) affects all of them alike, then prints one table
per scenario: median over repeats, min-max, and the ratio to the
``websockets`` server. A server that does not start is reported as "failed to
start" and skipped for the rest of the run; every measurement has a hard
timeout, after which its processes are stopped and the run goes on.

Examples::

    python -m bench --quick
    python -m bench --scenarios rr --repeats 3
    python -m bench --scenarios echo,fanout --servers websockets,picows --repeats 5
    python -m bench --scenarios storm --servers websockets,wsup --repeats 1
    python -m bench --scenarios storm --servers wsup --server-args 'wsup=--drain-window 5'
    python -m bench --list
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import procfs, registry
from bench.processes import LoadgenError, StartFailed
from bench.report import Outcome, fmt, render, to_json
from bench.scenarios import (
    FULL,
    PING_INTERVAL,
    QUICK,
    Context,
    Failed,
    NotApplicable,
    Sample,
    Scenario,
    catalogue,
    select,
)

LIBRARIES = ("websockets", "aiohttp", "picows", "uvloop", "wsup")
#: One-minute load average above which the header warns that the machine is busy.
BUSY_LOAD = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare WebSocket servers side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, one repeat")
    parser.add_argument("--scenarios", help="comma-separated names or families (rr,echo,fanout)")
    parser.add_argument("--servers", help="comma-separated server names")
    parser.add_argument("--repeats", type=int, help="repeats per scenario (3, or 1 with --quick)")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    parser.add_argument("--logs", type=Path, help="keep server and load generator logs here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--server-args",
        action="append",
        default=[],
        metavar="SERVER=ARGS",
        help="extra command-line arguments for one server, e.g. 'wsup=--drain-window 0' "
        "(repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and servers, then exit")
    return parser.parse_args(argv)


def _names(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def server_args(values: list[str], known: list[str]) -> dict[str, tuple[str, ...]]:
    """``--server-args`` values (``SERVER=ARGS``, split like a shell) by server name.

    Raises:
        ValueError: a value without ``=``, or an unknown server.
    """
    by_server: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, equals, args = value.partition("=")
        if not equals:
            raise ValueError(f"--server-args {value!r}: expected SERVER=ARGS")
        if name not in known:
            raise ValueError(f"--server-args {value!r}: unknown server; known: {', '.join(known)}")
        by_server[name] = (*by_server.get(name, ()), *shlex.split(args))
    return by_server


def _versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _summary(scenario: Scenario, sample: Sample) -> str:
    first = [m for m in scenario.metrics if m.key in sample.values][:2]
    return ", ".join(f"{fmt(sample.values[m.key])} {m.label}" for m in first)


async def measure(scenario: Scenario, ctx: Context, outcome: Outcome) -> str:
    """Run one measurement into ``outcome``; a one-line summary for the progress log.

    Raises:
        StartFailed: the server did not start (the caller remembers it).
    """
    try:
        sample = await asyncio.wait_for(scenario.run(ctx), scenario.timeout)
    except NotApplicable as exc:
        outcome.status = "n/a"
        outcome.problems = [str(exc)]
        return f"n/a: {exc}"
    except TimeoutError:
        # Before OSError, of which TimeoutError is a subclass.
        outcome.problems.append(f"timed out after {scenario.timeout:.0f} s")
        return outcome.problems[-1]
    except (Failed, LoadgenError, OSError) as exc:
        outcome.problems.append(str(exc))
        return f"failed: {exc}"
    finally:
        await ctx.children.stop()
    for key, value in sample.values.items():
        outcome.values.setdefault(key, []).append(value)
    outcome.notes.extend(note for note in sample.notes if note not in outcome.notes)
    return _summary(scenario, sample)


async def run(args: argparse.Namespace) -> int:
    """Run the selected scenarios against the selected servers; the exit status."""
    # Children inherit the soft limit: a server that does not raise its own
    # still gets one descriptor per connection up to the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = QUICK if args.quick else FULL
    try:
        scenarios = select(catalogue(sizes), _names(args.scenarios))
        servers = registry.select(_names(args.servers))
        extra_args = server_args(args.server_args, [spec.name for spec in registry.SERVERS])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.list:
        for scenario in catalogue(sizes):
            print(f"{scenario.name:<16} {scenario.title}")
        print()
        for spec in registry.SERVERS:
            print(f"{spec.name:<16} {spec.description}")
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    pin = procfs.pinning(not args.no_pin)
    machine = procfs.machine()
    versions = _versions()
    settings: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "repeats": repeats,
        "pinning": pin.description,
        "machine": machine,
        "versions": versions,
        "servers": {spec.name: spec.description for spec in servers},
        "ping_interval_s": PING_INTERVAL,
        "sizes": dataclasses.asdict(sizes),
        "server_args": {name: list(value) for name, value in extra_args.items()},
    }
    header = [
        f"wsup bench ({settings['mode']}, {repeats} repeat{'s' * (repeats > 1)})",
        f"machine: {machine['cpus']} CPUs, {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"{machine['kernel']}, {machine['python']}",
        f"pinning: {pin.description}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        "compression: off unless the scenario says otherwise; client is picows on uvloop "
        "(storm: websockets' Sans-I/O client on uvloop)",
        f"table: median (min-max) over repeats; ratio = median / {registry.BASELINE} median",
    ]
    header.extend(f"{name} runs with: {shlex.join(value)}" for name, value in extra_args.items())
    load = os.getloadavg()[0]
    settings["load_average_at_start"] = load
    if load > BUSY_LOAD:
        header.append(
            f"warning: load average {load:.1f} at start: other processes compete for the "
            "CPUs and will distort the numbers"
        )
    print("\n".join(header) + "\n", flush=True)

    outcomes: dict[tuple[str, str], Outcome] = {}
    start_failures: dict[tuple[str, str, bool, tuple[str, ...]], str] = {}
    total = len(scenarios) * repeats * len(servers)
    done = 0
    with ExitStack() as stack:
        if args.logs is not None:
            log_dir = args.logs
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsup-bench-")))
        for scenario in scenarios:
            for repeat in range(repeats):
                for spec in servers:
                    done += 1
                    key = (scenario.name, spec.name)
                    outcome = outcomes.setdefault(key, Outcome(scenario.name, spec.name))
                    if outcome.status != "ok":
                        continue
                    if scenario.server_args is not None and spec.name not in scenario.server_args:
                        outcome.status = "n/a"
                        outcome.problems = ["the setting under test is not one of this server's"]
                        continue
                    own_args = (scenario.server_args or {}).get(spec.name, ())
                    # A server without a compression switch runs the same command either way.
                    switchable = spec.compression is registry.Compression.SWITCHABLE
                    start_key = (
                        spec.name,
                        scenario.app,
                        scenario.compression and switchable,
                        own_args,
                    )
                    if start_key in start_failures:
                        outcome.status = "failed to start"
                        outcome.problems = [start_failures[start_key]]
                        continue
                    ctx = Context(
                        spec,
                        pin,
                        log_dir,
                        tag=f"{scenario.name}-{spec.name}-{repeat}",
                        server_args=(*own_args, *extra_args.get(spec.name, ())),
                    )
                    began = time.monotonic()
                    try:
                        summary = await measure(scenario, ctx, outcome)
                    except StartFailed as exc:
                        start_failures[start_key] = exc.reason
                        outcome.status = "failed to start"
                        outcome.problems = [exc.reason]
                        summary = f"failed to start: {exc.reason}"
                    print(
                        f"[{done}/{total}] {scenario.name} #{repeat + 1} {spec.name}: "
                        f"{summary} ({time.monotonic() - began:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    for outcome in outcomes.values():
        if outcome.status == "ok" and not any(outcome.values.values()):
            outcome.status = "failed"

    print(render(scenarios, outcomes, [spec.name for spec in servers], registry.BASELINE))
    if args.json is not None:
        to_json(args.json, settings=settings, scenarios=scenarios, outcomes=outcomes)
        print(f"raw results written to {args.json}")
    succeeded = any(outcome.status == "ok" for outcome in outcomes.values())
    return 0 if succeeded else 1


async def run_until_signalled(args: argparse.Namespace) -> int:
    """:func:`run`, cancelled cleanly (children stopped) by SIGTERM as by Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run(args)
    except asyncio.CancelledError:
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, and stop every child process on Ctrl-C or SIGTERM too."""
    try:
        return asyncio.run(run_until_signalled(parse_args(argv)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
