"""Run ``python -m supervisor serve`` as a child process and follow its JSON log.

Theory of operation: the child writes one JSON object per line on stderr
(``--log-format json``). A reader thread drains the pipe all the time (a full
pipe would block the server) and keeps every line; tests wait for a given
``event`` under a condition variable instead of sleeping, and read stdout and
stderr once the child has exited. The child always ends: :meth:`ServerProcess.stop`
kills it if it is still running, and the context manager calls it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.processes import StopsOnExit, free_port

__all__ = ["ROOT", "STARTUP_TIMEOUT", "ServerProcess", "child_env", "free_port", "run_cli"]

ROOT = Path(__file__).resolve().parents[3]
"""The repository root: the child's working directory, so ``tests.…`` and ``examples.…`` import."""


STARTUP_TIMEOUT = 60.0
"""Seconds :meth:`ServerProcess.wait_started` waits for a child to listen: only a hang
guard (a child that exits is noticed at once), and long because starting a Python
process (its imports) is what a busy machine slows down most."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without ``WSUP_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSUP_")}
    env.update(extra or {})
    return env


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run the command line to completion (``python -m supervisor`` unless ``command``).

    ``subprocess.run`` kills the child if it outlives ``timeout``.
    """
    return subprocess.run(
        [*(command or (sys.executable, "-m", "supervisor")), *args],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _limit_files(soft: int) -> None:
    """Lower this process's soft limit of open descriptors (runs in the child, before exec)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ServerProcess(StopsOnExit):
    """A ``wsup serve`` child process on 127.0.0.1.

    Args:
        target: ``MODULE:ATTR`` of the app.
        args: more command-line arguments.
        port: the port it will listen on (default: a free one).
        port_option: pass ``--port`` (False when the port comes from ``WSUP_PORT``).
        env: extra environment variables (``WSUP_*`` of this process are not inherited).
        log_format: passed as ``--log-format`` unless None.
        open_files: the child's soft limit of open file descriptors (``RLIMIT_NOFILE``),
            if given.
        command: run this instead of ``python -m supervisor serve TARGET ARGS``
            (an ASGI server, for instance); ``target``, ``args`` and the options
            above that build the command line are then ignored.
    """

    def __init__(
        self,
        target: str,
        *args: str,
        port: int | None = None,
        port_option: bool = True,
        env: Mapping[str, str] | None = None,
        log_format: str | None = "json",
        open_files: int | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.port = free_port() if port is None else port
        if command is None:
            command = [sys.executable, "-m", "supervisor", "serve", target, *args]
            if port_option:
                command += ["--port", str(self.port)]
            if log_format is not None:
                command += ["--log-format", log_format]
        self.command = list(command)
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._forgotten = 0
        self._changed = threading.Condition()
        self._eof = False
        self._process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=None if open_files is None else functools.partial(_limit_files, open_files),
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def __enter__(self) -> ServerProcess:
        return self

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._process.poll()

    def url(self, path: str) -> str:
        """Return the ``ws://`` URL of ``path`` on this server."""
        return f"ws://127.0.0.1:{self.port}{path}"

    def _read_stderr(self) -> None:
        stream = self._process.stderr
        assert stream is not None
        for line in stream:
            record: Any = None
            with contextlib.suppress(ValueError):
                record = json.loads(line)
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if isinstance(record, dict):
                    self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Return the JSON log records seen so far (only those of event ``name`` if given),
        but for those logged before :meth:`forget_events`."""
        with self._changed:
            records = self.records[self._forgotten :]
        return [r for r in records if name is None or r.get("event") == name]

    def forget_events(self) -> None:
        """Leave the records logged so far out of :meth:`events` and :meth:`wait_for_event`
        (a server that several tests share: each sees its own)."""
        with self._changed:
            self._forgotten = len(self.records)

    def _matching(
        self, name: str, where: Callable[[dict[str, Any]], bool] | None
    ) -> list[dict[str, Any]]:
        return [r for r in self.events(name) if where is None or where(r)]

    def wait_for_event(
        self,
        name: str,
        *,
        count: int = 1,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Wait until ``count`` records of event ``name`` (that satisfy ``where``) were
        logged; return the last of those ``count``.

        Raises:
            AssertionError: the child exited first, or ``timeout`` seconds passed;
                the message carries the child's log.
        """
        with self._changed:
            ended = self._changed.wait_for(
                lambda: len(self._matching(name, where)) >= count or self._eof,
                timeout=timeout,
            )
        found = self._matching(name, where)
        if len(found) >= count:
            return found[count - 1]
        why = "timed out" if not ended else f"the server exited ({self._process.poll()})"
        raise AssertionError(f"no {name!r} event: {why}; log:\n" + "\n".join(self.lines))

    def wait_started(
        self, event: str = "server.started", *, timeout: float = STARTUP_TIMEOUT
    ) -> dict[str, Any]:
        """Wait until the child logged that it started (``event``: ``server.started``,
        or ``workers.started`` for a master of ``--workers``); return that record.

        Raises:
            AssertionError: the child exited first, or ``timeout`` seconds passed.
        """
        return self.wait_for_event(event, timeout=timeout)

    def wait_for_line(self, text: str, *, timeout: float = 20.0) -> str:
        """Wait until a stderr line contains ``text``; return that line.

        Raises:
            AssertionError: the child exited first, or ``timeout`` seconds passed.
        """

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._eof, timeout=timeout)
            line = found()
        if line is None:
            raise AssertionError(f"no line with {text!r}; log:\n" + "\n".join(self.lines))
        return line

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the child."""
        self._process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit and for its stderr to be read; return the exit status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        status = self._process.wait(timeout)
        self._reader.join(timeout)
        return status

    def log(self) -> str:
        """Return everything the child wrote on stderr so far."""
        return "\n".join(self.lines)

    def stop(self) -> None:
        """Kill the child if it still runs, and reap it. Idempotent."""
        if self._process.poll() is None:
            self._process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(10)
        self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        if self._process.stderr is not None:
            self._process.stderr.close()
