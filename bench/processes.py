"""Starting, watching and always stopping the server and load generator processes.

Every child runs in its own session (process group) with its output in a log
file, never a pipe the harness might stop reading (a full pipe would stall the
server mid-measurement). Load generators are the exception: their standard
input and output are the command channel (see :mod:`bench.loadgen`). The
harness stops children by their own process group id, and :class:`Children`
makes sure that happens on every exit path, including timeouts and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procfs
from bench.registry import Launch, ServerSpec

#: The repository root: servers import ``examples`` and ``bench`` from here.
ROOT = Path(__file__).resolve().parent.parent

Event = dict[str, Any]


class StartFailed(Exception):
    """A server did not start listening.

    Attributes:
        reason: one line saying why (exit status and last line of its output,
            or the timeout).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoadgenError(Exception):
    """A load generator reported an error, exited early, or did not answer in time."""


class LoadgenTimeout(LoadgenError):
    """A load generator did not send the expected event in time."""


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when the harness dies (Linux only).

    Runs in the child between fork and exec. It is the backstop for the one
    exit path the harness cannot clean up after: being killed outright.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


async def _kill_group(process: asyncio.subprocess.Process, grace: float) -> None:
    """Stop the child's process group: SIGTERM first when ``grace`` > 0, then SIGKILL."""
    if process.returncode is not None:
        return
    steps = ((signal.SIGTERM, grace),) if grace > 0 else ()
    for signum, wait in (*steps, (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue


class ServerProcess:
    """A running server under test."""

    def __init__(self, spec: ServerSpec, process: asyncio.subprocess.Process, log: Path) -> None:
        self.spec = spec
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        """The server's process id (``taskset`` execs, so this is the server itself)."""
        return self.process.pid

    @classmethod
    async def spawn(
        cls,
        spec: ServerSpec,
        launch: Launch,
        *,
        prefix: tuple[str, ...],
        log: Path,
    ) -> ServerProcess:
        """Start the server; call :meth:`wait_listening` next.

        Raises:
            StartFailed: the command could not be run at all.
        """
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as output:
            try:
                process = await asyncio.create_subprocess_exec(
                    *prefix,
                    *spec.command(launch),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise StartFailed(f"cannot run: {exc}") from exc
        return cls(spec, process, log)

    async def wait_listening(self, port: int, timeout: float) -> None:
        """Wait until ``port`` accepts TCP connections.

        Raises:
            StartFailed: the process exited, or the port did not open within
                ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise StartFailed(
                    f"exited with status {self.process.returncode}: {_tail(self.log)}"
                )
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            except (TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise StartFailed(f"not listening after {timeout:.0f} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its descendants."""
        return procfs.cpu_seconds(self.pid)

    def cpu_times(self) -> tuple[float, float]:
        """User and system CPU time used so far by the server and its descendants."""
        return procfs.cpu_times(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the server and its descendants."""
        return procfs.rss_bytes(self.pid)

    def peak_rss_bytes(self) -> int:
        """The highest resident memory the server (and its descendants) reached."""
        return procfs.peak_rss_bytes(self.pid)

    def open_files_limit(self) -> int | None:
        """The server's soft open-file limit."""
        return procfs.open_files_limit(self.pid)

    def terminate(self) -> None:
        """Send SIGTERM to the server process itself (what an orchestrator does)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> float | None:
        """Wait for the server to exit; the ``time.monotonic()`` it was seen gone, or ``None``."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return None
        return time.monotonic()

    async def stop(self) -> None:
        """Kill the server's whole process group.

        The measurement is over by then; a graceful shutdown would only add
        its own duration (and its close timeouts) to every run.
        """
        await _kill_group(self.process, grace=0)


class Loadgen:
    """A load generator process and its command channel."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.ready: Event = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        """The load generator's process id."""
        return self.process.pid

    @classmethod
    async def spawn(
        cls,
        mode: str | None,
        args: list[str],
        *,
        prefix: tuple[str, ...],
        log: Path,
        module: str = "bench.loadgen",
    ) -> Loadgen:
        """Start ``python -m MODULE [MODE] ARGS``; call :meth:`wait_ready` next.

        ``module`` is :mod:`bench.loadgen` or another client speaking its
        protocol (:mod:`bench.storm_clients`, which has no modes).
        """
        with log.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                *prefix,
                sys.executable,
                "-m",
                module,
                *((mode,) if mode is not None else ()),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return cls(process, log)

    async def wait_ready(self, timeout: float) -> Event:
        """Wait until the process has opened its connections; its ready event.

        Raises:
            LoadgenError: it failed or was not ready within ``timeout`` seconds.
        """
        self.ready = await self.expect("ready", timeout)
        return self.ready

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                await self._events.put(json.loads(line))
        await self._events.put(None)

    async def send(self, command: Event) -> None:
        """Send one command line.

        Raises:
            LoadgenError: the process is gone.
        """
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(command) + "\n").encode())
            await self.process.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise LoadgenError(f"load generator gone: {_tail(self.log)}") from exc

    async def expect(
        self,
        event: str,
        timeout: float,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """Wait for the next ``event`` (matching ``where``), discarding others.

        Raises:
            LoadgenError: an error event, end of output, or no match in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                item = await asyncio.wait_for(self._events.get(), remaining)
            except TimeoutError:
                raise LoadgenTimeout(
                    f"no {event!r} from load generator in {timeout:.0f} s"
                ) from None
            if item is None:
                # Keep the end marker for whoever waits next.
                self._events.put_nowait(None)
                raise LoadgenError(f"load generator exited: {_tail(self.log)}")
            if item.get("event") == "error":
                raise LoadgenError(f"load generator: {item.get('message')}")
            if item.get("event") == event and (where is None or where(item)):
                return item

    def cpu_seconds(self) -> float:
        """CPU time used so far by the load generator."""
        return procfs.cpu_seconds(self.pid)

    async def stop(self) -> None:
        """Ask the process to quit, then kill its process group if it lingers.

        A load generator reads its commands between runs only, so one in the
        middle of a run is killed after a second.
        """
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 1.0)
        await _kill_group(self.process, grace=0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Children:
    """Every process started for one measurement, stopped together at the end."""

    def __init__(self) -> None:
        self.servers: list[ServerProcess] = []
        self.loadgens: list[Loadgen] = []

    async def stop(self) -> None:
        """Stop servers first, then load generators.

        Killing the server first leaves TIME_WAIT on the server side, so the
        client ports of a large run are free again for the next one.
        """
        await asyncio.gather(*(server.stop() for server in self.servers))
        await asyncio.gather(*(loadgen.stop() for loadgen in self.loadgens))
        self.servers.clear()
        self.loadgens.clear()
