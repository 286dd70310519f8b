"""CPU instructions per handshake, counted by valgrind's callgrind (not a test).

On a shared machine the CPU time a server spends per handshake swings by
±15 % from one run to the next; the number of instructions it executes does
not. Each server is started twice under ``valgrind --tool=callgrind``, with
the handshake load generator of ``bench.loadgen`` (4 concurrent connectors:
connect, opening handshake, close handshake) running for a short and for a
long window. The difference in instructions divided by the difference in
handshakes is what one handshake and its close cost in user space, with
start-up and shutdown cancelled out. The kernel's share (accept, reads,
writes, close) is not counted, and a server runs some 50 times slower under
valgrind, so this compares code paths, not throughput.

Usage: ``python -m bench.instructions [--servers websockets,wsup] [--short S]
[--long S]``. Requires valgrind; about a minute per server (the two runs of a
server go side by side).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.registry import Launch, ServerSpec, select

_STARTUP_TIMEOUT = 180.0
"""Seconds a server may take to listen under valgrind."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not listen within {_STARTUP_TIMEOUT:g} s")


def _handshakes(port: int, seconds: float) -> int:
    """Run the handshake load generator for ``seconds``; the number of handshakes done."""
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "handshake",
        "--url",
        f"ws://127.0.0.1:{port}/echo",
        "--concurrency",
        "4",
    ]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as loadgen:
        assert loadgen.stdin is not None
        assert loadgen.stdout is not None
        loadgen.stdout.readline()  # ready
        loadgen.stdin.write(json.dumps({"cmd": "run", "duration": seconds}) + "\n")
        loadgen.stdin.flush()
        result = json.loads(loadgen.stdout.readline())
        loadgen.stdin.write('{"cmd": "quit"}\n')
        loadgen.stdin.flush()
    if result.get("errors"):
        raise RuntimeError(f"{result['errors']} handshakes failed: {result.get('error')}")
    done: int = result["handshakes"]
    return done


def _count(spec: ServerSpec, seconds: float, workdir: Path) -> tuple[int, int]:
    """One run: ``(handshakes, instructions)`` of the server process from start to exit."""
    port = _free_port()
    log = workdir / f"{spec.name}-{seconds:g}.log"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={workdir / f'{spec.name}-{seconds:g}.out'}",
        f"--log-file={log}",
        *spec.command(Launch(port=port, app="echo", compression=False, ping_interval=20.0)),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, server)
        done = _handshakes(port, seconds)
        time.sleep(1.0)  # let the last closes finish before the shutdown
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


def measure(spec: ServerSpec, short: float, long: float) -> tuple[float, int, int]:
    """Instructions per handshake of ``spec``, and the handshakes of the two runs."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        first = pool.submit(_count, spec, short, Path(tmp))
        second = pool.submit(_count, spec, long, Path(tmp))
        (n1, i1), (n2, i2) = first.result(), second.result()
    if n2 <= n1:
        raise RuntimeError(f"the long run did no more handshakes ({n2}) than the short ({n1})")
    return (i2 - i1) / (n2 - n1), n1, n2


def main(argv: list[str] | None = None) -> None:
    """Measure the servers named on the command line and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="websockets,wsup", help="comma-separated names")
    parser.add_argument("--short", type=float, default=5.0, help="short window (s)")
    parser.add_argument("--long", type=float, default=20.0, help="long window (s)")
    args = parser.parse_args(argv)
    specs = select([name for name in args.servers.split(",") if name])
    results: dict[str, float] = {}
    for spec in specs:
        per, n1, n2 = measure(spec, args.short, args.long)
        results[spec.name] = per
        print(
            f"{spec.name:<11} {per:>11,.0f} instructions/handshake  "
            f"({n1} and {n2} handshakes under valgrind)",
            flush=True,
        )
    if "websockets" in results:
        for name, per in results.items():
            print(f"{name:<11} {per / results['websockets']:>11.2f} x websockets")


if __name__ == "__main__":
    main()
