"""Each limit against the attack it answers: wsup and the websockets server side by side.

``python -m bench.attacks`` runs every attack of :data:`ATTACKS` against a fresh
server process each time: ``wsup serve bench.wsup_app:attacks`` and the
websockets library's own echo server (``bench/servers/websockets_server.py``,
``websockets.asyncio.server.serve``), both on uvloop, both on 127.0.0.1 only,
both with pings every 5 s and a 5 s pong timeout (so that keepalive acts within
the attack). The hostile clients run in a process of their own
(:mod:`bench.attack_clients`).

For each run it samples the server process: resident memory (``VmRSS``), open
descriptors (``/proc/PID/fd``) and CPU seconds (user + system), before the
attack (the server idle), at the peak during it, and after it (the clients gone,
``--settle`` seconds later); whether the server still answers a WebSocket echo
afterwards; and what the clients saw (close codes, HTTP statuses, connections
still held at the end). It prints a Markdown table and, with ``--json``, writes
every number to a file.

Wall-clock times in the outcomes (how long the server took to end a
connection) depend on the machine and its load; RSS, descriptors and the
outcomes do not. ``--only big_message,fragments`` runs a subset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import procfs
from bench.processes import ROOT, ServerProcess, _die_with_parent, _kill_group
from bench.registry import SERVERS, Compression, Launch, ServerSpec, wsup_serve_command
from bench.scenarios import free_port
from bench.soak import open_fds
from bench.soak_clients import Client

#: Both servers ping every PING seconds and wait as long for the pong.
PING = 5.0
WSUP_APP = "bench.wsup_app:attacks"
MIB = 1 << 20


@dataclass(frozen=True)
class Attack:
    """One attack, the limit it tries, and how the clients run.

    Attributes:
        name: the attack's name (``--only``), also its client kind
            (:data:`bench.attack_clients.KINDS`) unless ``kind`` says another.
        limit: the wsup limit it answers, as docs/hardening.md names it.
        what: the attack in words.
        count: connections.
        seconds: how long the clients keep at it.
        kind: the client kind, when not ``name``.
        wsup_app: the wsup app it is tried against.
    """

    name: str
    limit: str
    what: str
    count: int
    seconds: float
    kind: str = ""
    wsup_app: str = WSUP_APP

    @property
    def client(self) -> str:
        """The client kind."""
        return self.kind or self.name


ATTACKS: tuple[Attack, ...] = (
    Attack("big_message", "max_size", "16 connections each announce a 64 MiB message", 16, 15),
    Attack(
        "fragments",
        "max_fragments",
        "8 connections each send a message in up to 1,000,000 one-byte fragments",
        8,
        30,
    ),
    Attack(
        "ping_flood",
        "pongs in outbound_limit",
        "16 connections send 125-byte pings, never read",
        16,
        15,
    ),
    Attack(
        "trickle_frame",
        "keepalive",
        "200 connections each trickle one frame, a byte every 2 s",
        200,
        30,
    ),
    Attack(
        "slowloris",
        "handshake_timeout",
        "500 connections each trickle a request head, a byte every 2 s",
        500,
        30,
    ),
    Attack(
        "flood",
        "inbound_rate",
        "4 connections send 64-byte messages as fast as the server reads",
        4,
        15,
    ),
    Attack(
        "big_head",
        "max_header_bytes",
        "200 connections each send a 800 KB request head (100 fields of 8,000 bytes), then wait",
        200,
        15,
    ),
    Attack(
        "hold",
        "max_connections",
        "3,000 connections opened and held (wsup: max_connections=1000)",
        3000,
        15,
    ),
    Attack(
        "per_address",
        "max_connections_per_address",
        "1,000 connections from one address opened and held (wsup: 100 per address)",
        1000,
        15,
        kind="hold",
        wsup_app="bench.wsup_app:attacks_per_address",
    ),
    Attack(
        "unfinished_message",
        "message_timeout",
        "200 connections each begin a message, then an empty fragment every 2 s, pings answered",
        200,
        30,
    ),
)

#: Limits not in this release: a row says so instead of numbers.
NOT_YET: dict[str, str] = {}


@dataclass
class Usage:
    """One reading of a server process."""

    rss: int
    fds: int
    cpu: float

    @classmethod
    def of(cls, pid: int) -> Usage:
        return cls(procfs.rss_bytes(pid), open_fds(pid), procfs.cpu_seconds(pid))


@dataclass
class Run:
    """One attack against one server."""

    attack: str
    limit: str
    server: str
    before: Usage
    peak: Usage
    after: Usage
    clients: dict[str, object]
    serves_after: bool


def _server(name: str, attack: Attack) -> ServerSpec:
    """The server ``name`` as ``attack`` runs it."""
    if name == "websockets":
        return next(spec for spec in SERVERS if spec.name == "websockets")

    def wsup(launch: Launch) -> list[str]:
        return wsup_serve_command(attack.wsup_app, launch.port)

    return ServerSpec(
        "wsup", f"wsup serve {attack.wsup_app}", wsup, Compression.UNSUPPORTED, drains=True
    )


async def _echoes(port: int) -> bool:
    """Whether the server still answers a WebSocket echo."""
    try:
        async with asyncio.timeout(10):
            client = await Client.open(port, "/echo")
            try:
                client.protocol.send_text(b"still there?")
                client.flush()
                while True:
                    for frame in await client.receive():
                        if frame.data == b"still there?":
                            return True
            finally:
                client.abort()
    except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def run_one(attack: Attack, spec: ServerSpec, logs: Path, settle: float) -> Run:
    """Start ``spec`` fresh, attack it, measure; stop it."""
    port = free_port()
    launch = Launch(port=port, app="echo", compression=False, ping_interval=PING)
    server = await ServerProcess.spawn(
        spec, launch, prefix=(), log=logs / f"{attack.name}-{spec.name}.log"
    )
    clients: asyncio.subprocess.Process | None = None
    try:
        await server.wait_listening(port, 60)
        await asyncio.sleep(settle)
        before = Usage.of(server.pid)
        peak = Usage(before.rss, before.fds, before.cpu)
        with (logs / f"{attack.name}-{spec.name}-clients.log").open("wb") as errors:
            clients = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.attack_clients",
                attack.client,
                "--port",
                str(port),
                "--count",
                str(attack.count),
                "--seconds",
                str(attack.seconds),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            output = asyncio.create_task(clients.communicate())
            while not output.done():
                now = Usage.of(server.pid)
                peak = Usage(max(peak.rss, now.rss), max(peak.fds, now.fds), now.cpu)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(output), 0.25)
            stdout, _ = await output
        await asyncio.sleep(settle)
        after = Usage.of(server.pid)
        peak.cpu = after.cpu
        lines = stdout.decode().strip().splitlines()
        report: dict[str, object] = json.loads(lines[-1]) if lines else {"error": "no report"}
        return Run(
            attack.name,
            attack.limit,
            spec.name,
            before,
            peak,
            after,
            report,
            await _echoes(port),
        )
    finally:
        await server.stop()
        if clients is not None and clients.returncode is None:
            await _kill_group(clients, grace=0)


def _mib(size: int) -> str:
    return f"{size / MIB:.0f}"


def _outcome(clients: dict[str, object]) -> str:
    outcomes = clients.get("outcomes")
    if not isinstance(outcomes, dict):
        return str(clients)
    text = ", ".join(f"{what}: {count}" for what, count in sorted(outcomes.items()))
    median = clients.get("ended_median_s")
    return text + (f" (median {median} s)" if median is not None else "")


def _sent(clients: dict[str, object]) -> str:
    """What the clients got the server to take: MB, and messages echoed back if any."""
    sent = clients.get("sent")
    if not isinstance(sent, dict):
        return "—"
    text = f"{sent.get('bytes', 0) / 1e6:.1f} MB"
    echoed = sent.get("echoed")
    return text + (f", {echoed:,} echoed" if echoed else "")


def table(attacks: tuple[Attack, ...], runs: list[Run]) -> str:
    """The Markdown table of every run, wsup's row above the websockets server's."""
    lines = [
        "| Limit | Attack | Server | RSS MiB before → peak → after | CPU s"
        " | fds before → peak → after | Clients sent | What the clients saw | Serves after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for attack in attacks:
        for run in (r for r in runs if r.attack == attack.name):
            lines.append(
                f"| {run.limit} | {attack.what} | {run.server} "
                f"| {_mib(run.before.rss)} → {_mib(run.peak.rss)} → {_mib(run.after.rss)} "
                f"| {run.after.cpu - run.before.cpu:.1f} "
                f"| {run.before.fds} → {run.peak.fds} → {run.after.fds} "
                f"| {_sent(run.clients)} "
                f"| {_outcome(run.clients)} | {'yes' if run.serves_after else 'no'} |"
            )
    for limit, why in NOT_YET.items():
        lines.append(f"| {limit} | — | — | — | — | — | — | {why} | — |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="attacks to run, separated by commas")
    parser.add_argument("--servers", default="wsup,websockets")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before and after")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs here")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> list[Run]:
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - {a.name for a in ATTACKS}
    if unknown:
        raise SystemExit(f"unknown attacks: {', '.join(sorted(unknown))}")
    attacks = tuple(a for a in ATTACKS if not names or a.name in names)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="wsup-attacks-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"logs in {logs}", file=sys.stderr)
    runs = []
    for attack in attacks:
        for name in args.servers.split(","):
            started = time.monotonic()
            run = await run_one(attack, _server(name, attack), logs, args.settle)
            runs.append(run)
            print(
                f"{attack.name} on {name}: {_outcome(run.clients)}"
                f" ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(table(attacks, runs))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(run) for run in runs], indent=2))
    return runs


def main(argv: list[str] | None = None) -> None:
    """Run the attacks; print the table."""
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
