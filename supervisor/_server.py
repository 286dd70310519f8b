"""The server: listeners, handshakes, operational HTTP, keepalive and graceful drain.

Theory of operation: each listener's accept loop hands every socket to its own
task, which reads the HTTP request through websockets' ``ServerProtocol`` under
the handshake timeout, answers ``/healthz``, ``/readyz``, ``/metrics`` and the
app's plain HTTP routes itself, and otherwise routes, checks limits, Origin and
the app's hooks before accepting. An accepted socket becomes a
:class:`~supervisor._connection.Connection` whose actor is a dynamic child of
the connection supervisor. One keepalive task serves every connection. On
asyncio without TLS the same steps run in transport callbacks instead of a
task per socket (see ``_aio``).

Shutdown is phased: ``/readyz`` turns 503 → (optional grace) → listeners close,
handshakes in flight get 503 → the connections drain in shuffled batches
spread over ``drain_window`` (see ``_drain``; each actor finishes its mailbox,
the outbound buffer is flushed, close 1001) → after the drain deadline
whatever is left is aborted and counted → service actors stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import heapq
import http
import itertools
import logging
import math
import platform
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import structlog
from anyio.streams.tls import TLSStream
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Response
from websockets.http11 import Request as WSRequest
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from actors import ALL, Backplane, Clock, CriticalFailure, DeadLetter, MonotonicClock
from actors._backend import Waiter, primitives

from . import _api
from ._accept import AcceptFailure, AcceptThrottle, classify_accept_error, descriptor_usage
from ._aio import HandshakeProtocol, TransportStream, hooks_are_sync, serve_sockets
from ._app import (
    Accept,
    App,
    Handler,
    HTTPResponse,
    Reject,
    Request,
    RouteOptions,
    call_maybe_async,
)
from ._body import BodyReader, parse_head, wants_body
from ._config import ServerConfig
from ._connection import Connection, ConnectionState, Driver
from ._drain import drain_paced
from ._drivers import StreamDriver, TransportDriver
from ._exceptions import ListenError, StartupError, find_exception
from ._instrumentation import (
    BatchedCounter,
    BatchedGauge,
    BatchedHistogram,
    MetricsInstrumentation,
    hot_gauge,
)
from ._keepalive import KeepaliveAction, wake_time
from ._limits import EveryInterval
from ._proxy import TrustedProxies
from ._request import (
    OriginPolicy,
    header_list,
    header_tokens,
    parse_cookies,
    repeated_singleton,
    single_header,
    split_target,
)
from ._routing import RouteMatch
from ._system import ActorSystem
from ._tree import ChildSpec, Restart, Supervisor, SupervisorSpec
from ._watchdog import LoopWatchdog
from .metrics import (
    ACCEPT_ERRORS,
    CONNECTION_STATES,
    HANDSHAKE_RESULTS,
    LIMIT_NAMES,
    AcceptError,
    LimitName,
    Metrics,
)

if TYPE_CHECKING:
    from .asgi import ASGIConnection

__all__ = ["Server", "serve"]

_log = structlog.get_logger("wsup.server")
#: The standard library logger behind ``_log``, to skip filtered per-connection lines cheaply.
_std_log = logging.getLogger("wsup.server")
_LINGER_BYTES = 1 << 20
"""At most this many bytes are read and discarded after an HTTP answer before closing."""
_CLOSED_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
# websockets logs every handshake at INFO through this logger; wsup logs its own lines.
_PROTOCOL_LOGGER = logging.getLogger("websockets.server")
#: A socket as the handshake code sees it: anyio's stream, or asyncio's transport.
AnyStream = anyio.abc.ByteStream | TransportStream

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


def _plain(
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    all_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", f"wsup/{VERSION}"),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    for name, value in headers:
        all_headers[name] = value
    return Response(status, http.HTTPStatus(status).phrase, all_headers, data)


def _head(status: int) -> Response:
    """The answer to HEAD: status and headers of the GET, without its body."""
    response = _plain(status, b"")
    del response.headers["Content-Length"]
    return response


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
        for history in app.histories:
            self.runtime.add_history(history)
        #: Open connections: wsup's own, and those an ASGI server brought (``supervisor.asgi``).
        self.connections: set[Connection | ASGIConnection] = set()
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
        self._origins = OriginPolicy(self.config.origins)
        self._proxies = TrustedProxies(self.config.trusted_proxies)
        self._conn_sup: Supervisor | None = None
        self._conn_specs: dict[int, tuple[ChildSpec, bool]] = {}
        # Created in serve(): anyio primitives need a running event loop.
        self._accept_scope: anyio.CancelScope
        self._stop: anyio.Event
        self._listeners: list[anyio.abc.SocketListener] = []
        self._ops_listeners: list[anyio.abc.SocketListener] = []
        self._all_closed: anyio.Event | None = None
        self._keepalive_heap: list[tuple[float, int, Connection]] = []
        self._keepalive_seq = itertools.count()
        # The one live heap entry of each connection; other entries of it are stale.
        self._keepalive_due: dict[Connection | ASGIConnection, tuple[float, int]] = {}
        self._keepalive_wake: Waiter | None = None
        self._keepalive_next = math.inf
        self._tg: anyio.abc.TaskGroup | None = None
        self._drain_started = False
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
        self.protocol_logger = _PROTOCOL_LOGGER
        #: Callback-mode sockets closing after an HTTP answer (see ``HandshakeProtocol.linger``).
        self.lingering: set[HandshakeProtocol] = set()
        #: Whether handshakes can be decided inside transport callbacks (set by serve()).
        self.sync_handshakes = False
        self.counters = counters = _HotCounters(self.metrics)
        self.handshakes = counters.handshakes
        self.states = counters.states
        #: Paces accepting when descriptors run out (shared by every listener).
        self.accept_throttle = AcceptThrottle()
        self._limited = {name: self.metrics.limited.labels(limit=name) for name in LIMIT_NAMES}
        self._limit_lines = EveryInterval(10.0)
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
        self.sync_handshakes = hooks_are_sync(self)
        self.loop_token = anyio.lowlevel.current_token()
        self.loop_thread = threading.get_ident()
        self.metrics.owner_thread = self.loop_thread  # batched metrics are updated here
        self.metrics.set_build_info(VERSION, platform.python_version(), _backend_name())
        try:
            # Bind first: a bad address fails before anything else has started.
            listeners = await self._listen() if listen else []
            async with self.system:
                sup = await self.system.root.start_child(
                    SupervisorSpec(id="connections", intensity=None)
                )
                assert isinstance(sup, Supervisor)
                self._conn_sup = sup
                await self._start_app(app)
                async with self._lifespan(app), anyio.create_task_group() as tg:
                    self._tg = tg
                    self.accepting = True
                    tg.start_soon(self._accept_all, listeners)
                    tg.start_soon(self._keepalive_loop)
                    tg.start_soon(self._flush_metrics)
                    watchdog = LoopWatchdog(self.metrics, self.config.loop_lag_threshold)
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
                    )
                    task_status.started(self)
                    try:
                        await self._stop.wait()
                    finally:
                        # Callback-mode connections have no task a cancellation reaches.
                        for conn in list(self.connections):
                            if conn.uses_callbacks:
                                conn.abort()
                        for lingering in list(self.lingering):
                            lingering.abort()
                    tg.cancel_scope.cancel()
                for hook in app.on_shutdown:
                    with anyio.CancelScope(shield=True):
                        await call_maybe_async(hook, app)
        finally:
            app.server = None
            self._tg = None
            await self._close_listeners(ops=True)
        _log.info("server.stopped")
        if self.failure is not None:
            raise self.failure

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
            tg.start_soon(serve_sockets, self, [(lst.extra(raw), o) for lst, o in listeners])
        else:
            for listener, ops_only in listeners:
                tg.start_soon(self._accept_loop, listener, ops_only)

    async def _accept_loop(self, listener: anyio.abc.SocketListener, ops_only: bool) -> None:
        assert self._tg is not None
        throttle = self.accept_throttle
        while True:
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
                self.counters.accepted.inc()
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

    # -- per socket --------------------------------------------------------------------------

    async def _handle(self, stream: anyio.abc.ByteStream, ops_only: bool = False) -> None:
        self.states["handshaking"].inc()
        started = self.clock.now()
        conn: Connection | None = None
        try:
            conn = await self._handshake(stream, started, ops_only)
        except BaseException:
            await _close_quietly(stream)
            raise
        finally:
            self.states["handshaking"].dec()
        if conn is not None:
            await conn._run()

    async def _handle_safely(self, stream: anyio.abc.ByteStream, ops_only: bool) -> None:
        # One socket's unexpected error must never take the server down.
        try:
            await self._handle(stream, ops_only)
        except Exception:
            _log.exception("connection.failed")
            await _close_quietly(stream)

    async def _handshake(
        self, stream: anyio.abc.ByteStream, started: float, ops_only: bool
    ) -> Connection | None:
        config = self.config
        protocol = ServerProtocol(
            max_size=config.max_size,
            extensions=self.compression,
            logger=self.protocol_logger,
        )
        request: WSRequest | None = None
        invalid = False
        head = bytearray()  # the request's bytes, in case it has a body (see _body)
        deadline = anyio.current_time() + config.handshake_timeout
        with anyio.move_on_after(config.handshake_timeout):
            if config.ssl is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=config.ssl, standard_compatible=False
                    )
                except Exception as exc:
                    _log.debug("handshake.tls_failed", error=str(exc))
                    self.handshake_failed(stream, f"TLS: {exc}")
                    await _close_quietly(stream)
                    return None
            while request is None:
                try:
                    data = await stream.receive()
                except _CLOSED_STREAM_ERRORS:
                    self.handshake_failed(stream, "connection closed before the request")
                    await _close_quietly(stream)
                    return None
                head += data
                protocol.receive_data(data)
                events = protocol.events_received()
                if events:
                    request = events[0]  # type: ignore[assignment]
                elif protocol.handshake_exc is not None:
                    invalid = True
                    break
        if invalid and wants_body(protocol):
            return await self._read_body(stream, bytes(head), started, ops_only, deadline)
        if invalid:
            # Answered outside the handshake deadline: the lingering close has its own.
            await self.bad_request(stream, protocol)
            return None
        if request is None:
            self.handshake_failed(stream, "no request before the handshake timeout", "timeout")
            await self.handshake_timed_out(stream, protocol)
            return None
        path, query = split_target(request.path)
        return await self.decide(stream, protocol, request, path, query, started, ops_only=ops_only)

    async def _read_body(
        self,
        stream: anyio.abc.ByteStream,
        head: bytes,
        started: float,
        ops_only: bool,
        deadline: float,
    ) -> Connection | None:
        """Read the body of a request that has one (stream path), then decide."""
        plan = self.body_plan(stream, head, ops_only)
        if isinstance(plan, Response):
            await self.answer_raw(stream, plan)
            return None
        request, protocol, reader = plan
        complete = reader.feed(b"")
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            while not complete:
                try:
                    data = await stream.receive()
                except _CLOSED_STREAM_ERRORS:
                    self.handshake_failed(stream, "connection closed before the request body")
                    await _close_quietly(stream)
                    return None
                complete = reader.feed(data)
        if not complete:
            self.handshake_failed(stream, "no request body before the handshake timeout", "timeout")
            await self.handshake_timed_out(stream, protocol)
            return None
        path, query = split_target(request.path)
        return await self.decide(
            stream, protocol, request, path, query, started, ops_only=ops_only, body=reader.body
        )

    def body_plan(
        self, stream: AnyStream, head: bytes, ops_only: bool
    ) -> tuple[WSRequest, ServerProtocol, BodyReader] | Response:
        """How to go on with a request that announces a body (both I/O paths).

        Returns:
            The request, a fresh protocol to answer with, and a reader that
            collects the body (it already holds what came with the head); or the
            answer to send at once: 405 when the target takes no body, 411 for a
            chunked one, 413 when ``Content-Length`` passes the target's limit,
            400 for a malformed head.
        """
        parsed = parse_head(head)
        if parsed is None or parsed.problem:
            problem = parsed.problem if parsed is not None else "not a valid HTTP/1.1 request"
            self.handshake_failed(stream, f"invalid HTTP request: {problem}")
            return _plain(400, f"bad request: {problem}\n")
        request = parsed.request
        path, _ = split_target(request.path)
        limit = self._body_limit(stream, request.method, path, ops_only)
        api = self._serves_api(stream, path, ops_only)
        not_here = self._api_not_here(path) if limit is None and not ops_only else None
        if not_here is not None:
            return not_here
        if limit is None:
            # Not a target that takes a body: wsup reads none there.
            self.handshake_failed(stream, f"{request.method} with a body", path=path)
            allow = self._allow(path)
            return _plain(
                405,
                f"requests with a body are not supported here: use {allow}\n",
                headers=[("Allow", allow)],
            )
        if parsed.length is None:
            text = "send the body with Content-Length: chunked bodies are not supported"
            return self._api_error(411, text, path) if api else _plain(411, text + "\n")
        if parsed.length > limit:
            text = f"request body too large: {parsed.length} bytes, at most {limit}"
            return self._api_error(413, text, path) if api else _plain(413, text + "\n")
        protocol = ServerProtocol(
            max_size=self.config.max_size, extensions=self.compression, logger=self.protocol_logger
        )
        reader = BodyReader(parsed.length)
        reader.feed(parsed.rest)
        return request, protocol, reader

    def _body_limit(self, stream: AnyStream, method: str, path: str, ops_only: bool) -> int | None:
        """The largest body ``method path`` takes on this listener, or None for none."""
        if self._serves_api(stream, path, ops_only):
            return self.config.api_max_body
        options = None if ops_only else self.app.http_options.get(path)
        if options is not None and method in options.methods and method not in ("GET", "HEAD"):
            return options.max_body
        return None

    def _api_not_here(self, path: str) -> Response | None:
        """The 404 for ``/api/`` on the main port when the API is off or elsewhere."""
        if not _api.is_api_path(path) or path in self.app.http_routes:
            return None
        if self.app.router.match(path) is not None:
            return None  # the app's own WebSocket route
        why = (
            "the server API is off: configure an API key (WSUP_API_KEY or --api-key-file)"
            if self.config.api_key is None
            else f"the server API is served on port {self.config.api_port}"
        )
        return _plain(404, why + "\n")

    def _allow(self, path: str) -> str:
        options = self.app.http_options.get(path)
        return options.allow if options is not None else "GET, HEAD"

    def _on_api_port(self, stream: AnyStream) -> bool:
        if not self.api_ports:
            return False
        local = stream.extra(anyio.abc.SocketAttribute.local_port, None)
        return local is not None and any(port == local for _, port in self.api_ports)

    def _serves_api(self, stream: AnyStream, path: str, ops_only: bool) -> bool:
        """Whether this request is for the server API, here (key set, right port)."""
        if self.config.api_key is None or not _api.is_api_path(path):
            return False
        if self.config.api_port is None:
            return not ops_only
        return ops_only and self._on_api_port(stream)

    def _api_error(self, status: int, text: str, path: str) -> Response:
        answer = _api.error(status, text, _api.endpoint_of(path))
        self.metrics.api_requests.labels(endpoint=answer.endpoint, result=answer.result).inc()
        return _plain(status, answer.json(), "application/json")

    async def answer_raw(self, stream: AnyStream, response: Response) -> None:
        """Send ``response`` on a socket whose parser gave up, then close (lingering)."""
        await _send_all(stream, [response.serialize()])
        await self._linger(stream)

    def refused(
        self, stream: AnyStream, status: int, reason: str, path: str, client: str | None = None
    ) -> None:
        """Count a handshake the server or the app turned away, and log it once.

        ``reason`` is one of ``no_route``, ``not_accepting``, ``max_connections``,
        ``origin``, ``hook``: INFO, except ``max_connections`` (WARNING: a limit).
        """
        self.handshakes["rejected"].inc()
        level = logging.WARNING if reason == "max_connections" else logging.INFO
        if _std_log.isEnabledFor(level):  # filtered structlog calls still cost
            _log.log(
                level,
                "handshake.rejected",
                reason=reason,
                status=status,
                path=path,
                client=client if client is not None else peer_host(stream),
            )

    def handshake_failed(
        self, stream: AnyStream, error: str, result: str = "failed", path: str | None = None
    ) -> None:
        """Count a handshake that failed or timed out; log it at DEBUG (scanners and
        TCP probes make many, so they stay out of INFO)."""
        self.handshakes[result].inc()
        if _std_log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "handshake.failed",
                result=result,
                error=error,
                path=path,
                client=peer_host(stream),
            )

    async def handshake_timed_out(self, stream: AnyStream, protocol: ServerProtocol) -> None:
        """Answer a request that did not arrive within ``handshake_timeout``."""
        await self._respond(stream, protocol, _plain(408, "handshake timed out\n"))

    async def ops_only_answer(self, stream: AnyStream, protocol: ServerProtocol) -> None:
        """Answer a request on the metrics port for anything but the ops endpoints."""
        await self._respond(
            stream, protocol, _plain(404, "this port serves /metrics, /healthz, /readyz\n")
        )

    async def repeated_header(
        self, stream: AnyStream, protocol: ServerProtocol, name: str, path: str
    ) -> None:
        """Answer a request that repeats a header which must appear once (400, counted)."""
        self.handshake_failed(stream, f"more than one {name} header", path=path)
        await self._respond(
            stream, protocol, _plain(400, f"bad request: more than one {name} header\n")
        )

    async def bad_request(self, stream: AnyStream, protocol: ServerProtocol) -> None:
        error = protocol.handshake_exc
        cause = error.__cause__ if error is not None else None
        self.handshake_failed(stream, f"invalid HTTP request: {cause or error}")
        # websockets answers these itself, worded for a WebSocket client: an HTTP
        # answer fits any client (a browser, curl, a webhook sender).
        if isinstance(error, RequestLineTooLong):
            response = _plain(
                414, f"request line too long: path and query must fit in {MAX_LINE_LENGTH} bytes\n"
            )
        elif isinstance(error, (HeaderLineTooLong, TooManyHeaders)):
            limits = f"at most {MAX_NUM_HEADERS} lines of {MAX_LINE_LENGTH} bytes"
            response = _plain(431, f"request header fields too large: {limits}\n")
        elif cause is not None and "unsupported request body" in str(cause):
            # A request with a body (POST, PUT...): wsup never reads request bodies.
            response = _plain(
                405,
                "requests with a body are not supported: use GET\n",
                headers=[("Allow", "GET, HEAD")],
            )
        else:
            response = _plain(400, "bad request: not a valid HTTP/1.1 request\n")
        await _send_all(stream, [response.serialize()])
        await self._linger(stream)

    async def _respond(
        self, stream: AnyStream, protocol: ServerProtocol, response: Response
    ) -> None:
        if not protocol.eof_sent:
            protocol.send_response(response)
        await _send_all(stream, protocol.data_to_send())
        await self._linger(stream)

    async def _linger(self, stream: AnyStream) -> None:
        """Close after an HTTP answer: half-close, discard what still comes, then close.

        Closing with unread input would send a reset that can destroy the
        answer on its way (a client still sending an oversized request). Bounded
        by ``close_timeout`` and 1 MiB, like nginx's lingering close.
        """
        timeout = self.config.close_timeout
        if isinstance(stream, TransportStream):
            stream.linger(timeout, _LINGER_BYTES)  # never suspends: may run in a callback
        elif self._tg is not None:
            # In a task of its own: the handshake is over, the socket only waits to close.
            self._tg.start_soon(_linger_stream, stream, timeout)
        else:
            await _close_quietly(stream)

    def _request(
        self,
        stream: AnyStream,
        request: WSRequest,
        path: str,
        query: dict[str, list[str]],
        params: Any,
        body: bytes | bytearray = b"",
    ) -> Request:
        remote = stream.extra(anyio.abc.SocketAttribute.remote_address, ("", 0))
        if isinstance(remote, str):  # a UNIX socket
            remote_pair: tuple[str, int] = (remote, 0)
        else:
            remote_pair = (str(remote[0]), int(remote[1]))
        headers = list(request.headers.raw_items())
        offered: list[str] = []
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            offered.extend(p.strip() for p in value.split(",") if p.strip())
        return Request(
            path=path,
            params=params,
            query=query,
            headers=headers,
            cookies=parse_cookies(request.headers.get_all("Cookie")),
            remote_address=remote_pair,
            client_address=self._proxies.client_address(remote_pair[0], headers),
            subprotocols=tuple(offered),
            method=request.method,
            body=bytes(body),
        )

    async def decide(
        self,
        stream: AnyStream,
        protocol: ServerProtocol,
        ws_request: WSRequest,
        path: str,
        query: dict[str, list[str]],
        started: float,
        *,
        ops_only: bool = False,
        body: bytes | bytearray = b"",
    ) -> Connection | None:
        metrics = self.metrics
        repeated = repeated_singleton(ws_request.headers)
        if repeated is not None:
            await self.repeated_header(stream, protocol, repeated, path)
            return None
        if self._serves_api(stream, path, ops_only):
            await self._respond(stream, protocol, await self._api_call(stream, ws_request, body))
            return None
        if ops_only and path not in ("/healthz", "/readyz", "/metrics"):
            await self.ops_only_answer(stream, protocol)
            return None
        not_here = self._api_not_here(path)
        if not_here is not None:
            await self._respond(stream, protocol, not_here)
            return None
        options = self.app.http_options.get(path)
        methods = options.methods if options is not None else ("GET",)
        if ws_request.method not in methods and ws_request.method != "HEAD":
            # Only GET (and HEAD, for probes), or what a plain HTTP route declares.
            allow = self._allow(path)
            use = allow.removesuffix(", HEAD").replace(", HEAD", "")
            response = _plain(405, f"{ws_request.method} is not supported: use {use}\n")
            response.headers["Allow"] = allow
            await self._respond(stream, protocol, response)
            return None
        if ws_request.method == "HEAD":
            await self._respond(stream, protocol, _head(self._head_target(path)))
            return None
        if path == "/healthz":
            await self._respond(stream, protocol, _plain(200, "ok\n"))
            return None
        if path == "/readyz":
            ready, why = self.readiness()
            await self._respond(stream, protocol, _plain(200 if ready else 503, why + "\n"))
            return None
        if path == "/metrics":
            body, content_type = metrics.render_for(header_list(ws_request.headers, "Accept"))
            await self._respond(stream, protocol, _plain(200, body, content_type))
            return None
        match: RouteMatch | None = self.app.router.match(path)
        upgrade = "upgrade" in header_tokens(ws_request.headers, "Connection")
        if match is None or not upgrade:
            http_handler = self.app.http_routes.get(path)
            if http_handler is not None and not upgrade:
                request = self._request(stream, ws_request, path, query, {}, body)
                try:
                    answer: HTTPResponse = await call_maybe_async(http_handler, request)
                    response = _plain(
                        answer.status, answer.body, answer.content_type, answer.headers
                    )
                except Exception:
                    _log.exception("http.handler_failed", path=path)
                    response = _plain(500, "internal server error\n")
                await self._respond(stream, protocol, response)
                return None
            if match is None:
                self.refused(stream, 404, "no_route", path)
                await self._respond(stream, protocol, _plain(404, f"no route for {path}\n"))
                return None
        assert match is not None
        route: RouteOptions = match.target  # type: ignore[assignment]
        # During the readiness grace /readyz already says 503 but handshakes are
        # still accepted: load balancers are still sending traffic our way.
        if not self.accepting:
            self.refused(stream, 503, "not_accepting", path)
            why = "server is shutting down" if self.draining else "not accepting new connections"
            await self._respond(stream, protocol, _plain(503, why + "\n"))
            return None
        if len(self.connections) >= self.config.max_connections:
            self.refused(stream, 503, "max_connections", path)
            await self._respond(stream, protocol, _plain(503, "too many connections\n"))
            return None
        origins = self._origins
        if not origins.allows_all and not origins.allows(
            single_header(ws_request.headers, "Origin")
        ):
            self.refused(stream, 403, "origin", path)
            await self._respond(stream, protocol, _plain(403, "origin not allowed\n"))
            return None
        protocol.available_subprotocols = [Subprotocol(p) for p in route.subprotocols] or None
        response = protocol.accept(ws_request)
        if response.status_code != 101:
            # Not a valid WebSocket handshake (426 for a plain GET, 400 for a bad key...).
            error = protocol.handshake_exc
            self.handshake_failed(
                stream, f"{response.status_code}: {error or response.reason_phrase}", path=path
            )
            await self._respond(stream, protocol, response)
            return None
        request = self._request(stream, ws_request, path, query, match.params)
        verdict = await self._run_hooks(request, route)
        if isinstance(verdict, Reject):
            self.refused(stream, verdict.status, "hook", path, request.client_address)
            await self._respond(
                stream,
                protocol,
                _plain(verdict.status, verdict.body or "rejected\n", headers=verdict.headers),
            )
            return None
        subprotocol: str | None = protocol.subprotocol
        if verdict.subprotocol is not None:
            if verdict.subprotocol not in request.subprotocols:
                _log.error("handshake.bad_subprotocol", subprotocol=verdict.subprotocol)
                self.handshakes["failed"].inc()  # logged just above
                await self._respond(stream, protocol, _plain(500, "internal server error\n"))
                return None
            subprotocol = verdict.subprotocol
            response.headers["Sec-WebSocket-Protocol"] = verdict.subprotocol
        for name, value in verdict.headers:
            response.headers[name] = value
        protocol.send_response(response)
        try:
            await _send_all(stream, protocol.data_to_send())
        except _CLOSED_STREAM_ERRORS:
            self.handshake_failed(stream, "connection closed before the 101 was sent", path=path)
            await _close_quietly(stream)
            return None
        driver: Driver = (
            TransportDriver(stream.transport)
            if isinstance(stream, TransportStream)
            else StreamDriver(stream)
        )
        conn = Connection(self, protocol, request, route, subprotocol, driver)
        self._spawn(conn, route, verdict, match.route.pattern)
        self.connections.add(conn)
        self.states["open"].inc()
        self.handshakes["accepted"].inc()
        self.counters.handshake_duration.observe(self.clock.now() - started)
        self.schedule_keepalive(conn)
        if _std_log.isEnabledFor(logging.DEBUG):  # filtered structlog calls still cost
            _log.debug(
                "connection.opened", conn=conn.address, path=path, client=request.client_address
            )
        return conn

    async def _api_call(
        self, stream: AnyStream, ws_request: WSRequest, body: bytes | bytearray
    ) -> Response:
        """Answer one server API request (see ``_api``); count and log it."""
        assert self.config.api_key is not None
        started = self.clock.now()
        path, query = split_target(ws_request.path)
        call = _api.parse(
            ws_request.method,
            path,
            query,
            list(ws_request.headers.raw_items()),
            bytes(body),
            self.config.api_key,
        )
        answer = call if isinstance(call, _api.Answer) else await _api.perform(call, self.runtime)
        metrics = self.metrics
        metrics.api_requests.labels(endpoint=answer.endpoint, result=answer.result).inc()
        metrics.api_request_duration.observe(self.clock.now() - started)
        if answer.status == 200:
            if _std_log.isEnabledFor(logging.DEBUG):
                _log.debug("api.called", endpoint=answer.endpoint, client=peer_host(stream))
        else:
            _log.log(
                logging.WARNING if answer.status == 503 else logging.INFO,
                "api.refused",
                endpoint=answer.endpoint,
                status=answer.status,
                error=answer.body.get("error"),
                client=peer_host(stream),
            )
        return _plain(answer.status, answer.json(), "application/json", answer.headers)

    async def _run_hooks(self, request: Request, route: RouteOptions) -> Accept | Reject:
        headers: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        subprotocol: str | None = None
        hooks = [*self.app.hooks, *([route.hook] if route.hook else [])]
        for hook in hooks:
            try:
                result = await call_maybe_async(hook, request)
            except Exception:
                _log.exception("handshake.hook_failed", path=request.path)
                return Reject(500, "internal server error\n")
            if isinstance(result, Reject):
                return result
            if isinstance(result, Accept):
                headers.extend(result.headers)
                values.update(result.values)
                subprotocol = result.subprotocol or subprotocol
        return Accept(headers=headers, subprotocol=subprotocol, values=values)

    def _spawn(
        self,
        conn: Connection | ASGIConnection,
        route: RouteOptions,
        accept: Accept,
        pattern: str,
    ) -> None:
        app = self.app
        params = conn.request.params
        values = accept.values

        def factory() -> Any:
            handler = route.handler(**route.kwargs)
            # An ASGIConnection offers handlers the same interface as a Connection.
            handler.conn = cast(Connection, conn)
            handler.app = app
            handler.params = params
            handler.values = values
            return handler

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
        self._limited[limit].inc()
        suppressed = self._limit_lines.allow(limit, self.clock.now())
        if suppressed is not None:
            _log.warning(
                "server.limited",
                limit=limit,
                conn=conn.address,
                client=conn.client_address,
                path=conn.request.path,
                suppressed=suppressed,
            )

    def connection_closed(
        self,
        conn: Connection | ASGIConnection,
        code: int,
        reason: str,
        initiator: str,
        label: str,
    ) -> None:
        """Account for a finished connection (called once by the connection)."""
        self.connections.discard(conn)
        self._forget_keepalive(conn)
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

    def _head_target(self, path: str) -> int:
        """The status a GET of ``path`` would get (for HEAD requests)."""
        if path == "/readyz":
            return 200 if self.readiness()[0] else 503
        if path in ("/healthz", "/metrics") or path in self.app.http_routes:
            return 200
        if self.app.router.match(path) is not None:
            return 426  # a WebSocket route: needs GET with Upgrade
        return 404

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

        Called when a connection opens and when its deadlines move earlier (a
        pong re-arms the next ping before the pong deadline). Cost: O(log n).
        """
        deadline = conn.keepalive.next_deadline()
        if deadline is None:
            return
        queued = self._keepalive_due.get(conn)
        if queued is not None and queued[0] <= deadline:
            return  # that entry comes first and reschedules when it fires
        seq = next(self._keepalive_seq)
        self._keepalive_due[conn] = (deadline, seq)
        heapq.heappush(self._keepalive_heap, (deadline, seq, conn))
        if deadline < self._keepalive_next and self._keepalive_wake is not None:
            self._keepalive_wake.set()

    def _forget_keepalive(self, conn: Connection | ASGIConnection) -> None:
        # A closed connection's heap entry would keep it alive until its deadline (a
        # ping interval): drop stale entries once they outnumber the live ones.
        due = self._keepalive_due
        due.pop(conn, None)
        heap = self._keepalive_heap
        if not due:
            heap.clear()
        elif len(heap) > 2 * len(due) + 64:
            heap[:] = [e for e in heap if due.get(e[2]) == (e[0], e[1])]
            heapq.heapify(heap)

    async def _keepalive_loop(self) -> None:
        heap = self._keepalive_heap
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
            while heap and heap[0][0] <= now:
                _, seq, conn = heapq.heappop(heap)
                queued = self._keepalive_due.get(conn)
                if queued is None or queued[1] != seq:
                    continue  # superseded by an earlier entry
                del self._keepalive_due[conn]
                if conn.state is ConnectionState.CLOSED or conn not in self.connections:
                    continue
                action = conn.keepalive.due(now)
                if action is KeepaliveAction.PING:
                    conn.send_ping()
                elif action is KeepaliveAction.PONG_TIMEOUT:
                    conn.fail(1011, "keepalive ping timeout", label="timeout")
                    continue
                elif action is KeepaliveAction.IDLE_TIMEOUT:
                    conn.fail(1001, "idle timeout", label="timeout")
                    continue
                self.schedule_keepalive(conn)
            self._keepalive_next = heap[0][0] if heap else math.inf
            wake = self._keepalive_wake = new_event()
            delay = None if math.isinf(self._keepalive_next) else self._keepalive_next - now
            if real_clock and delay is not None:
                # Wake on a grid of the slack: deadlines close together share one
                # wake-up instead of waking the loop once each (20,000 connections
                # with a 20 s ping interval: 4 wake-ups a second instead of 1,000).
                # A test's manual clock keeps exact deadlines.
                slack = heap[0][2].keepalive.config.slack
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
        #: Connections by state (gauges).
        self.states: dict[str, Any] = {
            s: hot_gauge(metrics, metrics.connections.labels(state=s)) for s in CONNECTION_STATES
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


async def _send_all(stream: AnyStream, chunks: Sequence[bytes]) -> None:
    data = b"".join(chunks)
    if data:
        with contextlib.suppress(*_CLOSED_STREAM_ERRORS):
            await stream.send(data)


def peer_host(stream: AnyStream) -> str:
    """The peer's address as logged: the host, without the port."""
    remote = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
    if isinstance(remote, tuple):
        return str(remote[0])
    return "" if remote is None else str(remote)


async def _close_quietly(stream: anyio.abc.AsyncResource | TransportStream) -> None:
    if isinstance(stream, TransportStream):
        stream.transport.close()  # may run in a transport callback: no cancel scope there
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await stream.aclose()


async def _linger_stream(stream: anyio.abc.ByteStream, timeout: float) -> None:
    try:
        with contextlib.suppress(NotImplementedError, *_CLOSED_STREAM_ERRORS):
            await stream.send_eof()  # TLS cannot half-close: the client reads to the end
        left = _LINGER_BYTES
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
