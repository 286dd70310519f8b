"""Serve a wsup :class:`~supervisor.App`'s WebSocket routes from any ASGI server.

Theory of operation:
    :class:`ASGIApp` is an ASGI application. Its ``lifespan`` (the ASGI
    ``lifespan`` scope, or :meth:`ASGIApp.lifespan` entered by a host
    framework) runs a :class:`~supervisor.Server` that binds no socket: the
    actor system, the ``connections`` supervisor, the app's services, startup
    hooks and ``lifespan``, the backplane, the loop watchdog and the metrics
    flush, exactly as ``wsup serve`` runs them. Its ``shutdown`` is wsup's
    drain.

    A ``websocket`` scope whose path matches a route is decided by the same
    decision as a handshake on wsup's own port (``Handshake.decide_scope``:
    readiness, admission control, ``Origin``, subprotocols, the hooks), then
    accepted or refused with an HTTP status (the ``websocket.http.response``
    extension) or, where the server lacks it, with a close before accept
    (1013 for a 503, else 1008), which ASGI servers answer with HTTP 403. The
    adapter reaches the server only through ``Server.handshake_gate``, as the
    callback driver does. An accepted scope becomes a
    :class:`~supervisor.Connection`, the same class as on wsup's own port,
    opened by the server's own hand-off under the ``connections``
    supervisor; its third driver,
    ``ASGIDriver`` (``server/_drivers.py``), runs two loops in the scope's
    task. The *reader* awaits ``receive()`` and hands each message to the
    connection's core, whole; under a full ``block`` mailbox it stops calling
    ``receive()``, so the ASGI server's own bounded queue fills and it stops
    reading the socket. The *writer* is the only caller of ``send()``: it
    takes the outbound buffer's oldest message and awaits ``send()`` for it,
    one message at a time. What the ASGI server has not taken yet stays in
    wsup's outbound buffer, where the route's slow-consumer policy applies to
    it as on wsup's own server. On asyncio, while the actor and the writer are
    idle, a message costs no task switch: the reader begins the actor's step
    itself, and the actor's send begins ``send()`` on the writer's behalf.

    Not available under ASGI, since the ASGI server owns the socket and the
    framing: write batching, wsup's keepalive pings and idle timeout (use the
    server's, e.g. uvicorn's ``--ws-ping-interval``), permessage-deflate
    settings and encode-once frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias

import anyio
import anyio.abc
import sniffio
import structlog
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors import Backplane

from ._constants import HEALTHZ, OPS_PATHS, READYZ, CloseCode
from .metrics import Metrics
from .server._app import App, HTTPResponse, HTTPRouteOptions, Request, call_maybe_async
from .server._config import ServerConfig
from .server._drivers import ASGIDriver
from .server._handshake import Answer, HookCall, plain
from .server._proxy import Networks, TrustedProxies
from .server._request import parse_cookies
from .server._routing import RouteMatch
from .server._server import Handshakes, Server

__all__ = ["ASGIApp"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApplication: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = structlog.get_logger("wsup.asgi")
#: The longest close reason (RFC 6455 5.5: a control frame's payload is at most 125 bytes).
_MAX_REASON = 123
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ASGIApp:
    """An ASGI application serving ``app``'s WebSocket routes.

    ::

        from supervisor.asgi import ASGIApp
        from examples.echo import app as echo

        application = ASGIApp(echo)   # uvicorn module:application

    Args:
        app: the wsup app whose routes, hooks, services and ``lifespan`` to run.
        fallback: an ASGI app for every other request (unknown paths, plain
            HTTP): wsup wraps it, and forwards its ``lifespan`` too.
        config: server settings (default ``app.config``); host, port, TLS,
            keepalive and the limits on accepting (``max_handshakes``,
            ``accept_rate``) do not apply (the ASGI server owns the socket);
            the limits on an upgrade (``max_connections``, the per-address
            caps, the handshake rates) do, with 503 and ``Retry-After``.
        metrics: where to count (default: a registry of its own, served at
            ``/metrics``).
        backplane: the cross-node transport (e.g. a :class:`~supervisor.RedisBackplane`).
        ops_endpoints: answer ``GET /healthz``, ``/readyz`` and ``/metrics``
            (relative to where the app is mounted) before the fallback sees them,
            to the clients ``config.ops_allow`` admits (403 for others).
        handle_signals: on the first SIGTERM or SIGINT, drain wsup's
            connections first (as ``wsup serve`` does), then hand the signal to
            the ASGI server's own handler; a second signal forces it at once.
            Only where the server handles signals with :func:`signal.signal`
            (uvicorn does) in the main thread; elsewhere the drain runs at
            the lifespan shutdown.

    Attributes:
        server: the running :class:`~supervisor.Server` (``None`` outside the lifespan).
    """

    def __init__(
        self,
        app: App,
        fallback: ASGIApplication | None = None,
        *,
        config: ServerConfig | None = None,
        metrics: Metrics | None = None,
        backplane: Backplane | None = None,
        ops_endpoints: bool = True,
        handle_signals: bool = True,
    ) -> None:
        self.app = app
        self.fallback = fallback
        self.config = config or app.config
        self.ops_endpoints = ops_endpoints
        self.handle_signals = handle_signals
        self._metrics = metrics
        self._backplane = backplane
        self._proxies = TrustedProxies(self.config.trusted_proxies)
        allow = self.config.ops_allow
        self._ops_allow = None if allow is None else Networks(allow, "ops_allow network")
        self.server: Server | None = None

    # -- the ASGI entry point ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI scope (``websocket``, ``http`` or ``lifespan``)."""
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan_scope(scope, receive, send)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        else:
            raise RuntimeError(f"wsup's ASGI app does not handle {kind!r} scopes")

    # -- lifespan ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _host: object = None) -> AsyncIterator[None]:
        """Run wsup (actor system, services, backplane) while the context is open.

        For a host framework that does not run a mounted app's lifespan
        (Starlette and FastAPI do not): ``FastAPI(lifespan=ws.lifespan)``.
        Leaving it drains every connection (1001) within ``drain_timeout``.

        Raises:
            StartupError: an ``on_startup`` hook or the app's ``lifespan`` raised.
            RuntimeError: it is already running.
        """
        if self.server is not None:
            raise RuntimeError("this ASGIApp's lifespan is already running")
        server = Server(self.app, self.config, metrics=self._metrics, backplane=self._backplane)
        async with anyio.create_task_group() as tg:
            await tg.start(_serve_without_listeners, server)
            self.server = server
            restore = self._take_signals(server, tg) if self.handle_signals else None
            try:
                yield
            finally:
                if restore is not None:
                    restore()
                with anyio.CancelScope(shield=True):
                    await server.shutdown()
                self.server = None

    async def shutdown(self) -> None:
        """Drain wsup's connections now, as ``wsup serve`` does on SIGTERM.

        For an ASGI server that tells the app nothing before it closes its
        sockets: call it from the server's shutdown hook (hypercorn's
        ``shutdown_trigger``) so connections close with 1001 after finishing
        their mailboxes. Returns when every connection is closed or the drain
        deadline passed; does nothing when wsup is not running.
        """
        server = self.server
        if server is not None:
            await server.shutdown()

    async def _lifespan_scope(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.lifespan())
                if self.fallback is not None:
                    await stack.enter_async_context(_forwarded_lifespan(self.fallback, scope))
            except Exception as exc:
                _log.exception("asgi.startup_failed")
                await send({"type": "lifespan.startup.failed", "message": _describe(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
        await send({"type": "lifespan.shutdown.complete"})

    def _take_signals(self, server: Server, tg: anyio.abc.TaskGroup) -> Callable[[], None] | None:
        """Drain on SIGTERM/SIGINT before the ASGI server's own handler sees them.

        Returns what puts the server's handlers back, or None if they were not
        taken (not the main thread, or signals that a loop dispatches itself).
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        if not all(
            callable(h) and getattr(h, "__name__", "") != "_sighandler_noop"
            for h in previous.values()
        ):
            # The loop dispatches these signals (add_signal_handler): the server
            # sees them whatever Python handler is set, so taking them would not help.
            _log.debug("asgi.signals_not_taken")
            return None
        soon = _signal_safe_scheduler()
        received: list[int] = []
        first, second = anyio.Event(), anyio.Event()

        def forward(sig: int) -> None:
            handler = previous[signal.Signals(sig)]
            if callable(handler):
                handler(sig, None)

        watching = anyio.CancelScope()

        async def force() -> None:
            await second.wait()
            server.force_stop()

        async def watch() -> None:
            with watching:
                await first.wait()
                sig = received[0]
                _log.info("server.signal_received", signal=signal.Signals(sig).name)
                async with anyio.create_task_group() as inner:
                    inner.start_soon(force)
                    await server.shutdown()
                    inner.cancel_scope.cancel()
                forward(sig)

        def on_signal(sig: int, frame: object) -> None:
            received.append(sig)
            if len(received) == 1:
                soon(first.set)
            else:
                soon(second.set)
                forward(sig)

        tg.start_soon(watch)
        for sig in _SIGNALS:
            signal.signal(sig, on_signal)

        def restore() -> None:
            watching.cancel()
            for sig, handler in previous.items():
                if signal.getsignal(sig) is on_signal:
                    signal.signal(sig, handler)

        return restore

    # -- plain HTTP ------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        method = scope.get("method", "GET")
        if self.ops_endpoints and path in OPS_PATHS and method in ("GET", "HEAD"):
            client = self._ops_refused(scope, path)
            if client is not None:
                text = f"forbidden: {path} is not served to {client or 'this client'}\n"
                await _respond(send, 403, b"" if method == "HEAD" else text.encode())
                return
            status, body, content_type = self._ops_answer(path, scope)
            await _respond(send, status, b"" if method == "HEAD" else body, content_type)
        elif path in self.app.http_routes:
            await self._app_http(scope, receive, send, path, method)
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        elif self.app.router.match(_raw_route_path(scope, path)) is not None:
            await _respond(send, 426, b"this path is a WebSocket endpoint\n", upgrade=True)
        else:
            await _respond(send, 404, f"no route for {path}\n".encode())

    async def _app_http(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> None:
        """Answer one of the app's own plain HTTP routes (``App.http``): its methods
        (405 with ``Allow`` for others) and its ``max_body`` (413 past it)."""
        options = self.app.http_options.get(path, HTTPRouteOptions())
        allow = options.allow
        if method not in [m.strip() for m in allow.split(",")]:
            await _respond(
                send, 405, f"{method} is not supported\n".encode(), headers=[("Allow", allow)]
            )
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > options.max_body:
                text = f"request body over {options.max_body} bytes\n"
                await _respond(send, 413, text.encode())
                return
        request = self._request(scope, path, None, method=method, body=bytes(body))
        try:
            answer: HTTPResponse = await call_maybe_async(self.app.http_routes[path], request)
        except Exception:
            _log.exception("http.handler_failed", path=path)
            await _respond(send, 500, b"internal server error\n")
            return
        data = answer.body.encode() if isinstance(answer.body, str) else answer.body
        await _respond(
            send,
            answer.status,
            b"" if method == "HEAD" else data,
            answer.content_type,
            headers=answer.headers,
        )

    def _ops_refused(self, scope: Scope, path: str) -> str | None:
        """The client address when ``ops_allow`` leaves it out (None: it may read ``path``)."""
        allow = self._ops_allow
        if allow is None:
            return None
        client = self._request(scope, path, None).client_address
        return None if client in allow else client

    def _ops_answer(self, path: str, scope: Scope) -> tuple[int, bytes, str]:
        server = self.server
        text = "text/plain; charset=utf-8"
        if server is None:
            return 503, b"wsup is not running: see docs/asgi.md (lifespan)\n", text
        if path == HEALTHZ:
            return 200, b"ok\n", text
        if path == READYZ:
            ready, why = server.readiness()
            return (200 if ready else 503), (why + "\n").encode(), text
        accept = _header(scope, b"accept")
        body, content_type = server.metrics.render_for(accept)
        return 200, body, content_type

    # -- WebSocket handshakes ------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        match: RouteMatch | None = self.app.router.match(_raw_route_path(scope, path))
        if match is None and self.fallback is not None:
            await self.fallback(scope, receive, send)
            return
        if (await receive())["type"] != "websocket.connect":
            return  # the client left before the handshake
        server = self.server
        if server is None:
            _log.error("asgi.not_running", path=path)
            text = "wsup is not running (see docs/asgi.md: lifespan)\n"
            await _answer(scope, send, plain(None, 503, text))
            return
        gate = server.handshake_gate
        started = gate.scope_opened()
        try:
            driver = await self._handshake(gate, scope, send, path, match, started, receive)
        finally:
            gate.scope_settled()
        if driver is not None:
            await driver.run()

    async def _handshake(
        self,
        gate: Handshakes,
        scope: Scope,
        send: Send,
        path: str,
        match: RouteMatch | None,
        started: float,
        receive: Receive,
    ) -> ASGIDriver | None:
        """Decide the scope's handshake as wsup's own server would (``_handshake``),
        then refuse it or accept it; the accepted connection's driver."""
        request = self._request(scope, path, match)
        decision = gate.decider.decide_scope(request, match)
        if isinstance(decision, HookCall):
            ran = decision.run()
            decision = await ran if inspect.isawaitable(ran) else ran
        if isinstance(decision, Answer):
            gate.answered(decision, request.client_address)
            await _answer(scope, send, decision.response)
            return None
        accept: Message = {
            "type": "websocket.accept",
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in decision.response.headers.raw_items()
                if k.lower() != "sec-websocket-protocol"  # the server writes "subprotocol"
            ],
        }
        if decision.subprotocol is not None:
            accept["subprotocol"] = decision.subprotocol
        try:
            await send(accept)
        except BaseException as exc:
            gate.release(request.client_address)  # admission's slot: no connection after all
            if not isinstance(exc, OSError):
                raise
            gate.failed("failed", "client gone before the accept", request.client_address, path)
            return None
        driver = ASGIDriver(receive, send)
        # A ServerProtocol that never parses: it keeps the close's state.
        gate.open_scope(decision, ServerProtocol(state=State.OPEN), started, driver)
        return driver

    def _request(
        self,
        scope: Scope,
        path: str,
        match: RouteMatch | None,
        *,
        method: str = "GET",
        body: bytes = b"",
    ) -> Request:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
        ]
        client = scope.get("client")
        remote = (str(client[0]), int(client[1])) if client else ("", 0)
        query = urllib.parse.parse_qs(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
        )
        return Request(
            path=path,
            params=match.params if match is not None else {},
            query=query,
            headers=headers,
            cookies=parse_cookies(v for k, v in headers if k.lower() == "cookie"),
            remote_address=remote,
            client_address=self._proxies.client_address(remote[0], headers),
            subprotocols=tuple(scope.get("subprotocols", ())),
            method=method,
            body=body,
        )


def _signal_safe_scheduler() -> Callable[[Callable[[], object]], None]:
    """What a signal handler may call to run a function on the event loop soon."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    loop = asyncio.get_running_loop()

    def soon(fn: Callable[[], object]) -> None:
        loop.call_soon_threadsafe(fn)

    return soon


async def _serve_without_listeners(
    server: Server, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    async def started(*, task_status: anyio.abc.TaskStatus[Server]) -> None:
        await server.serve(listen=False, task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(started)
        task_status.started()


@contextlib.asynccontextmanager
async def _forwarded_lifespan(app: ASGIApplication, scope: Scope) -> AsyncIterator[None]:
    """Run a wrapped app's ASGI lifespan: startup on entry, shutdown on exit.

    An app that does not speak the lifespan protocol (it raises or returns at
    once) is run without one, as ASGI servers do.

    Raises:
        RuntimeError: the app reported ``lifespan.startup.failed``.
    """
    inbox_send, inbox = anyio.create_memory_object_stream[Message](2)
    outbox_send, outbox = anyio.create_memory_object_stream[Message](2)

    async def run() -> None:
        with outbox_send, inbox:
            try:
                await app(scope, inbox.receive, outbox_send.send)
            except Exception as exc:
                _log.debug("asgi.fallback_lifespan_unsupported", error=repr(exc))

    async with anyio.create_task_group() as tg, inbox_send, outbox:
        tg.start_soon(run)
        await inbox_send.send({"type": "lifespan.startup"})
        try:
            reply: Message | None = await outbox.receive()
        except anyio.EndOfStream:
            reply = None
        if reply is not None and reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the wrapped app failed to start: {reply.get('message', '')}")
        try:
            yield
        finally:
            if reply is not None:
                with anyio.CancelScope(shield=True):
                    await inbox_send.send({"type": "lifespan.shutdown"})
                    with contextlib.suppress(anyio.EndOfStream):
                        await outbox.receive()


def _describe(exc: BaseException) -> str:
    """The message of ``exc``, looking inside task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc)


# -- scope helpers ----------------------------------------------------------------------------


def _route_path(scope: Scope) -> str:
    """The path below where the app is mounted (decoded), as Starlette computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"


def _raw_route_path(scope: Scope, path: str) -> str:
    """The percent-encoded form of ``path`` (wsup routes match the raw path)."""
    raw = scope.get("raw_path")
    if raw:
        text = bytes(raw).decode("latin-1").partition("?")[0]
        depth = scope.get("root_path", "").rstrip("/").count("/")
        if depth:
            text = "/" + "/".join(text.split("/")[1 + depth :])
        if urllib.parse.unquote(text) == path:
            return text
    return urllib.parse.quote(path, safe="/:@!$&'()*+,;=-._~")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(scope: Scope, send: Send, response: Response) -> None:
    """Refuse a WebSocket handshake with ``response``: as an HTTP answer where the
    server can send one (the ``websocket.http.response`` extension), else as a
    close before accept, which the server turns into HTTP 403: code 1013 (try
    again later) for a 503, 1008 (policy violation) for any other status, and the
    body's first line as the reason."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
            # The ASGI server names itself and owns the connection.
            if name.lower() not in ("server", "connection")
        ]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status_code,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
        return
    code = CloseCode.TRY_AGAIN_LATER if response.status_code == 503 else CloseCode.POLICY_VIOLATION
    reason = bytes(response.body).decode("utf-8", "replace").strip().partition("\n")[0]
    # A close reason is at most 123 bytes of UTF-8.
    reason = reason.encode()[:_MAX_REASON].decode("utf-8", "ignore")
    await send({"type": "websocket.close", "code": int(code), "reason": reason})


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    upgrade: bool = False,
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    head = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    if upgrade:
        head.append((b"upgrade", b"websocket"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
