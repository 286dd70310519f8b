"""The master process of ``wsup serve --workers N``.

Theory of operation: the master serves nothing itself. It starts N worker
processes, each a complete single-process ``wsup serve`` listening on the same
port with ``SO_REUSEPORT`` (the kernel spreads new connections over them), and
then only watches:

* a worker that exits on its own is restarted after a backoff delay (growing
  while it keeps crashing), with a WARNING line naming it and its exit status;
* SIGTERM or SIGINT is forwarded to every worker, which drains as a single
  process would; the master exits 0 once all of them exited cleanly. A second
  signal is forwarded too (workers then stop without draining). SIGUSR1
  ("stop accepting") is forwarded as is.

Workers live in their own process group, so a Ctrl-C on the terminal reaches
only the master, which forwards it once. Each worker shares a socket pair with
the master: it writes ``ready`` once it serves, and if the master dies the
worker reads end-of-file and drains (no orphaned workers). The first worker
starts alone; if it fails before it is ready (a port already taken, Redis
unreachable) the master exits with its status instead of restarting it in a
loop, so a configuration error reads as one error line.

Metrics: workers run prometheus-client's multiprocess mode in a directory the
master creates (or ``PROMETHEUS_MULTIPROC_DIR`` if set) and removes at exit; the
master marks each exited worker dead so its live gauges stop counting.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias

import structlog

from actors import Backoff
from actors._policy import BackoffState

__all__ = ["WORKER_FD_VARIABLE", "Master", "worker_channel"]

WORKER_FD_VARIABLE = "WSUP_WORKER_FD"
"""Environment variable naming a worker's end of its socket pair with the master."""

_READY = b"ready\n"
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD)
_Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_log = structlog.get_logger("wsup.workers")


def worker_channel() -> socket.socket | None:
    """In a worker process, return its socket to the master (once), else None."""
    value = os.environ.pop(WORKER_FD_VARIABLE, None)
    if value is None:
        return None
    fd = int(value)
    os.set_inheritable(fd, False)  # not for the app's own child processes
    channel = socket.socket(fileno=fd)
    channel.setblocking(False)
    return channel


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


@dataclass(slots=True)
class _Worker:
    """One worker slot: the process in it now, and its restart bookkeeping."""

    index: int
    backoff: BackoffState
    process: subprocess.Popen[bytes] | None = None
    channel: socket.socket | None = None
    ready: bool = False
    restart_at: float | None = None
    statuses: list[int] = field(default_factory=list)


class Master:
    """Starts, watches and stops N worker processes.

    Args:
        command: the worker command line (a single-process ``wsup serve`` with
            ``--reuse-port``).
        count: how many workers.
        env: extra environment variables for the workers.
        restart: backoff between restarts of one worker slot.
        metrics_dir: the shared multiprocess-metrics directory (default: a new
            temporary one, removed at exit).
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        *,
        env: Mapping[str, str] | None = None,
        restart: Backoff | None = None,
        metrics_dir: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if count < 1:
            raise ValueError("need at least one worker")
        self.command = list(command)
        self.count = count
        self.env = dict(env or {})
        self.restart = restart or Backoff(minimum=0.1, maximum=10.0, reset_after=60.0)
        self.clock = clock
        self._metrics_dir = metrics_dir
        self._own_metrics_dir = False
        self._workers = [_Worker(i, BackoffState(self.restart)) for i in range(count)]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._starting = True
        self._signals = 0

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until every worker has stopped; return the exit status for the master.

        0 after a signal-triggered shutdown in which every worker exited 0; the
        failing worker's status when the first worker cannot start; else 1.
        """
        handlers, wakeup = self._install_signals()
        try:
            self._prepare_metrics()
            first = self._workers[0]
            self._spawn(first)
            while not first.ready:
                if first.process is None:  # it exited before it was ready
                    status = first.statuses[-1] if first.statuses else 1
                    _log.error("workers.start_failed", worker=0, status=_describe_status(status))
                    return status if status > 0 else 1
                if self._stopping:
                    break
                self._step(None)
            self._starting = False
            if not self._stopping:
                for worker in self._workers[1:]:
                    self._spawn(worker)
            announced = False
            while True:
                if self._stopping and not any(w.process for w in self._workers):
                    break
                if not announced and all(w.ready for w in self._workers):
                    announced = True
                    _log.info(
                        "workers.started",
                        workers=self.count,
                        pids=[w.process.pid for w in self._workers if w.process],
                    )
                self._step(self._next_timeout())
                self._restart_due()
            failed = [w.statuses[-1] for w in self._workers if w.statuses and w.statuses[-1]]
            status = 0 if not failed else 1
            _log.info("workers.stopped", status=status)
            return status
        finally:
            self._kill_all()
            self._restore_signals(handlers, wakeup)
            self._cleanup_metrics()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _step(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                self._read_signals()
            else:
                worker: _Worker = key.data
                self._read_channel(worker)
        self._reap()

    def _next_timeout(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        if not due:
            return None
        return max(0.0, min(due) - self.clock())

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        env = {
            **os.environ,
            **self.env,
            WORKER_FD_VARIABLE: str(theirs.fileno()),
            "WSUP_WORKER_INDEX": str(worker.index),
        }
        if self._metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        try:
            process = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                # Its own group: a terminal's Ctrl-C reaches the master only,
                # which forwards it once.
                process_group=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.process = process
        worker.channel = ours
        worker.ready = False
        worker.restart_at = None
        self._selector.register(ours, selectors.EVENT_READ, worker)
        _log.info("worker.spawned", worker=worker.index, pid=process.pid)

    def _read_channel(self, worker: _Worker) -> None:
        channel = worker.channel
        assert channel is not None
        try:
            data = channel.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_channel(worker)
            return
        if _READY in data and not worker.ready and worker.process is not None:
            worker.ready = True
            _log.info("worker.started", worker=worker.index, pid=worker.process.pid)

    def _close_channel(self, worker: _Worker) -> None:
        if worker.channel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.channel)
            worker.channel.close()
            worker.channel = None

    def _reap(self) -> None:
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            status = process.poll()
            if status is None:
                continue
            self._close_channel(worker)
            worker.process = None
            worker.statuses.append(status)
            self._mark_dead(process.pid)
            if self._stopping:
                _log.info(
                    "worker.stopped",
                    worker=worker.index,
                    pid=process.pid,
                    status=_describe_status(status),
                )
                continue
            worker.ready = False
            if self._starting:
                continue  # run() reports a failed start
            delay = worker.backoff.next_delay(self.clock())
            worker.restart_at = self.clock() + delay
            _log.warning(
                "worker.exited",
                worker=worker.index,
                pid=process.pid,
                status=_describe_status(status),
                restart_in=round(delay, 3),
            )

    def _restart_due(self) -> None:
        if self._stopping:
            return
        now = self.clock()
        for worker in self._workers:
            if worker.restart_at is not None and worker.restart_at <= now:
                self._spawn(worker)
                assert worker.process is not None
                _log.warning("worker.restarted", worker=worker.index, pid=worker.process.pid)

    def _kill_all(self) -> None:
        """Leave no worker behind (only after a failure: a clean stop has none left)."""
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._close_channel(worker)
            worker.process = None
            self._mark_dead(process.pid)

    # -- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> tuple[dict[signal.Signals, _Handler], int]:
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        handlers = {signum: signal.signal(signum, _note_signal) for signum in _HANDLED}
        wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        return handlers, wakeup

    def _restore_signals(self, handlers: dict[signal.Signals, _Handler], wakeup: int) -> None:
        signal.set_wakeup_fd(wakeup)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    def _read_signals(self) -> None:
        try:
            data = self._wake_r.recv(256)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                continue
            self._on_signal(signal.Signals(signum))

    def _on_signal(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._signals += 1
            if not self._stopping:
                self._stopping = True
                for worker in self._workers:
                    worker.restart_at = None
            _log.info(
                "workers.signal_received",
                signal=signum.name,
                forced=self._signals > 1,
                workers=sum(1 for w in self._workers if w.process),
            )
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    # -- metrics directory ------------------------------------------------------------------

    def _prepare_metrics(self) -> None:
        if self._metrics_dir is None:
            self._metrics_dir = tempfile.mkdtemp(prefix="wsup-metrics-")
            self._own_metrics_dir = True
            return
        directory = Path(self._metrics_dir)
        directory.mkdir(parents=True, exist_ok=True)
        # Values left by an earlier run would be added to this one's.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)

    def _mark_dead(self, pid: int) -> None:
        if self._metrics_dir is None:
            return
        from prometheus_client.multiprocess import mark_process_dead

        with contextlib.suppress(OSError):
            mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _cleanup_metrics(self) -> None:
        if self._own_metrics_dir and self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """Python-level handler: the wakeup fd carries the signal to the select loop."""
