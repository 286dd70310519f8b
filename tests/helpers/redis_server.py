"""A private ``redis-server`` for one test, on a free loopback port.

Theory of operation: :class:`RedisServer` runs ``redis-server`` as a child
process on 127.0.0.1 and a port nobody else uses (never the machine's own Redis
on 6379), without persistence (``--save ""``, ``--appendonly no``) and with
expiry notifications on (``--notify-keyspace-events Ex``) so tests can wait for
a key to expire instead of sleeping. A reader thread follows its log: start-up
waits for "Ready to accept connections" and then for a ``PING`` answer. The
server can be killed with SIGKILL, paused and resumed (SIGSTOP/SIGCONT) and
started again on the same port, which is how tests lose and regain Redis.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import pytest

from actors import Backoff
from supervisor.redis import RedisBackplane
from tests.helpers.processes import StopsOnExit, free_port

__all__ = [
    "REDIS_SERVER",
    "SHARED_REDIS",
    "RedisMonitor",
    "RedisServer",
    "free_port",
    "needs_shared_redis",
    "quick_backplane",
    "running_redis",
    "shared_redis_up",
]

REDIS_SERVER = shutil.which("redis-server")
"""The ``redis-server`` executable, or None when it is not installed."""

_READY = "Ready to accept connections"
_PORT_TAKEN = "Address already in use"

SHARED_REDIS = "redis://127.0.0.1:6379/0"
"""The machine's own Redis, which tests share under key prefixes of their own."""


def shared_redis_up() -> bool:
    """Whether the machine's Redis answers on 127.0.0.1:6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_shared_redis = pytest.mark.skipif(not shared_redis_up(), reason="no Redis on 127.0.0.1:6379")


class RedisServer(StopsOnExit):
    """A ``redis-server`` child process on 127.0.0.1.

    Args:
        port: the port (default: a free one, and another one if something takes it
            before the first start binds it); kept across :meth:`restart`.
        timeout: seconds to wait for it to accept connections.

    Raises:
        RuntimeError: ``redis-server`` is not installed.
    """

    def __init__(self, port: int | None = None, *, timeout: float = 20.0) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        # A port chosen here was free a moment ago only: another process (any outgoing
        # connection's local port) may take it before redis-server binds it.
        self._may_move = port is None
        self.timeout = timeout
        self.lines: list[str] = []
        self._directory = tempfile.mkdtemp(prefix="wsup-redis-")
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()
        self._ready = False
        self._exited = False

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The process id of the running server."""
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``.

        Raises:
            RuntimeError: it exited or did not become ready in time (with its log).
        """
        assert self._process is None or self._process.poll() is not None, "already running"
        for _ in range(5):
            if self._start_once():
                break
            taken = any(_PORT_TAKEN in line for line in self.lines)
            if not (taken and self._may_move):
                raise RuntimeError("redis-server did not start; log:\n" + "\n".join(self.lines))
            self.port = free_port()
        else:
            raise RuntimeError("redis-server found no free port; log:\n" + "\n".join(self.lines))
        self._may_move = False
        self.ping()

    def _start_once(self) -> bool:
        """Start the server on :attr:`port`; whether it became ready (else it is reaped)."""
        assert REDIS_SERVER is not None
        with self._changed:
            self._ready = self._exited = False
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--notify-keyspace-events", "Ex",
            "--dir", self._directory,
            "--daemonize", "no",
            "--loglevel", "notice",
            "--logfile", "",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._follow, args=(self._process,), daemon=True)
        self._reader.start()
        with self._changed:
            self._changed.wait_for(lambda: self._ready or self._exited, self.timeout)
            ready = self._ready
        if not ready:
            self.kill()
        return ready

    def _follow(self, process: subprocess.Popen[str]) -> None:
        stream = process.stdout
        assert stream is not None
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if _READY in line:
                    self._ready = True
                    self._changed.notify_all()
        with self._changed:
            self._exited = True
            self._changed.notify_all()

    def ping(self) -> None:
        """Send ``PING`` and check the answer (raises if the server does not answer)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
        if not answer.startswith(b"+PONG"):
            raise RuntimeError(f"unexpected answer to PING: {answer!r}")

    def kill(self) -> None:
        """Kill the server with SIGKILL (no goodbye to its clients) and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if process.stdout is not None:
            process.stdout.close()

    def restart(self) -> None:
        """Start the server again on the same port (after :meth:`kill`)."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """Stop the server with SIGSTOP: connections stay open, nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Resume a paused server with SIGCONT."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server for good and remove its directory. Idempotent."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot exit
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.kill()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self


@contextlib.contextmanager
def running_redis(port: int | None = None) -> Iterator[RedisServer]:
    """Run a private ``redis-server`` for the duration of the block."""
    server = RedisServer(port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def quick_backplane(url: str, **options: Any) -> RedisBackplane:
    """A Redis backplane that notices a lost Redis and reconnects quickly, for tests
    that lose and regain Redis on purpose; ``options`` override its settings."""
    settings: dict[str, Any] = {
        "node_ttl": 5.0,
        "publish_timeout": 5.0,
        "reconnect": Backoff(minimum=0.01, maximum=0.1, jitter=0.1),
    }
    settings.update(options)
    return RedisBackplane(url, **settings)


_MONITOR_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


class RedisMonitor:
    """The commands a ``redis-server`` runs, in the order it runs them (its ``MONITOR``
    feed), read by a thread of its own from the block's start to its end.

    Each command is a tuple of its words, unescaped only as far as tests need
    (``\\"`` and ``\\\\``): ``("SUBSCRIBE", "wsup:addr:room:x")``.

    Args:
        port: the server's port on 127.0.0.1.
        timeout: seconds to wait for the server to accept ``MONITOR``, and the
            default of :meth:`wait_for`.
    """

    def __init__(self, port: int, *, timeout: float = 20.0) -> None:
        self.port = port
        self.timeout = timeout
        self._commands: list[tuple[str, ...]] = []
        self._changed = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    def commands(self) -> list[tuple[str, ...]]:
        """The commands seen so far, oldest first."""
        with self._changed:
            return list(self._commands)

    def wait_for(
        self, check: Callable[[list[tuple[str, ...]]], bool], what: str
    ) -> list[tuple[str, ...]]:
        """Wait until ``check(commands)`` holds (a bounded wait); return the commands.

        Raises:
            AssertionError: it did not hold within ``timeout`` seconds.
        """
        with self._changed:
            held = self._changed.wait_for(lambda: check(self._commands), self.timeout)
            commands = list(self._commands)
        assert held, f"never: {what}; commands seen: {commands}"
        return commands

    def _follow(self, sock: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            found = []
            for line in lines:
                if not line.startswith(b"+") or b"] " not in line:
                    continue  # +OK, or not a command
                words = _MONITOR_ARG.findall(line.split(b"] ", 1)[1])
                found.append(
                    tuple(
                        w.replace(b'\\"', b'"').replace(b"\\\\", b"\\").decode("latin-1")
                        for w in words
                    )
                )
            with self._changed:
                self._commands.extend(found)
                self._changed.notify_all()

    def __enter__(self) -> RedisMonitor:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        try:
            sock.sendall(b"MONITOR\r\n")
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
            if answer != b"+OK\r\n":
                raise RuntimeError(f"unexpected answer to MONITOR: {answer!r}")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = threading.Thread(target=self._follow, args=(sock,), daemon=True)
        self._reader.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sock, reader = self._sock, self._reader
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if reader is not None:
            reader.join(10)
