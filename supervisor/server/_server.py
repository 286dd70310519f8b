"""The server: listeners, handshakes, operational HTTP, keepalive and graceful drain.

Theory of operation: each listener's accept loop (paced by admission control,
see ``_admission``) hands every socket to its own task, the stream driver of the
handshake (:meth:`Server._handshake`): it reads the HTTP request under the
handshake timeout, asks the decision (``_handshake``: operational endpoints,
HTTP routes, routing, limits, Origin, hooks), and writes the answer or the 101.
An accepted socket becomes a :class:`~supervisor.server._connection.Connection`
whose actor is a dynamic child of the connection supervisor
(:meth:`Server._open_connection`). One keepalive task serves every connection.
On asyncio without TLS the callback driver does the same in transport callbacks
instead of a task per socket (see ``_aio``), and under an ASGI server the
adapter (``supervisor.asgi``) decides each ``websocket`` scope; every driver
reaches the server through :class:`Handshakes` (``Server.handshake_gate``).

Shutdown is phased: ``/readyz`` turns 503 → (optional grace) → listeners close,
handshakes in flight get 503 → the connections drain in shuffled batches
spread over ``drain_window`` (see ``_drain``; each actor finishes its mailbox,
the outbound buffer is flushed, close 1001) → after the drain deadline
whatever is left is aborted and counted → service actors stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import errno
import functools
import logging
import math
import platform
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import structlog
from anyio.streams.tls import TLSStream
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol

from actors import ALL, Backplane, Clock, CriticalFailure, DeadLetter, MonotonicClock
from actors._backend import Waiter, primitives

from .._constants import CloseCode
from .._exceptions import ListenError, StartupError, find_exception
from ..metrics import (
    ACCEPT_ERRORS,
    CONNECTION_STATES,
    HANDSHAKE_RESULTS,
    LIMIT_NAMES,
    AcceptError,
    LimitName,
    Metrics,
)
from ..observe._gc import CollectorTuning, GcPauses
from ..observe._instrumentation import (
    BatchedCounter,
    BatchedGauge,
    BatchedHistogram,
    MetricsInstrumentation,
    hot_gauge,
)
from ..observe._watchdog import LoopWatchdog
from ..tree._system import ActorSystem
from ..tree._tree import ChildSpec, Restart, Supervisor, SupervisorSpec
from . import _api
from ._accept import AcceptFailure, AcceptThrottle, classify_accept_error, descriptor_usage
from ._admission import ADMISSION_LIMITS, Admission, Refusal
from ._aio import HandshakeProtocol, serve_sockets
from ._app import App, Handler, Request, RouteOptions, call_maybe_async
from ._config import ServerConfig
from ._connection import Connection, ConnectionState, Driver
from ._drain import drain_paced
from ._drivers import StreamDriver, TransportDriver
from ._handshake import (
    LINGER_BYTES,
    Answer,
    Handshake,
    HookCall,
    HTTPRequest,
    ProtocolFactory,
    RequestReader,
    Socket,
    Upgrade,
    UpgradeProtocol,
    answer_bytes,
    remote_pair,
)
from ._keepalive import KeepaliveAction, KeepaliveQueue, wake_time
from ._limits import EveryInterval, Rate
from ._relay import Granted, RelayHandler, Relays
from ._resume import RESUME_PARAM, ResumeRefusal, ResumeTable

__all__ = ["Server", "serve"]

_log = structlog.get_logger("wsup.server")
#: The settings of admission control, as ``server.started`` lists them.
_ADMISSION_SETTINGS = (*(n for n in LIMIT_NAMES if n in ADMISSION_LIMITS), "readiness_loop_lag")
#: The standard library logger behind ``_log``, to skip filtered per-connection lines cheaply.
_std_log = logging.getLogger("wsup.server")
_CLOSED_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
# websockets logs every handshake at INFO through this logger; wsup logs its own lines.
_PROTOCOL_LOGGER = logging.getLogger("websockets.server")

try:
    from importlib.metadata import version as _dist_version

    VERSION = _dist_version("wsup")
except Exception:  # pragma: no cover - running from a source tree without metadata
    VERSION = "0+unknown"


def _listen_hint(host: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "another process uses this port: stop it or choose another with --port"
    if error.errno == errno.EADDRNOTAVAIL or (
        ":" in host and error.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
    ):
        if ":" in host:
            return "IPv6 is not available here: listen on 0.0.0.0 instead"
        return "this machine has no such address: use 127.0.0.1 or 0.0.0.0"
    if error.errno == errno.EACCES:
        return "ports below 1024 need privileges: use a port >= 1024"
    if isinstance(error, socket.gaierror):
        return "the host name does not resolve: use an IP address"
    return "check the address and port"


class Server:
    """Serves one :class:`~supervisor.App`.

    Args:
        app: what to serve.
        config: settings (default: ``app.config``).
        metrics: where to count (default: a new registry; the CLI passes the global one).
        clock: the time source for keepalive and close timers.
        backplane: the cross-node transport (default: in-process).

    Attributes:
        ports: the bound ``(host, port)`` pairs, once serving.
    """

    def __init__(
        self,
        app: App,
        config: ServerConfig | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        backplane: Backplane | None = None,
        node_id: str | None = None,
    ) -> None:
        self.app = app
        self.config = config or app.config
        self.metrics = metrics or Metrics()
        self.clock: Clock = clock or MonotonicClock()
        self.system = ActorSystem(
            backplane=backplane,
            clock=self.clock,
            instrumentation=MetricsInstrumentation(self.metrics),
            node_id=node_id,
            on_critical=self._critical_failed,
        )
        self.runtime = self.system.runtime
        #: This node's resumable connections, by token.
        self.resumes = ResumeTable(self.runtime.node_id)
        #: Resumes across nodes (with a backplane to other nodes and a resumable route).
        self.relays: Relays | None = None
        self._relay_spec: ChildSpec | None = None
        for history in app.histories:
            self.runtime.add_history(history)
        for pattern in app.presence_patterns:
            self.runtime.add_presence_events(pattern)
        #: Open connections: wsup's own, and those an ASGI server brought (``supervisor.asgi``).
        self.connections: set[Connection] = set()
        self.ports: list[tuple[str, int]] = []
        #: The bound ``(host, port)`` pairs of ``config.metrics_port``, if set.
        self.metrics_ports: list[tuple[str, int]] = []
        #: The bound ``(host, port)`` pairs of ``config.api_port``, if set.
        self.api_ports: list[tuple[str, int]] = []
        self.draining = False
        self.accepting = False
        #: The failure of a ``critical`` service or subtree, once one gave up.
        self.failure: CriticalFailure | None = None
        #: The event loop's token, for ``App.*_threadsafe`` calls from other threads.
        self.loop_token: anyio.lowlevel.EventLoopToken | None = None
        self.loop_thread: int | None = None
        self._conn_sup: Supervisor | None = None
        self._conn_specs: dict[int, tuple[ChildSpec, bool]] = {}
        # Created in serve(): anyio primitives need a running event loop.
        self._accept_scope: anyio.CancelScope
        self._stop: anyio.Event
        self._listeners: list[anyio.abc.SocketListener] = []
        self._ops_listeners: list[anyio.abc.SocketListener] = []
        self._all_closed: anyio.Event | None = None
        #: When the keepalive task looks at each open connection next.
        self._keepalive: KeepaliveQueue[Connection] = KeepaliveQueue()
        self._keepalive_wake: Waiter | None = None
        self._keepalive_next = math.inf
        self._tg: anyio.abc.TaskGroup | None = None
        self._drain_started = False
        self._watchdog: LoopWatchdog | None = None
        self._gc_pauses = GcPauses(self.metrics)
        self._collector = CollectorTuning()
        #: Accept loops paused at ``max_handshakes``, resumed when a handshake ends.
        self._accept_waiters: list[Callable[[], None]] = []
        # websockets' own server defaults: 4 KiB windows and memLevel 5 keep each
        # compressed connection's zlib state small (the library default is ~10x more).
        self.compression = (
            [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
            if self.config.compression
            else None
        )
        self.counters = counters = _HotCounters(self.metrics)
        self.handshakes = counters.handshakes
        self.states = counters.states
        #: Paces accepting when descriptors run out (shared by every listener).
        self.accept_throttle = AcceptThrottle()
        self._limited = {name: self.metrics.limited.labels(limit=name) for name in LIMIT_NAMES}
        self._limit_lines = EveryInterval(10.0)
        #: Admission control: handshakes in progress, per-address counts, rates.
        self.admission = Admission(self.config, self.clock.now())
        # Built last: it checks the origins and proxies of the configuration.
        self._handshakes = Handshakes(self)
        self._accept_failures = {
            error: self.metrics.accept_failures.labels(error=error) for error in ACCEPT_ERRORS
        }
        # Read at scrape time rather than updated per message.
        self.metrics.mailbox_messages.set_function(
            lambda: float(self.runtime.statistics().mailbox_messages)
        )
        self.metrics.outbound_buffer_bytes.set_function(
            lambda: float(sum(conn.buffered_bytes for conn in self.connections))
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(
        self,
        *,
        listen: bool = True,
        task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start services, listen, and serve until :meth:`shutdown` completes.

        Args:
            listen: bind the configured addresses; False when another server
                brings the connections (:mod:`supervisor.asgi`).
            task_status: set once serving (anyio's ``TaskGroup.start``).

        Raises:
            ListenError: a listen address could not be bound (one clear line).
            StartupError: an ``on_startup`` hook or the ``lifespan`` of the app raised.
        """
        app = self.app
        if app.server is not None:
            raise RuntimeError("this app is already being served")
        app.server = self
        self._accept_scope = anyio.CancelScope()
        self._stop = anyio.Event()
        self.loop_token = anyio.lowlevel.current_token()
        self.loop_thread = threading.get_ident()
        self.metrics.owner_thread = self.loop_thread  # batched metrics are updated here
        self.metrics.set_build_info(VERSION, platform.python_version(), _backend_name())
        self._gc_pauses.install()
        try:
            # Bind first: a bad address fails before anything else has started.
            listeners = await self._listen() if listen else []
            async with self.system:
                sup = await self.system.root.start_child(
                    SupervisorSpec(id="connections", intensity=None)
                )
                assert isinstance(sup, Supervisor)
                self._conn_sup = sup
                if self.runtime.backplane.remote and any(
                    isinstance(route.target, RouteOptions) and route.target.resume is not None
                    for route in app.router
                ):
                    self.relays = Relays(self)
                await self._start_app(app)
                async with self._lifespan(app), anyio.create_task_group() as tg:
                    self._tg = tg
                    # Last before accepting: the app's start-up objects are frozen too.
                    collector = self._collector.apply() if self.config.gc_tuning else None
                    self.accepting = True
                    tg.start_soon(self._accept_all, listeners)
                    tg.start_soon(self._keepalive_loop)
                    tg.start_soon(self._flush_metrics)
                    watchdog = LoopWatchdog(self.metrics, self.config.loop_lag_threshold)
                    self._watchdog = watchdog
                    tg.start_soon(watchdog.run)
                    _log.info(
                        "server.started",
                        listen=[f"{h}:{p}" for h, p in self.ports],
                        metrics=[f"{h}:{p}" for h, p in self.metrics_ports],
                        api=(
                            [f"{h}:{p}" for h, p in (self.api_ports or self.ports)]
                            if self.config.api_key is not None
                            else []
                        ),
                        routes=[r.pattern for r in app.router],
                        http_routes=list(app.http_routes),
                        backend=_backend_name(),
                        version=VERSION,
                        admission=self._admission_settings(),
                        gc=collector,
                    )
                    task_status.started(self)
                    try:
                        await self._stop.wait()
                    finally:
                        # Callback-mode connections have no task a cancellation reaches.
                        for conn in list(self.connections):
                            if conn.uses_callbacks:
                                conn.abort()
                        # Nor do sockets still handshaking (a browser's idle
                        # preconnect, say) or lingering after an HTTP answer.
                        for unowned in list(self._handshakes.unowned):
                            unowned.abort()
                    tg.cancel_scope.cancel()
                for hook in app.on_shutdown:
                    with anyio.CancelScope(shield=True):
                        await call_maybe_async(hook, app)
        finally:
            self._gc_pauses.remove()
            self._collector.restore()
            app.server = None
            self._tg = None
            if self.relays is not None:
                self.relays.close()
                self.relays = None
            await self._close_listeners(ops=True)
        _log.info("server.stopped")
        if self.failure is not None:
            raise self.failure

    def _admission_settings(self) -> dict[str, Any]:
        """The admission limits in force, for ``server.started`` (rates as ``R/B``)."""
        config = self.config
        settings: dict[str, Any] = {}
        for name in _ADMISSION_SETTINGS:
            value = getattr(config, name)
            if isinstance(value, Rate):
                value = f"{value.per_second:g}/{value.capacity:g}"
            if value is not None:
                settings[name] = value
        return settings

    def _critical_failed(self, failure: CriticalFailure) -> None:
        """A critical child gave up: turn unready, drain, then make serve() raise it."""
        if self.failure is not None:
            return
        self.failure = failure
        _log.critical("server.critical_failure", error=str(failure), child=failure.child)
        if self._tg is not None:
            self._tg.start_soon(self.shutdown)
        else:
            # Still starting (services start before the listeners): stop at once.
            self._stop.set()

    async def _start_app(self, app: App) -> None:
        """Start the app's services, then run its ``on_startup`` hooks, in order.

        A service that fails is restarted by its supervisor like any actor.

        Raises:
            StartupError: an ``on_startup`` hook raised (its exception is the cause).
        """
        for spec in app.services:
            await self.system.root.start_child(spec)
        for hook in app.on_startup:
            try:
                await call_maybe_async(hook, app)
            except Exception as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                raise StartupError(f"on_startup hook {name}", exc) from exc

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: App) -> AsyncIterator[None]:
        """Run the app's ``lifespan`` context around serving; its exit is never cancelled.

        Raises:
            StartupError: entering it raised (its exception is the cause).
        """
        if app.lifespan is None:
            yield
            return
        manager = app.lifespan(app)
        try:
            await manager.__aenter__()
        except Exception as exc:
            raise StartupError("lifespan", exc) from exc
        try:
            yield
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if not await manager.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
        else:
            with anyio.CancelScope(shield=True):
                await manager.__aexit__(None, None, None)

    async def _listen(self) -> list[tuple[anyio.abc.SocketListener, bool]]:
        """Bind every host on the main port (and the metrics port); ``(listener, ops_only)``."""
        config = self.config
        ports: list[tuple[int, list[tuple[str, int]]]] = [(config.port, self.ports)]
        if config.metrics_port is not None:
            ports.append((config.metrics_port, self.metrics_ports))
        if config.api_port is not None:
            # Served like the metrics port (it stays open while draining); which
            # of the two a request came to is told by its local port.
            ports.append((config.api_port, self.api_ports))
        listeners: list[tuple[anyio.abc.SocketListener, bool]] = []
        try:
            for port, bound_ports in ports:
                ops_only = bound_ports is not self.ports
                for host in config.hosts:
                    try:
                        multi = await anyio.create_tcp_listener(
                            local_host=host or None,
                            local_port=port,
                            backlog=config.backlog,
                            reuse_port=config.reuse_port,
                        )
                    except OSError as exc:
                        raise ListenError(host, port, exc, _listen_hint(host, exc)) from None
                    for listener in multi.listeners:
                        assert isinstance(listener, anyio.abc.SocketListener)
                        listeners.append((listener, ops_only))
                        sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
                        bound = (str(sockname[0]), int(sockname[1]))
                        bound_ports.append(bound)
        except BaseException:
            for listener, _ in listeners:
                await listener.aclose()
            raise
        self._listeners = [listener for listener, ops_only in listeners if not ops_only]
        self._ops_listeners = [listener for listener, ops_only in listeners if ops_only]
        return listeners

    async def _accept_all(self, listeners: list[tuple[anyio.abc.SocketListener, bool]]) -> None:
        callbacks = _backend_name().startswith("asyncio") and self.config.ssl is None
        async with anyio.create_task_group() as ops:
            # The metrics port keeps answering after "stop accepting": probes and
            # scrapes must reach a node that still serves its connections.
            self._serve(ops, [(lst, o) for lst, o in listeners if o], callbacks)
            with self._accept_scope:
                async with anyio.create_task_group() as main:
                    self._serve(main, [(lst, o) for lst, o in listeners if not o], callbacks)

    def _serve(
        self,
        tg: anyio.abc.TaskGroup,
        listeners: list[tuple[anyio.abc.SocketListener, bool]],
        callbacks: bool,
    ) -> None:
        if not listeners:
            return
        if callbacks:
            # asyncio, plain TCP: accept and handshake in transport callbacks (see _aio).
            raw = anyio.abc.SocketAttribute.raw_socket
            sockets = [(lst.extra(raw), o) for lst, o in listeners]
            tg.start_soon(serve_sockets, self, self._handshakes, sockets)
        else:
            for listener, ops_only in listeners:
                tg.start_soon(self._accept_loop, listener, ops_only)

    async def _accept_loop(self, listener: anyio.abc.SocketListener, ops_only: bool) -> None:
        assert self._tg is not None
        throttle = self.accept_throttle
        while True:
            wait = None if ops_only else self.may_accept()
            if wait is not None:
                # Admission control: the next connections wait in the listen backlog.
                if math.isinf(wait):
                    freed = anyio.Event()
                    self.when_handshake_ends(freed.set)
                    await freed.wait()
                else:
                    await self.clock.sleep(wait)
                continue
            try:
                stream = await listener.accept()
            except anyio.ClosedResourceError:
                return
            except (OSError, anyio.BrokenResourceError) as exc:
                failure, lacked = classify_accept_error(exc)
                if failure is AcceptFailure.LISTENER:
                    raise
                if lacked is not None:
                    # Out of descriptors: pause, then accept again; open connections go on.
                    await self.clock.sleep(self.accept_failed(lacked, exc))
                continue
            throttle.accepted()
            if not ops_only:
                self.socket_accepted()
            self._tg.start_soon(self._handle_safely, stream, ops_only)

    def accept_failed(self, lacked: AcceptError, exc: BaseException) -> float:
        """Count (and now and then log) an ``accept()`` that failed for lack of ``lacked``.

        Returns:
            How many seconds to pause accepting (see :class:`AcceptThrottle`).
        """
        self._accept_failures[lacked].inc()
        verdict = self.accept_throttle.failed(self.clock.now())
        if verdict.log:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            _log.error(
                "server.accept_failed",
                error=str(cause),
                errno=lacked.upper(),
                connections=len(self.connections),
                retry_in=verdict.delay,
                suppressed=verdict.suppressed,
            )
        return verdict.delay

    # -- admission control at accept time (see _admission) -----------------------------------

    def may_accept(self) -> float | None:
        """Whether the server port may accept a socket now: None, or the seconds to pause
        accepting (``math.inf``: until a handshake ends, see :meth:`when_handshake_ends`).

        A pause is counted in ``wsup_limited_total`` and logged at a bounded rate.
        """
        verdict = self.admission.accept_wait(self.clock.now())
        if verdict is None:
            return None
        limit, wait = verdict
        self.note_limit(
            limit,
            None,
            None,
            handshaking=self.admission.handshaking,
            retry_in=None if math.isinf(wait) else round(wait, 3),
        )
        return wait

    def socket_accepted(self) -> None:
        """Count a server-port socket just accepted (its handshake is in progress)."""
        self.admission.socket_accepted(self.clock.now())

    def socket_settled(self) -> None:
        """A server-port socket's handshake is over: accepting may resume."""
        self.admission.socket_settled()
        waiting = self._accept_waiters
        if waiting:
            self._accept_waiters = []
            for resume in waiting:
                resume()

    @property
    def handshake_gate(self) -> Handshakes:
        """The server as a handshake driver sees it: the decision, counting and
        logging, and the hand-off to a connection. The callback driver and the
        ASGI adapter (``supervisor.asgi``) reach the server through it alone."""
        return self._handshakes

    def when_handshake_ends(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` once, when the next server-port handshake is over."""
        self._accept_waiters.append(resume)

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``fn`` in the server's task group; False once the server is stopping."""
        if self._tg is None:
            return False
        self._tg.start_soon(fn)
        return True

    def stop_accepting(self) -> None:
        """Close the listeners but keep serving open connections; ``/readyz`` turns 503."""
        if self.accepting:
            self.accepting = False
            self._accept_scope.cancel()
            if self._tg is not None:
                self._tg.start_soon(self._close_listeners)
            _log.info("server.stopped_accepting", connections=len(self.connections))

    async def _close_listeners(self, *, ops: bool = False) -> None:
        with anyio.CancelScope(shield=True):
            for listener in [*self._listeners, *(self._ops_listeners if ops else ())]:
                with contextlib.suppress(Exception):
                    await listener.aclose()

    async def shutdown(self, *, drain_timeout: float | None = None) -> None:
        """Drain gracefully, then stop. Returns once every connection is closed or cancelled.

        Idempotent: a second call while draining waits for the same drain.
        """
        if self._drain_started:
            await self._stop.wait()
            return
        self._drain_started = True
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        started = self.clock.now()
        self.draining = True
        self.metrics.draining.set(1)
        _log.info(
            "server.drain_started",
            connections=len(self.connections),
            timeout=timeout,
            window=min(self.config.drain_window, timeout),
        )
        if self.config.readiness_grace > 0 and self.accepting:
            await self.clock.sleep(self.config.readiness_grace)
            if self._stop.is_set():
                return  # forced (second signal) during the grace: nothing left to drain
        self.stop_accepting()
        await self._close_listeners()
        connections = len(self.connections)
        batches = cancelled = 0
        if self.connections:
            self._all_closed = all_closed = anyio.Event()
            with self.clock.move_on_after(timeout):
                batches, _ = await drain_paced(
                    self.connections,
                    clock=self.clock,
                    window=self.config.drain_window,
                    batch_size=self.config.drain_batch_size,
                    timeout=timeout,
                    all_closed=all_closed,
                )
                await all_closed.wait()
            cancelled = len(self.connections)
            for conn in list(self.connections):
                conn.abort()
        self.metrics.draining.set(0)
        _log.info(
            "server.drain_completed",
            duration=round(self.clock.now() - started, 3),
            connections=connections,
            batches=batches,
            cancelled=cancelled,
        )
        self._stop.set()

    def force_stop(self) -> None:
        """Stop now: abort every connection without draining."""
        _log.warning("server.forced_stop", connections=len(self.connections))
        self._drain_started = True
        for conn in list(self.connections):
            conn.abort()
        self._stop.set()

    # -- per socket: the stream driver of the handshake -------------------------------------

    async def _handle(self, stream: anyio.abc.ByteStream, ops_only: bool = False) -> None:
        started = self._handshakes.opened(ops_only)
        driver: Driver | None = None
        settled = False

        def settle() -> None:
            # Once: at the first answer that keeps the socket alive, or at the end.
            nonlocal settled
            if not settled:
                settled = True
                self._handshakes.settled(ops_only)

        try:
            driver = await self._handshake(stream, started, ops_only, settle)
        except BaseException:
            await _close_quietly(stream)
            raise
        finally:
            settle()
        if driver is not None:
            await driver.run()

    async def _handle_safely(self, stream: anyio.abc.ByteStream, ops_only: bool) -> None:
        # One socket's unexpected error must never take the server down.
        try:
            await self._handle(stream, ops_only)
        except Exception:
            _log.exception("connection.failed")
            await _close_quietly(stream)

    async def _handshake(
        self,
        stream: anyio.abc.ByteStream,
        started: float,
        ops_only: bool,
        settle: Callable[[], None],
    ) -> Driver | None:
        """Read the request under the handshake timeout, decide (see ``_handshake``),
        then write the answer or the 101; the accepted connection's driver, if any.

        After an answer that keeps the connection alive (HTTP/1.1 keep-alive), the
        next request is read under the same timeout, and so on; ``settle`` is called
        at the first of them (a kept-alive socket is no handshake in progress).
        """
        handshakes = self._handshakes
        config = self.config
        protocol = handshakes.new_protocol()
        raw = anyio.abc.SocketAttribute
        socket = handshakes.socket(
            stream.extra(raw.remote_address, None), stream.extra(raw.local_port, None), ops_only
        )
        reader = handshakes.reader(protocol, socket)
        parsed: HTTPRequest | Answer | None = None
        with anyio.move_on_after(config.handshake_timeout):
            if config.ssl is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=config.ssl, standard_compatible=False
                    )
                except Exception as exc:
                    _log.debug("handshake.tls_failed", error=str(exc))
                    handshakes.failed("failed", f"TLS: {exc}", peer_host(stream))
                    await _close_quietly(stream)
                    return None
            try:
                parsed = await self._read_request(stream, reader, kept=False)
            except _ClientClosed:
                await _close_quietly(stream)
                return None
        served = 0
        while True:
            # Decided and answered outside the read deadline: a lingering close has its own.
            remote = socket.remote
            decision: Answer | Upgrade
            if parsed is None:
                if served and reader.idle:
                    await _close_quietly(stream)  # kept alive, and nothing came: close
                    return None
                decision = handshakes.decider.timed_out(reading_body=reader.reading_body)
            elif isinstance(parsed, Answer):
                decision = parsed
            else:
                step = handshakes.decider.decide(parsed, protocol, socket)
                if isinstance(step, HookCall):
                    ran = step.run()
                    decision = ran if isinstance(ran, Answer | Upgrade) else await ran
                else:
                    decision = step
            if isinstance(decision, Upgrade):
                break
            handshakes.answered(decision, remote[0])
            keep = (
                isinstance(parsed, HTTPRequest)
                and reader.more
                and handshakes.decider.keeps_alive(parsed, decision, served + 1)
            )
            await _send_all(stream, [handshakes.answer_bytes(decision, keep)])
            if not keep:
                await self._linger(stream)
                return None
            served += 1
            settle()
            started = self.clock.now()
            parsed = reader.next()
            if parsed is None:
                with anyio.move_on_after(config.handshake_timeout):
                    try:
                        parsed = await self._read_request(stream, reader, kept=True)
                    except _ClientClosed:
                        await _close_quietly(stream)
                        return None
        protocol.send_response(decision.response)
        try:
            await stream.send(b"".join(protocol.data_to_send()))
        except BaseException as exc:
            handshakes.release(decision.request.client_address)  # no connection after all
            if not isinstance(exc, _CLOSED_STREAM_ERRORS):
                raise
            handshakes.failed(
                "failed",
                "connection closed before the 101 was sent",
                remote[0],
                decision.request.path,
            )
            await _close_quietly(stream)
            return None
        return self._open_connection(decision, protocol, started, StreamDriver(stream))

    async def _read_request(
        self, stream: anyio.abc.ByteStream, reader: RequestReader, *, kept: bool
    ) -> HTTPRequest | Answer:
        """Read until ``reader`` has a request (or an answer).

        Raises:
            _ClientClosed: the client closed first (counted as a failed handshake,
                unless it closed a ``kept`` alive connection between requests).
        """
        parsed = None
        while parsed is None:
            try:
                data = await stream.receive()
            except _CLOSED_STREAM_ERRORS:
                if not (kept and reader.idle):
                    what = "request body" if reader.reading_body else "request"
                    self._handshakes.failed(
                        "failed", f"connection closed before the {what}", peer_host(stream)
                    )
                raise _ClientClosed from None
            parsed = reader.feed(data)
        return parsed

    async def _linger(self, stream: anyio.abc.ByteStream) -> None:
        """Close after an HTTP answer: half-close, discard what still comes, then close.

        Closing with unread input would send a reset that can destroy the
        answer on its way (a client still sending an oversized request). Bounded
        by ``close_timeout`` and 1 MiB, like nginx's lingering close.
        """
        if self._tg is not None:
            # In a task of its own: the handshake is over, the socket only waits to close.
            self._tg.start_soon(_linger_stream, stream, self.config.close_timeout)
        else:
            await _close_quietly(stream)

    # -- the hand-off from a handshake to its connection ------------------------------------

    def _open_connection(
        self,
        upgrade: Upgrade,
        protocol: ServerProtocol,
        started: float,
        driver: Driver,
        *,
        resumable: bool = True,
    ) -> Driver:
        """Make the connection of an accepted handshake whose 101 is written, and count it.

        ``driver`` moves its bytes (or messages): the caller awaits its ``run()``
        (stream and ASGI) or calls its ``start()`` (callback mode). ``resumable``:
        a route's ``resume`` applies (not under ASGI). Returns ``driver``.
        """
        request = upgrade.request
        route = upgrade.route
        refused: ResumeRefusal | None = None
        token = None if route.resume is None or not resumable else request.query_param(RESUME_PARAM)
        if token:
            claimed = self.resumes.claim(token, route, request.path, upgrade.values)
            if not isinstance(claimed, str):
                # Admission counts it under the address it comes back from (its
                # request holds that slot already).
                self.admission.connection_closed(claimed.request.client_address)
                claimed._reattach(protocol, request, upgrade.subprotocol, driver)
                self._opened(claimed, started)
                self.metrics.resumes.labels(result="resumed").inc()
                _log.info(
                    "connection.resumed",
                    conn=claimed.address,
                    path=request.path,
                    client=request.client_address,
                    buffered_bytes=claimed.buffered_bytes,
                )
                return driver
            if claimed == "other_node" and self.relays is not None:
                return self._open_claiming(upgrade, protocol, started, driver, token)
            refused = claimed
            self._refused(request, refused)
        conn = Connection(self, protocol, request, route, upgrade.subprotocol, driver)
        if route.resume is not None and resumable:
            # Before the actor starts: the token is the first message the client gets.
            conn._announce(
                self.resumes.issue(conn, route, upgrade.values), resumed=False, refused=refused
            )
        self._spawn(conn, route, upgrade.values, upgrade.pattern)
        self.connections.add(conn)  # its per-address slot was taken by its request
        self.states[ConnectionState.OPEN].inc()
        self._opened(conn, started)
        if _std_log.isEnabledFor(logging.DEBUG):  # filtered structlog calls still cost
            _log.debug(
                "connection.opened",
                conn=conn.address,
                path=request.path,
                client=request.client_address,
            )
        return driver

    def _refused(self, request: Request, refused: ResumeRefusal) -> None:
        self.metrics.resumes.labels(result=refused).inc()
        _log.info(
            "connection.resume_refused",
            path=request.path,
            client=request.client_address,
            refused=refused,
        )

    def _open_claiming(
        self, upgrade: Upgrade, protocol: ServerProtocol, started: float, driver: Driver, token: str
    ) -> Driver:
        """A token of another node: claim its connection there (see ``_relay``); the
        socket's connection waits without an actor, reading paused, until then."""
        request = upgrade.request
        conn = Connection(self, protocol, request, upgrade.route, upgrade.subprotocol, driver)
        conn._claiming = anyio.Event()
        self.connections.add(conn)  # its per-address slot was taken by its request
        self.states[ConnectionState.OPEN].inc()
        self._opened(conn, started)
        if not self.start_soon(functools.partial(self._claim, conn, upgrade, token)):
            conn.abort()
        return driver

    async def _claim(self, conn: Connection, upgrade: Upgrade, token: str) -> None:
        """Relay ``conn`` to the connection its token names on another node, or, if
        that node refuses or cannot be reached, make it a new connection, told why."""
        relays = self.relays
        request = upgrade.request
        answer: Granted | ResumeRefusal = "other_node"
        if relays is not None:
            answer = await relays.claim(token, request.path, upgrade.values)
        if isinstance(answer, Granted):
            assert relays is not None
            if conn.state is not ConnectionState.OPEN:
                relays.release(answer)  # the client left (or this node drains) meanwhile
                return
            self._spawn_relay(conn, relays, answer)
            self.metrics.resumes.labels(result="relayed").inc()
            _log.info(
                "connection.relayed",
                conn=conn.address,
                home=answer.home,
                path=request.path,
                client=request.client_address,
            )
            return
        self._refused(request, answer)
        if conn.state is not ConnectionState.OPEN:
            return
        route = upgrade.route
        conn._announce(
            self.resumes.issue(conn, route, upgrade.values), resumed=False, refused=answer
        )
        self._spawn(conn, route, upgrade.values, upgrade.pattern)

    def _spawn_relay(self, conn: Connection, relays: Relays, granted: Granted) -> None:
        """Give ``conn`` a :class:`RelayHandler`: it answers to no name (the home
        actor does), so nothing but the home node's relay reaches it."""
        spec = self._relay_spec
        if spec is None:
            spec = self._relay_spec = ChildSpec(
                RelayHandler,
                id="relay",
                restart=Restart.TEMPORARY,
                kind="connection",
                prefix="conn",
                shutdown_timeout=self.config.close_timeout,
            )
        app = self.app
        route = conn.route

        def factory() -> Any:
            handler = RelayHandler()
            handler.conn = conn
            handler.app = app
            handler.params = conn.request.params
            handler.values = {}
            handler.relays = relays
            handler.granted = granted
            return handler

        assert self._conn_sup is not None
        ref = self._conn_sup.start_child_nowait(
            dataclasses.replace(spec, mailbox=route.mailbox),
            factory,
            log_context={"route": "relay", "path": conn.request.path},
        )
        cell = self.runtime.cell(ref.address)
        assert cell is not None
        conn._attach(ref, cell, relay=True)

    def _opened(self, conn: Connection, started: float) -> None:
        self.handshakes["accepted"].inc()
        self.counters.handshake_duration.observe(self.clock.now() - started)
        deadline = conn.keepalive.next_deadline()
        if deadline is not None:
            self._keepalive.opened(conn, deadline)
            if deadline < self._keepalive_next and self._keepalive_wake is not None:
                self._keepalive_wake.set()

    def connection_detached(self, conn: Connection) -> None:
        """``conn``'s socket broke; its actor waits for a resume (see ``ConnectionHost``)."""
        self._forget_keepalive(conn)
        resume = conn.route.resume
        _log.info(
            "connection.detached",
            conn=conn.address,
            path=conn.request.path,
            client=conn.request.client_address,
            grace=None if resume is None else resume.grace,
            buffered_bytes=conn.buffered_bytes,
        )

    def _spawn(
        self,
        conn: Connection,
        route: RouteOptions,
        values: Mapping[str, Any],
        pattern: str,
    ) -> None:
        # A partial, not a closure: two objects for the collector to track, not seven.
        factory = functools.partial(_new_handler, route, conn, self.app, values)
        known = self._conn_specs.get(id(route))
        if known is None:
            # One spec per route (routes live as long as the app); each connection
            # brings its own factory.
            spec = ChildSpec(
                route.handler,
                id="connection",
                restart=Restart.TRANSIENT,
                mailbox=route.mailbox,
                intensity=route.intensity,
                backoff=route.backoff,
                kind="connection",
                names=(ALL,),
                prefix="conn",
                shutdown_timeout=self.config.close_timeout,
            )
            known = self._conn_specs[id(route)] = (spec, _needs_no_start(route.handler))
        spec, parked = known
        assert self._conn_sup is not None
        ref = self._conn_sup.start_child_nowait(
            spec, factory, parked=parked, log_context={"route": pattern, "path": conn.request.path}
        )
        cell = self.runtime.cell(ref.address)
        assert cell is not None
        conn._attach(ref, cell)

    def outbound_dropped(self, address: str, policy: str, count: int) -> None:
        """Count ``count`` messages to ``address`` that will never be written, and
        post them as dead letters (for connections: see ``ConnectionHost``)."""
        self.metrics.messages_dropped.labels(policy=policy).inc(count)
        post = self.runtime.dead_letters.post
        for _ in range(count):
            post(DeadLetter(address, None, "dropped", f"outbound {policy}"))

    def dead_letter(self, letter: DeadLetter) -> None:
        """Post a message nobody will handle (for connections: see ``ConnectionHost``)."""
        self.runtime.dead_letters.post(letter)

    def limited(self, limit: LimitName, conn: Connection) -> None:
        """Count a limit that acted on ``conn``; log it at most once every 10 s per limit."""
        self.note_limit(limit, conn.client_address, conn.request.path, conn=conn.address)

    def note_limit(
        self, limit: LimitName, client: str | None, path: str | None, **fields: Any
    ) -> None:
        """Count a limit that acted (on ``client``, when it is known); log
        ``server.limited`` at most once every 10 s per limit, with how many times it
        acted in between."""
        self._limited[limit].inc()
        suppressed = self._limit_lines.allow(limit, self.clock.now())
        if suppressed is not None:
            _log.warning(
                "server.limited",
                limit=limit,
                client=client,
                path=path,
                suppressed=suppressed,
                **fields,
            )

    def connection_closed(
        self,
        conn: Connection,
        code: int,
        reason: str,
        initiator: str,
        label: str,
    ) -> None:
        """Account for a finished connection (called once by the connection)."""
        self.connections.discard(conn)
        self.admission.connection_closed(conn.request.client_address)
        self._forget_keepalive(conn)
        if conn.resume_token is not None:
            self.resumes.forget(conn.resume_token)
        if label == "resume_expired":
            self.metrics.resumes.labels(result="expired").inc()
        duration = self.clock.now() - conn.opened_at
        counters = self.counters
        counters.closed(label, initiator).inc()
        counters.connection_duration.observe(duration)
        if _std_log.isEnabledFor(logging.INFO):  # filtered structlog calls still cost
            _log.info(
                "connection.closed",
                conn=conn.address,
                path=conn.request.path,
                client=conn.request.client_address,
                duration=round(duration, 3),
                code=code,
                reason=reason,
                initiator=initiator,
                messages_in=conn.messages_in,
                messages_out=conn.messages_out,
                bytes_in=conn.bytes_in,
                bytes_out=conn.bytes_out,
            )
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def readiness(self) -> tuple[bool, str]:
        """Return whether this node should get new connections, and why not."""
        if self.failure is not None:
            return False, f"critical {self.failure.child!r} failed"
        if self.draining:
            return False, "draining"
        if not self.accepting:
            return False, "not accepting connections"
        if not self.runtime.backplane.up:
            return False, "backplane down"
        if len(self.connections) >= self.config.max_connections:
            # Every further handshake would get a 503: send new clients elsewhere.
            return False, f"at capacity: {len(self.connections)} of max_connections open"
        max_lag = self.config.readiness_loop_lag
        if max_lag is not None and self._watchdog is not None:
            lag = self._watchdog.recent_lag()
            if lag > max_lag:
                # Every client already waits this long for each answer: add no more.
                return False, f"event loop lagging: {lag:.3f} s, over {max_lag} s"
        fraction = self.config.readiness_fd_fraction
        usage = descriptor_usage() if fraction is not None else None
        if fraction is not None and usage is not None and usage[0] >= fraction * usage[1]:
            # Still serving, but close to where accept() fails: send new clients elsewhere.
            return False, f"file descriptors nearly exhausted: {usage[0]} of {usage[1]} open"
        return True, "ready"

    async def _flush_metrics(self) -> None:
        # Batched observations reach the registry at least once a second (and before
        # every scrape), so workers in multiprocess mode publish them too.
        try:
            while True:
                await anyio.sleep(1.0)
                self.metrics.flush()
        finally:
            self.metrics.flush()

    # -- keepalive ------------------------------------------------------------------------------

    def schedule_keepalive(self, conn: Connection) -> None:
        """Make the keepalive task look at ``conn`` by its next keepalive deadline.

        Called when a connection's deadlines move earlier (a pong re-arms the
        next ping before the pong deadline). Cost: O(log n).
        """
        deadline = conn.keepalive.next_deadline()
        if deadline is None:
            return
        if (
            self._keepalive.schedule(conn, deadline)
            and deadline < self._keepalive_next
            and self._keepalive_wake is not None
        ):
            self._keepalive_wake.set()

    def _forget_keepalive(self, conn: Connection) -> None:
        self._keepalive.forget(conn)

    async def _keepalive_loop(self) -> None:
        queue = self._keepalive
        clock = self.clock
        new_event = primitives().event
        # asyncio with the real clock: sleep on a loop timer. A cancel scope's
        # deadline wakes the task by cancelling it, which cost a fifth of the CPU
        # of 8,000 idle connections (py-spy; the loop wakes once per deadline).
        real_clock = isinstance(clock, MonotonicClock)
        loop = (
            asyncio.get_running_loop()
            if real_clock and _backend_name().startswith("asyncio")
            else None
        )
        while True:
            now = clock.now()
            due = queue.pop_due(now)
            while due:
                for conn in due:
                    self._keepalive_due(conn, now)
                due = queue.pop_due(now)
            earliest = queue.earliest()
            self._keepalive_next = math.inf if earliest is None else earliest[0]
            wake = self._keepalive_wake = new_event()
            delay = None if earliest is None else self._keepalive_next - now
            if real_clock and earliest is not None:
                # Wake on a grid of the slack: deadlines close together share one
                # wake-up instead of waking the loop once each (20,000 connections
                # with a 20 s ping interval: 4 wake-ups a second instead of 1,000).
                # A test's manual clock keeps exact deadlines.
                slack = earliest[1].keepalive.config.slack
                self._keepalive_next = wake_time(self._keepalive_next, slack)
                delay = self._keepalive_next - now
            if loop is not None and delay is not None:
                timer = loop.call_later(delay, wake.set)
                try:
                    await wake.wait()
                finally:
                    timer.cancel()
            else:
                with clock.move_on_after(delay):
                    await wake.wait()
            self._keepalive_wake = None

    def _keepalive_due(self, conn: Connection, now: float) -> None:
        """Act on what is due for ``conn`` at ``now``, and queue its next deadline."""
        if conn.state is ConnectionState.CLOSED or conn not in self.connections:
            return
        action = conn.keepalive.due(now)
        if action is KeepaliveAction.PING:
            conn.send_ping()
        elif action is KeepaliveAction.PONG_TIMEOUT:
            conn.keepalive_timed_out()  # fails with 1011, or detaches (resume)
            return
        elif action is KeepaliveAction.IDLE_TIMEOUT:
            conn.fail(CloseCode.GOING_AWAY, "idle timeout", label="timeout")
            return
        elif action is KeepaliveAction.MESSAGE_TIMEOUT:
            if conn.state is not ConnectionState.CLOSING:  # else closing already
                # 1008, not 1009: the message is late, not too big (RFC 6455 7.4.1).
                timeout = conn.keepalive.config.message_timeout
                why = f"message not finished within {timeout:g} s"
                conn.fail(CloseCode.POLICY_VIOLATION, why)
                self.limited("message_timeout", conn)
            return
        self.schedule_keepalive(conn)


class Handshakes:
    """The server as the handshake sees it: the decision's :class:`HandshakeHost`, and
    what both drivers (``Server._handshake`` for streams, ``_aio.HandshakeProtocol``
    for asyncio transports) do around a decision: count, log, write, hand over.

    The drivers reach the server only through this object.
    """

    __slots__ = ("_new_protocol", "_server", "config", "decider", "unowned")

    def __init__(self, server: Server) -> None:
        self._server = server
        self.config = server.config
        self._new_protocol = ProtocolFactory(
            max_size=server.config.max_size, extensions=server.compression, logger=_PROTOCOL_LOGGER
        )
        #: The decision (see ``_handshake``).
        self.decider = Handshake(server.app, server.config, self, VERSION)
        #: Callback-mode sockets no connection owns yet: handshaking, or closing after
        #: an HTTP answer (see ``HandshakeProtocol.linger``). Aborted when the server stops.
        self.unowned: set[HandshakeProtocol] = set()

    # -- HandshakeHost ---------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._server.accepting

    @property
    def draining(self) -> bool:
        return self._server.draining

    def readiness(self) -> tuple[bool, str]:
        return self._server.readiness()

    @property
    def per_address(self) -> bool:
        return self._server.admission.per_address

    def admit(self, client: str) -> Refusal | None:
        server = self._server
        return server.admission.request(client, len(server.connections), server.clock.now())

    def release(self, client: str) -> None:
        self._server.admission.release(client)

    def render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        return self._server.metrics.render_for(accept)

    async def call_api(self, call: _api.Call | _api.Answer, client: str) -> Answer:
        server = self._server
        clock = server.clock
        started = clock.now()
        answer = call if isinstance(call, _api.Answer) else await _api.perform(call, server.runtime)
        server.metrics.api_request_duration.observe(clock.now() - started)
        return self.api_answer(answer, client)

    def api_answer(self, answer: _api.Answer, client: str) -> Answer:
        self._server.metrics.api_requests.labels(
            endpoint=answer.endpoint, result=answer.result
        ).inc()
        if answer.status == 200:
            if _std_log.isEnabledFor(logging.DEBUG):
                _log.debug("api.called", endpoint=answer.endpoint, client=client)
        else:
            _log.log(
                logging.WARNING if answer.status == 503 else logging.INFO,
                "api.refused",
                endpoint=answer.endpoint,
                status=answer.status,
                error=answer.body.get("error"),
                client=client,
            )
        return Answer(
            self.decider.plain(answer.status, answer.json(), "application/json", answer.headers)
        )

    # -- for the drivers -------------------------------------------------------------------

    def opened(self, ops_only: bool) -> float:
        """Count a socket that starts its handshake; the clock reading it started at."""
        server = self._server
        if not ops_only:
            server.counters.accepted.inc()
        server.states["handshaking"].inc()
        return server.clock.now()

    def settled(self, ops_only: bool) -> None:
        """A socket's handshake is over (answered, upgraded or failed)."""
        server = self._server
        server.states["handshaking"].dec()
        if not ops_only:
            server.socket_settled()

    def now(self) -> float:
        """The clock's reading (when a kept-alive socket starts waiting for a request:
        it no longer counts as handshaking, nor against ``max_handshakes``)."""
        return self._server.clock.now()

    def new_protocol(self) -> UpgradeProtocol:
        """The WebSocket protocol for one socket (the request is read by httptools)."""
        return self._new_protocol()

    def socket(self, peer: Any, local_port: Any, ops_only: bool) -> Socket:
        """Where a request comes from: the peer's address as the socket reports it, the
        local port (to tell the API port from the metrics port)."""
        api_ports = self._server.api_ports
        api_port = ops_only and bool(api_ports) and any(local_port == p for _, p in api_ports)
        return Socket(remote_pair(peer), ops_only, api_port)

    def reader(self, protocol: UpgradeProtocol, socket: Socket) -> RequestReader:
        """The request reader over ``protocol``."""
        return RequestReader(protocol, self.decider, socket)

    def answer_bytes(self, answer: Answer, keep_alive: bool = False) -> bytes:
        """What to write for ``answer`` (its ``Date`` is now); ``keep_alive``: the
        connection stays open for another request."""
        return answer_bytes(answer.response, email.utils.formatdate(usegmt=True), keep_alive)

    def answered(self, answer: Answer, peer: str) -> None:
        """Count and log what ``answer`` says about the handshake (``peer``: its host)."""
        outcome = answer.outcome
        if outcome is None:
            return
        if outcome.limit is not None:
            self._server.note_limit(outcome.limit, peer, outcome.path)
        if outcome.result == "rejected":
            self._refused(answer.status, outcome.reason, outcome.path, outcome.client or peer)
        else:
            self.failed(outcome.result, outcome.reason, peer, outcome.path)

    def _refused(self, status: int, reason: str, path: str | None, client: str) -> None:
        """Count a handshake the server or the app turned away, and log it: at INFO,
        or, refused by admission control, as ``server.limited`` at a bounded rate (an
        overload makes thousands)."""
        server = self._server
        server.handshakes["rejected"].inc()
        if reason in ADMISSION_LIMITS:
            server.note_limit(reason, client, path)
        elif _std_log.isEnabledFor(logging.INFO):  # filtered structlog calls still cost
            _log.info("handshake.rejected", reason=reason, status=status, path=path, client=client)

    def failed(self, result: str, error: str, peer: str, path: str | None = None) -> None:
        """Count a handshake that failed or timed out; log it at DEBUG (scanners and
        TCP probes make many, so they stay out of INFO)."""
        self._server.handshakes[result].inc()
        if _std_log.isEnabledFor(logging.DEBUG):
            _log.debug("handshake.failed", result=result, error=error, path=path, client=peer)

    def open_connection(
        self,
        upgrade: Upgrade,
        protocol: ServerProtocol,
        started: float,
        transport: asyncio.Transport,
    ) -> Driver:
        """Callback mode: the connection of an accepted handshake whose 101 is written
        (its driver, to start)."""
        return self._server._open_connection(upgrade, protocol, started, TransportDriver(transport))

    # -- for the ASGI driver (``supervisor.asgi``) --------------------------------------------

    def scope_opened(self) -> float:
        """Count an ASGI ``websocket`` scope that starts its handshake (the ASGI server
        accepted its socket: it counts neither as accepted nor against
        ``max_handshakes``); the clock reading it started at."""
        server = self._server
        server.states["handshaking"].inc()
        return server.clock.now()

    def scope_settled(self) -> None:
        """An ASGI scope's handshake is over (answered, accepted or failed)."""
        self._server.states["handshaking"].dec()

    def open_scope(
        self, upgrade: Upgrade, protocol: ServerProtocol, started: float, driver: Driver
    ) -> None:
        """The connection of an ASGI handshake the server accepted, driven by ``driver``
        (an ``ASGIDriver``, whose ``run()`` the caller awaits). No resume under ASGI."""
        self._server._open_connection(upgrade, protocol, started, driver, resumable=False)

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``fn`` in the server's task group; False once the server is stopping."""
        return self._server.start_soon(fn)


class _HotCounters:
    """The metrics updated per message and per connection, batched.

    ``prometheus_client`` takes a lock and several calls per update; these
    add to plain numbers instead, and :meth:`flush` hands the totals over
    before every read of the registry on the event loop's thread (so a scrape
    is exact) and every second (so multiprocess workers publish them). Gauges
    stay unbatched in multiprocess mode (see :func:`hot_gauge`).
    """

    __slots__ = (
        "_batches",
        "_closed",
        "_metrics",
        "accepted",
        "connection_duration",
        "handshake_duration",
        "handshakes",
        "ping_rtt",
        "received_binary",
        "received_bytes",
        "received_text",
        "sent_binary",
        "sent_bytes",
        "sent_text",
        "states",
    )

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.received_text = BatchedCounter(metrics.messages_received.labels(kind="text"))
        self.received_binary = BatchedCounter(metrics.messages_received.labels(kind="binary"))
        self.received_bytes = BatchedCounter(metrics.received_bytes)
        self.sent_text = BatchedCounter(metrics.messages_sent.labels(kind="text"))
        self.sent_binary = BatchedCounter(metrics.messages_sent.labels(kind="binary"))
        self.sent_bytes = BatchedCounter(metrics.sent_bytes)
        self.accepted = BatchedCounter(metrics.connections_accepted)
        self.handshakes: dict[str, Any] = {
            r: BatchedCounter(metrics.handshakes.labels(result=r)) for r in HANDSHAKE_RESULTS
        }
        #: Connections by state (gauges). A connection's states are the keys as
        #: ``ConnectionState`` members, which its own lookups then find by identity
        #: (a str key looked up by a ``StrEnum`` member compares them as strings).
        self.states: dict[str, Any] = {
            _STATE_KEYS.get(s, s): hot_gauge(metrics, metrics.connections.labels(state=s))
            for s in CONNECTION_STATES
        }
        self.handshake_duration = BatchedHistogram(metrics.handshake_duration)
        self.connection_duration = BatchedHistogram(metrics.connection_duration)
        self.ping_rtt = BatchedHistogram(metrics.ping_rtt)  # a pong per connection per interval
        self._closed: dict[tuple[str, str], BatchedCounter] = {}
        self._batches: list[Any] = [
            self.received_text,
            self.received_binary,
            self.received_bytes,
            self.sent_text,
            self.sent_binary,
            self.sent_bytes,
            self.accepted,
            *self.handshakes.values(),
            *(g for g in self.states.values() if isinstance(g, BatchedGauge)),
            self.handshake_duration,
            self.connection_duration,
            self.ping_rtt,
        ]
        metrics.add_flusher(self.flush)

    def closed(self, reason: str, initiator: str) -> BatchedCounter:
        """The ``wsup_connections_closed_total`` batch for ``reason`` and ``initiator``."""
        counter = self._closed.get((reason, initiator))
        if counter is None:
            counter = self._closed[reason, initiator] = BatchedCounter(
                self._metrics.connections_closed.labels(reason=reason, initiator=initiator)
            )
            self._batches.append(counter)
        return counter

    def flush(self) -> None:
        """Hand every batch over to its metric."""
        for batch in self._batches:
            batch.flush()


_STATE_KEYS: dict[str, ConnectionState] = {state.value: state for state in ConnectionState}


def _new_handler(route: RouteOptions, conn: Connection, app: App, values: Mapping[str, Any]) -> Any:
    """A fresh behaviour for ``conn``'s actor (at its start and at every restart)."""
    handler = route.handler(**route.kwargs)
    handler.conn = conn
    handler.app = app
    handler.params = conn.request.params
    handler.values = values
    return handler


def _needs_no_start(handler: Any) -> bool:
    """Whether a route's connection actor can wait for its first message to start.

    True for a :class:`Handler` subclass that adds no constructor and no
    ``on_connect``/``on_close`` (nor overrides the actor hooks behind them):
    until a message arrives, running it would do nothing, so its task is
    started only then (see ``Supervisor.start_child_nowait(parked=True)``).
    """
    return (
        isinstance(handler, type)
        and issubclass(handler, Handler)
        and all(
            getattr(handler, name) is getattr(Handler, name)
            for name in ("__init__", "on_start", "on_stop", "on_connect", "on_close")
        )
    )


async def _send_all(stream: anyio.abc.ByteStream, chunks: Sequence[bytes]) -> None:
    data = b"".join(chunks)
    if data:
        with contextlib.suppress(*_CLOSED_STREAM_ERRORS):
            await stream.send(data)


class _ClientClosed(Exception):
    """The client closed its connection before its request was complete."""


def peer_host(stream: anyio.abc.ByteStream) -> str:
    """The peer's address as logged: the host, without the port."""
    remote = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
    if isinstance(remote, tuple):
        return str(remote[0])
    return "" if remote is None else str(remote)


async def _close_quietly(stream: anyio.abc.AsyncResource) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()


async def _linger_stream(stream: anyio.abc.ByteStream, timeout: float) -> None:
    try:
        with contextlib.suppress(NotImplementedError, *_CLOSED_STREAM_ERRORS):
            await stream.send_eof()  # TLS cannot half-close: the client reads to the end
        left = LINGER_BYTES
        with anyio.move_on_after(timeout), contextlib.suppress(*_CLOSED_STREAM_ERRORS):
            while left >= 0:
                left -= len(await stream.receive())
    finally:
        await _close_quietly(stream)


def _backend_name() -> str:
    try:
        import sniffio

        backend = sniffio.current_async_library()
    except Exception:
        return "unknown"
    if backend == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()
        if type(loop).__module__.startswith("uvloop"):
            return "asyncio+uvloop"
    return backend


async def serve(
    app: App,
    config: ServerConfig | None = None,
    *,
    handle_signals: bool = True,
    metrics: Metrics | None = None,
    backplane: Backplane | None = None,
    task_status: anyio.abc.TaskStatus[Server] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (graceful drain; a second signal forces).

    Args:
        app: what to serve.
        config: settings (default ``app.config``).
        handle_signals: install SIGTERM/SIGINT handling (only in the main thread).
        metrics: where to count.
        backplane: the cross-node transport.

    Raises:
        ListenError: an address could not be bound.
        StartupError: an ``on_startup`` hook or the ``lifespan`` of the app raised.
    """
    server = Server(app, config, metrics=metrics, backplane=backplane)
    try:
        await _serve_with_signals(server, handle_signals, task_status)
    except BaseExceptionGroup as group:
        listen_error = find_exception(group, ListenError)
        if listen_error is not None:
            raise listen_error from None
        startup_error = find_exception(group, StartupError)
        if startup_error is not None:
            raise startup_error from startup_error.__cause__
        raise


async def _serve_with_signals(
    server: Server, handle_signals: bool, task_status: anyio.abc.TaskStatus[Server]
) -> None:
    async with anyio.create_task_group() as tg:
        if handle_signals:
            # Started before serve() so a signal during start-up is not lost; the
            # watcher only acts once the server is serving.
            tg.start_soon(_watch_signals, server)
        await server.serve(task_status=task_status)
        tg.cancel_scope.cancel()


async def _watch_signals(server: Server) -> None:
    signals: list[signal.Signals] = [signal.SIGTERM, signal.SIGINT]
    usr1: Callable[[], None] = server.stop_accepting
    if hasattr(signal, "SIGUSR1"):
        signals.append(signal.SIGUSR1)
    with anyio.open_signal_receiver(*signals) as received:
        async with anyio.create_task_group() as tg:
            async for signum in received:
                if signum == getattr(signal, "SIGUSR1", None):
                    usr1()
                    continue
                if server._drain_started:
                    server.force_stop()
                    return
                _log.info("server.signal_received", signal=signal.Signals(signum).name)
                tg.start_soon(server.shutdown)
