"""Cost of wsup's instrumentation: echo with metrics on versus patched out (not a test).

Starts the echo example twice per round in its own process, pinned to CPU 0:
once as shipped, once with every per-message and per-batch metric update
replaced by a no-op (this file's ``--off`` child mode). The load generator
(``bench.loadgen``, pinned to CPU 1) keeps 100 connections x 32 in flight for
a fixed time. Server CPU time per message comes from ``/proc/PID/stat``.

Usage: ``python -m bench.instrumentation [--rounds N] [--duration S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() else []


def _serve(off: bool, port: int) -> None:
    """Child mode: serve examples.echo, with instrumentation patched out if ``off``."""
    import anyio

    from examples.echo import app
    from supervisor import Server, ServerConfig
    from supervisor.observe import _instrumentation
    from supervisor.observe._logging import configure_logging
    from supervisor.server import _server

    if off:

        class _Null:
            def inc(self, amount: float = 1) -> None:
                pass

        class _NullCounters:
            def __init__(self, metrics: object) -> None:
                null = _Null()
                self.flush = lambda: None
                self.received_text = self.received_binary = self.received_bytes = null
                self.sent_text = self.sent_binary = self.sent_bytes = null

        _server._HotCounters = _NullCounters  # type: ignore[assignment,misc]
        _instrumentation.MetricsInstrumentation.message_processed = (  # type: ignore[method-assign]
            lambda self, kind, wait, duration: None
        )
    configure_logging("json", "warning")
    server = Server(app, ServerConfig(port=port))
    anyio.run(server.serve, backend_options={"use_uvloop": True})


def _round(off: bool, duration: float) -> float:
    port = _port()
    child = [sys.executable, "-m", "bench.instrumentation", "--serve", str(port)]
    server = subprocess.Popen([*_pin(0), *child, *(["--off"] if off else [])])
    try:
        load = subprocess.Popen(
            [
                *_pin(1),
                sys.executable,
                "-m",
                "bench.loadgen",
                "echo",
                "--url",
                f"ws://127.0.0.1:{port}/echo",
                "--conns",
                "100",
                "--size",
                "32",
                "--window",
                "32",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdin is not None
        assert load.stdout is not None
        deadline = time.monotonic() + 20
        for _ in range(200):  # the server may still be starting: the loadgen retries
            line = load.stdout.readline()
            if not line or '"ready"' in line or time.monotonic() > deadline:
                break
        before = _cpu(server.pid)
        load.stdin.write(json.dumps({"cmd": "run", "duration": duration}) + "\n")
        load.stdin.flush()
        result = json.loads(load.stdout.readline())
        after = _cpu(server.pid)
        load.stdin.write('{"cmd": "quit"}\n')
        load.stdin.close()
        load.wait(timeout=20)
        return (after - before) / result["messages"] * 1e6
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.off, args.serve)
        return
    on: list[float] = []
    off: list[float] = []
    for _ in range(args.rounds):
        on.append(_round(False, args.duration))
        off.append(_round(True, args.duration))
    overhead = [a / b - 1 for a, b in zip(on, off, strict=True)]
    print(f"echo 100 conns x 32 B, {args.rounds} rounds of {args.duration:g} s, server CPU µs/msg")
    for label, values in (("metrics on ", on), ("metrics off", off)):
        print(
            f"  {label}: median {statistics.median(values):6.2f}  "
            f"(min {min(values):.2f}, max {max(values):.2f})"
        )
    print(
        f"  overhead   : median {statistics.median(overhead):+.1%}  "
        f"(min {min(overhead):+.1%}, max {max(overhead):+.1%})"
    )


if __name__ == "__main__":
    main()
