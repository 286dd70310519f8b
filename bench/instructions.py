"""CPU instructions per handshake, echoed message or round trip, counted by callgrind.

Not a test. On a shared machine the CPU time a server spends per handshake
swings by ±15 % from one run to the next; the number of instructions it
executes does not. Each server is started twice under ``valgrind
--tool=callgrind``, with a load generator of ``bench.loadgen`` running for a
short and for a long window:

* ``--scenario handshake`` (the default): 4 concurrent connectors (connect,
  opening handshake, close handshake);
* ``--scenario echo``: ``--conns`` connections (100) keeping 32 messages of
  ``--size`` bytes (4096) in flight each, as the ``echo-*`` scenarios do;
* ``--scenario rr-echo``: ``--conns`` connections (100) with one message of
  ``--size`` bytes (4096) in flight each: send, wait for the echo, send the
  next, as the ``rr-*`` scenarios do.

The short run then idles for the rest of the long window, so both runs last
as long: the difference in instructions divided by the difference in
handshakes (or messages, or round trips) is what one costs in user space, with
start-up, connecting, shutdown *and the server's own work per second* (its
timers, a watchdog's heartbeat) cancelled out. Without the idle tail that
per-second work was charged to the extra operations of the long run: tens of
thousands of instructions per handshake on a busy machine, where fewer
handshakes fit in the window. The kernel's share (accept, reads,
writes, close) is not counted, and a server runs some 50 times slower under
valgrind (an echo server then reads bigger batches than at full speed), so
this compares code paths, not throughput.

Usage: ``python -m bench.instructions [--scenario handshake|echo|rr-echo]
[--servers websockets,wsup] [--short S] [--long S] [--conns N] [--size B]``.
Requires valgrind; one to three minutes per server (the two runs of a server
go side by side).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.registry import Launch, ServerSpec, select

_STARTUP_TIMEOUT = 600.0
"""Seconds a server may take to listen under valgrind (minutes on a busy machine)."""
_STARTS = 3
"""Attempts to start a server that exits before it listens."""

#: ``--scenario`` to the ``bench.loadgen`` mode that produces its load.
MODES = {"handshake": "handshake", "echo": "echo", "rr-echo": "rr"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _ExitedEarly(RuntimeError):
    """The server exited before it listened."""


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on ``port`` (Linux ``/proc``): a
    server that takes minutes to start under valgrind may find its port taken by
    another process meanwhile."""
    sockets = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        table = [
            line
            for name in ("tcp", "tcp6")
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        ]
    except OSError:
        return False
    for line in table:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if (
            state == "0A"  # LISTEN
            and int(local.rpartition(":")[2], 16) == port
            and f"socket:[{inode}]" in sockets
        ):
            return True
    return False


def _wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise _ExitedEarly(f"the server exited with {server.returncode} before listening")
        if _listens(server.pid, port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not listen within {_STARTUP_TIMEOUT:g} s")


@dataclass(frozen=True)
class Load:
    """What the load generator does: a ``bench.loadgen`` mode and its options."""

    mode: str
    """``handshake``, ``echo`` or ``rr`` (request/response)."""
    conns: int = 100
    """Echo connections."""
    size: int = 4096
    """Echo message size in bytes."""

    @property
    def unit(self) -> str:
        """What one counted operation is."""
        if self.mode == "handshake":
            return "handshake"
        return f"{self.size}-byte {'round trip' if self.mode == 'rr' else 'echo'}"

    def options(self) -> list[str]:
        """The load generator's options after its URL."""
        if self.mode == "handshake":
            return ["--concurrency", "4"]
        sized = ["--conns", str(self.conns), "--size", str(self.size)]
        return sized if self.mode == "rr" else [*sized, "--window", "32"]


def _operations(port: int, seconds: float, load: Load) -> int:
    """Run the load generator for ``seconds``; the number of handshakes or echoes done."""
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        load.mode,
        "--url",
        f"ws://127.0.0.1:{port}/echo",
        *load.options(),
    ]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as loadgen:
        assert loadgen.stdin is not None
        assert loadgen.stdout is not None
        ready = json.loads(loadgen.stdout.readline())
        if ready.get("failed"):
            raise RuntimeError(f"{ready['failed']} connections failed: {ready.get('error')}")
        loadgen.stdin.write(json.dumps({"cmd": "run", "duration": seconds}) + "\n")
        loadgen.stdin.flush()
        result = json.loads(loadgen.stdout.readline())
        loadgen.stdin.write('{"cmd": "quit"}\n')
        loadgen.stdin.flush()
    if result.get("errors"):
        raise RuntimeError(f"{result['errors']} operations failed: {result.get('error')}")
    if result.get("stalled"):
        raise RuntimeError(f"{result['stalled']} echoes never came back")
    done: int = result["handshakes" if load.mode == "handshake" else "messages"]
    return done


def _count(
    spec: ServerSpec,
    seconds: float,
    workdir: Path,
    load: Load,
    env: dict[str, str] | None = None,
    idle: float = 0.0,
) -> tuple[int, int]:
    """One run: ``(operations, instructions)`` of the server process from start to exit.

    ``env``: the server's environment (by default this process's); ``idle``:
    seconds the server runs without load after the load's ``seconds``.
    """
    log = workdir / f"{spec.name}-{seconds:g}.log"
    errors = workdir / f"{spec.name}-{seconds:g}.err"
    for attempt in range(_STARTS):
        port = _free_port()
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={workdir / f'{spec.name}-{seconds:g}.out'}",
            f"--log-file={log}",
            *spec.command(Launch(port=port, app="echo", compression=False, ping_interval=20.0)),
        ]
        with errors.open("wb") as stderr:
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            _wait_listening(port, server)
        except _ExitedEarly:
            # Most likely the port went to another process's connection meanwhile
            # (on a machine where other benchmarks run): once more on another port.
            tail = errors.read_text(errors="replace")[-2000:]
            if attempt == _STARTS - 1:
                raise RuntimeError(f"the server exited before listening:\n{tail}") from None
            continue
        except BaseException:
            server.kill()
            server.wait()
            raise
        break
    try:
        done = _operations(port, seconds, load)
        time.sleep(1.0 + idle)  # let the last closes finish before the shutdown
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"callgrind reported no total (see {log})")
    return done, int(found.group(1))


def measure(
    spec: ServerSpec, short: float, long: float, load: Load = Load("handshake")
) -> tuple[float, int, int]:
    """Instructions per operation of ``spec``, and the operations of the two runs
    (the short one idles for ``long - short`` seconds after its load)."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        first = pool.submit(_count, spec, short, Path(tmp), load, None, long - short)
        second = pool.submit(_count, spec, long, Path(tmp), load)
        (n1, i1), (n2, i2) = first.result(), second.result()
    if n2 <= n1:
        raise RuntimeError(f"the long run did no more operations ({n2}) than the short ({n1})")
    return (i2 - i1) / (n2 - n1), n1, n2


def arguments(description: str, scenario: str, servers: str) -> argparse.ArgumentParser:
    """The command line of this module (and of ``bench.sections``), with its defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", choices=sorted(MODES), default=scenario)
    parser.add_argument("--servers", default=servers, help="comma-separated names")
    parser.add_argument("--conns", type=int, default=100, help="echo connections")
    parser.add_argument("--size", type=int, default=4096, help="echo message size (bytes)")
    parser.add_argument("--short", type=float, default=5.0, help="short window (s)")
    parser.add_argument("--long", type=float, default=20.0, help="long window (s)")
    return parser


def chosen(args: argparse.Namespace) -> tuple[list[ServerSpec], Load]:
    """The servers and the load the parsed command line names."""
    specs = select([name for name in args.servers.split(",") if name])
    return specs, Load(MODES[args.scenario], conns=args.conns, size=args.size)


def main(argv: list[str] | None = None) -> None:
    """Measure the servers named on the command line and print one line each."""
    args = arguments(__doc__.splitlines()[0], "handshake", "websockets,wsup").parse_args(argv)
    specs, load = chosen(args)
    results: dict[str, float] = {}
    for spec in specs:
        per, n1, n2 = measure(spec, args.short, args.long, load)
        results[spec.name] = per
        print(
            f"{spec.name:<11} {per:>11,.0f} instructions per {load.unit}  "
            f"({n1} and {n2} under valgrind)",
            flush=True,
        )
    if "websockets" in results:
        for name, per in results.items():
            print(f"{name:<11} {per / results['websockets']:>11.2f} x websockets")


if __name__ == "__main__":
    main()
