"""The application object: routes, handshake hooks, plain HTTP routes, services.

An :class:`App` is plain configuration until a server runs it; then it also
becomes the way to reach connections from outside (``app.send`` and friends).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias, cast

import anyio

from actors import (
    ALL,
    Actor,
    ActorRef,
    Backoff,
    Delivery,
    HistorySpec,
    Intensity,
    MailboxConfig,
)
from actors._actor import _invoke

from .._constants import OPS_PATHS, CloseCode, sendable_close_code
from .._exceptions import ConnectionClosed
from ..tree._tree import ChildSpec, SupervisorSpec
from ._config import ServerConfig
from ._limits import InboundPolicy, Rate
from ._outbound import SlowConsumerPolicy, wire_message
from ._resume import Resume
from ._routing import Router

if TYPE_CHECKING:
    from ._connection import Connection
    from ._server import Server

__all__ = [
    "Accept",
    "App",
    "Handler",
    "HandshakeHook",
    "HTTPResponse",
    "Reject",
    "Request",
    "RouteOptions",
]


@dataclass(frozen=True, slots=True)
class Request:
    """What the server knows of a request when it decides whether to accept it.

    Attributes:
        path: the request path, without the query string.
        params: route parameters (``/chat/{room}`` → ``{"room": ...}``), URL-decoded.
        query: query parameters, every value of each.
        headers: the request headers, in order, as ``(name, value)`` pairs.
        cookies: cookies sent by the client.
        remote_address: the peer's ``(host, port)`` as the socket sees it.
        client_address: the real client IP (behind trusted proxies only, the
            forwarded one; otherwise the peer's).
        subprotocols: subprotocols the client offered, in its order.
        method: the HTTP method (``GET`` for every WebSocket handshake).
        body: the request body (plain HTTP routes that take one; else empty).
    """

    path: str
    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    headers: Sequence[tuple[str, str]]
    cookies: Mapping[str, str]
    remote_address: tuple[str, int]
    client_address: str
    subprotocols: tuple[str, ...] = ()
    method: str = "GET"
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or ``default``."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return default

    def query_param(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of query parameter ``name``, or ``default``."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True, slots=True)
class Accept:
    """A handshake hook's "yes".

    Attributes:
        headers: extra response headers.
        subprotocol: the subprotocol to confirm; must be one the client offered.
        values: handed to the connection actor as ``self.values``.
    """

    headers: Sequence[tuple[str, str]] = ()
    subprotocol: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reject:
    """A handshake hook's "no": an HTTP response instead of the upgrade.

    Attributes:
        status: the HTTP status (4xx or 5xx).
        body: a short text body telling the client why.
        headers: extra response headers.
    """

    status: int = 403
    body: str = ""
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"a rejection needs a 4xx or 5xx status, got {self.status}")


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """The answer of a plain HTTP route.

    Attributes:
        body: the body (``str`` is sent as UTF-8).
        status: the HTTP status.
        content_type: the ``Content-Type``.
        headers: extra headers.
    """

    body: str | bytes = b""
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class HTTPRouteOptions:
    """What a plain HTTP route accepts.

    Attributes:
        methods: the methods it answers (``HEAD`` comes with ``GET``).
        max_body: the largest request body, in bytes (413 above it).
    """

    methods: tuple[str, ...] = ("GET",)
    max_body: int = 64 * 1024

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("an HTTP route needs at least one method")
        for method in self.methods:
            if not method.isascii() or not method.isalpha():
                raise ValueError(f"not an HTTP method: {method!r}")
        if self.max_body < 0:
            raise ValueError("max_body must be >= 0 bytes")

    @property
    def allow(self) -> str:
        """The ``Allow`` header: its methods, with ``HEAD`` when it takes ``GET``."""
        methods = list(self.methods)
        if "GET" in methods and "HEAD" not in methods:
            methods.insert(methods.index("GET") + 1, "HEAD")
        return ", ".join(methods)


HandshakeResult: TypeAlias = Accept | Reject | None
HandshakeHook: TypeAlias = Callable[[Request], HandshakeResult | Awaitable[HandshakeResult]]
"""A function (sync or async) that sees the :class:`Request` and returns
:class:`Accept`, :class:`Reject`, or ``None`` (accept with defaults)."""
HTTPHandler: TypeAlias = Callable[[Request], HTTPResponse | Awaitable[HTTPResponse]]


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; await the result if it is awaitable. Plain functions run on the loop
    (hooks must be quick) — use ``anyio.to_thread`` inside them for blocking work."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class Handler(Actor):
    """The behaviour of a connection actor. Subclass it and override the ``on_*`` hooks.

    Each hook may be ``async def`` or plain ``def`` (runs in a worker thread).
    Set before ``on_connect``:

    Attributes:
        conn: the connection (``send``, ``close``, request details).
        app: the application (its ``state``, and ``send``/``publish`` to any address).
        params: the route parameters.
        values: what the handshake hook put in ``Accept.values``.
    """

    conn: Connection
    app: App
    params: Mapping[str, str]
    values: Mapping[str, Any]

    _on_message_async: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Looked up once per class, not once per message (see receive).
        cls._on_message_async = inspect.iscoroutinefunction(cls.on_message)

    async def on_connect(self) -> None:
        """Called when the connection opens (and again on a restart)."""

    async def on_message(self, message: str | bytes) -> None:
        """Called for each message from the client (``str`` for text, ``bytes`` for binary)."""

    async def on_receive(self, message: Any) -> None:
        """Called for each message other actors send to this connection's addresses.

        By default it is forwarded to the client: ``str`` as text, ``bytes`` as
        binary, anything else as JSON text. A message sent to an address with
        history arrives as an :class:`actors.Record`; by default its ``message``
        is forwarded, without its position.
        """
        await self.conn.send(wire_message(message))

    async def on_close(self, code: int, reason: str) -> None:
        """Called once when the connection ends, with the close code and reason."""

    async def on_resume(self) -> None:
        """Called when the client resumes this connection with its token (routes with
        ``resume``), on this node or through another one (see ``docs/resume.md``).

        ``on_connect`` does not run again: the actor, its state and its groups
        stayed. By the time it runs, what waited for the client is queued (and
        the ``wsup.resume`` announcement ahead of it); what it sends comes after.
        It runs in its turn in the mailbox, like a message.
        """

    # -- the actor hooks, mapped onto the connection hooks ----------------------------

    async def on_start(self) -> None:
        """Run ``on_connect``: a connection actor starts when its connection opens."""
        if type(self).on_connect is not Handler.on_connect:  # the default does nothing
            await self._hook(self.on_connect)

    def _receiver(self) -> Callable[[Any], Any]:
        return self._dispatch

    async def _dispatch(self, message: Any) -> Any:
        """Dispatch client messages to ``on_message`` and the rest to ``on_receive``."""
        if message.__class__ is FromClient:
            if self._on_message_async:
                # _hook inlined for the most frequent call of all: two calls fewer.
                try:
                    return await self.on_message(message.data)
                except ConnectionClosed as exc:
                    self._closed_here(exc)
                    return None
            return await self._hook(self.on_message, message.data)
        if message is RESUMED:
            return await self._hook(self.on_resume)
        return await self._hook(self.on_receive, message)

    async def on_stop(self) -> None:
        """Run ``on_close``: a connection actor stops when its connection ends."""
        if type(self).on_close is not Handler.on_close:  # the default does nothing
            await self._hook(self.on_close, *self.conn.close_info())

    async def _hook(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await _invoke(fn, *args)  # plain ``def`` hooks run in a worker thread
        except ConnectionClosed as exc:
            self._closed_here(exc)
            return None

    def _closed_here(self, exc: ConnectionClosed) -> None:
        """Swallow ``exc`` if it is about this connection, else re-raise it.

        A send on this connection after it started closing is the end of the
        connection, not a crash to restart; the actor drains once it is closed.
        """
        if exc.address != self.conn.address:
            raise exc


class _Resumed:
    """The marker a resumed connection puts in its actor's mailbox (``on_resume``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESUMED"


RESUMED: Final = _Resumed()


class FromClient:
    """A message from the client, as it sits in the connection's mailbox."""

    __slots__ = ("data",)

    def __init__(self, data: str | bytes) -> None:
        self.data = data


ConnectionFunction: TypeAlias = Callable[["Connection"], Awaitable[None]]


class _FunctionHandler(Handler):
    """Adapts a websockets-style ``async def handler(conn)`` to a connection actor."""

    function: ConnectionFunction

    async def on_connect(self) -> None:
        await self.function(self.conn)
        self.context.stop()


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """Per-route settings.

    Attributes:
        handler: the :class:`Handler` subclass (or factory) for connections on this route.
        kwargs: keyword arguments for the handler's constructor.
        hook: a handshake hook for this route (after the app-wide one).
        subprotocols: subprotocols this route speaks, in order of preference.
        mailbox: the connection actor's mailbox (inbound messages and messages
            from other actors). Under ``block``, a full mailbox stops reading
            from the socket: TCP backpressure on the client.
        outbound_limit: the outbound buffer's high-water mark, in bytes.
        slow_consumer: what to do when the client does not keep up.
        slow_consumer_code: the close code of the ``disconnect`` policy.
        intensity: restarts allowed before the connection closes with 1011.
        backoff: delay between restarts.
        inbound_rate: the most messages a second a client may send, with bursts
            (``Rate(per_second, burst)``); ``None``: no limit.
        inbound_byte_rate: the same in bytes of message payload.
        inbound_policy: over either rate, ``delay`` stops reading from the socket
            until the rate allows more (TCP backpressure on that client alone);
            ``close`` closes with 1008.
        resume: keep a connection's actor for a while when its socket breaks,
            for its client to come back to (see ``docs/resume.md``); ``None``:
            a connection ends with its socket.
    """

    handler: Callable[..., Handler]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    hook: HandshakeHook | None = None
    subprotocols: tuple[str, ...] = ()
    mailbox: MailboxConfig = field(default_factory=lambda: MailboxConfig(capacity=256))
    outbound_limit: int = 1 << 20
    slow_consumer: SlowConsumerPolicy = SlowConsumerPolicy.DROP_OLDEST
    slow_consumer_code: int = CloseCode.TRY_AGAIN_LATER
    intensity: Intensity = field(default_factory=lambda: Intensity(3, 10.0))
    backoff: Backoff = field(default_factory=lambda: Backoff(minimum=0.0, maximum=0.0))
    inbound_rate: Rate | None = None
    inbound_byte_rate: Rate | None = None
    inbound_policy: InboundPolicy = InboundPolicy.DELAY
    resume: Resume | None = None

    def __post_init__(self) -> None:
        if not callable(self.handler):
            raise TypeError(f"a route handler must be a Handler subclass, got {self.handler!r}")
        if self.outbound_limit < 1:
            raise ValueError(f"outbound limit must be >= 1 byte, got {self.outbound_limit}")
        code = self.slow_consumer_code
        if not sendable_close_code(code):
            raise ValueError(
                f"slow_consumer_code {code} cannot be sent in a close frame: "
                "use 1008, 1013 or an application code 3000-4999"
            )
        object.__setattr__(self, "slow_consumer", SlowConsumerPolicy(self.slow_consumer))
        object.__setattr__(self, "inbound_policy", InboundPolicy(self.inbound_policy))
        for name in ("inbound_rate", "inbound_byte_rate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Rate):
                raise TypeError(f"{name} must be a Rate or None, got {value!r}")
        if self.resume is not None and not isinstance(self.resume, Resume):
            raise TypeError(f"resume must be a Resume or None, got {self.resume!r}")


class App:
    """A wsup application: what to serve, and a handle on it while it runs.

    ::

        app = App()

        @app.route("/echo")
        class Echo(Handler):
            async def on_message(self, message):
                await self.conn.send(message)

    Args:
        config: server settings (limits, timeouts, listen addresses); the CLI
            overrides host, port and drain timeout.
        state: anything the handlers should share (``self.app.state``).
        lifespan: a function that takes the app and returns an async context
            manager (an ``@asynccontextmanager``, as in Starlette): entered
            once the services are up and the ``on_startup`` hooks have run,
            before the first connection is accepted; exited after the last
            connection closed, before the ``on_shutdown`` hooks. If entering
            raises, the server does not serve (:class:`StartupError`).

    Attributes:
        on_startup: functions ``f(app)``, plain or ``async``, run in order after
            the services started and before the listeners accept; one that
            raises stops the start (:class:`StartupError`).
        on_shutdown: functions ``f(app)``, plain or ``async``, run in order after
            the drain, once every connection is closed; they run even when the
            shutdown was forced, and are not cancelled.
    """

    def __init__(
        self,
        *,
        config: ServerConfig | None = None,
        state: Any = None,
        lifespan: Callable[[App], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.state = state
        self.lifespan = lifespan
        self.router = Router()
        self.http_routes: dict[str, HTTPHandler] = {}
        #: Per HTTP route: the methods it takes and its largest body.
        self.http_options: dict[str, HTTPRouteOptions] = {}
        self.hooks: list[HandshakeHook] = []
        #: Services and subtrees, started in order under the root supervisor.
        self.services: list[ChildSpec | SupervisorSpec] = []
        self.on_startup: list[Callable[[App], Any]] = []
        self.on_shutdown: list[Callable[[App], Any]] = []
        #: The addresses that keep a history (see :meth:`history`).
        self.histories: list[HistorySpec] = []
        self.presence_patterns: list[str] = []
        self.server: Server | None = None

    # -- configuration -----------------------------------------------------------------

    def add_route(
        self, pattern: str, handler: Callable[..., Handler] | ConnectionFunction, **options: Any
    ) -> None:
        """Serve WebSocket connections on ``pattern`` with ``handler``.

        ``handler`` is a :class:`Handler` subclass (constructor keyword
        arguments go in ``kwargs=``), or a websockets-style
        ``async def handler(conn)``.

        Raises:
            ValueError: the pattern is invalid or already routed.
        """
        factory: Callable[..., Handler]
        if inspect.iscoroutinefunction(handler):
            function = handler
            factory = type(
                f"FunctionHandler[{handler.__name__}]",
                (_FunctionHandler,),
                {"function": staticmethod(function)},
            )
        else:
            factory = cast(Callable[..., Handler], handler)
        self.router.add(pattern, RouteOptions(handler=factory, **options))

    def route(self, pattern: str, **options: Any) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add_route`."""

        def register(handler: Any) -> Any:
            self.add_route(pattern, handler, **options)
            return handler

        return register

    def handshake(self, hook: HandshakeHook) -> HandshakeHook:
        """Register an app-wide handshake hook (decorator). Hooks run in order;
        the first :class:`Reject` wins; ``Accept`` headers and values accumulate."""
        self.hooks.append(hook)
        return hook

    def http(
        self, path: str, *, methods: Sequence[str] = ("GET",), max_body: int = 64 * 1024
    ) -> Callable[[HTTPHandler], HTTPHandler]:
        """Answer plain HTTP requests for ``path`` on the server port (decorator).

        For a few pages beside the WebSockets (a status page, the chat demo's
        HTML) and for webhooks (``methods=("POST",)``: the handler reads
        ``request.method`` and ``request.body``). ``HEAD`` is answered for a
        route that takes ``GET``; other methods get 405 with ``Allow``. A body
        must come with ``Content-Length`` (411 otherwise) and hold at most
        ``max_body`` bytes (413 otherwise, before it is read). For a full HTTP
        application, serve wsup's routes from an ASGI app (FastAPI,
        Starlette, Django Channels) with :class:`supervisor.asgi.ASGIApp`.

        Raises:
            ValueError: ``path`` is reserved (``/healthz``, ``/readyz``, ``/metrics``),
                already taken, or a method or ``max_body`` is invalid. Paths under
                ``/api/`` are the server API's while it is on (an API key is set).
        """
        if path in OPS_PATHS:
            raise ValueError(f"{path} is served by wsup itself")
        if path in self.http_routes:
            raise ValueError(f"an HTTP route for {path} exists already")
        options = HTTPRouteOptions(tuple(m.upper() for m in methods), max_body)

        def register(handler: HTTPHandler) -> HTTPHandler:
            self.http_routes[path] = handler
            self.http_options[path] = options
            return handler

        return register

    def history(
        self, pattern: str, *, size: int = 1000, ttl: float = 300.0, meta_ttl: float = 7 * 86400.0
    ) -> HistorySpec:
        """Keep a history for every address that matches ``pattern`` (``room:*``).

        Each message sent to such an address gets the next offset of that
        address within an epoch, and its members receive it as an
        :class:`actors.Record`; a reconnecting client's handler gets what it
        missed with ``self.context.recover(address, since)``. Kept in this
        process, or in Redis Streams with the Redis backplane (shared by every
        node). See the history guide in the docs.

        Args:
            pattern: a shell-style pattern matched against the whole address.
            size: the most messages kept per address.
            ttl: seconds a message is kept.
            meta_ttl: seconds an address's epoch and last offset outlive its last message.

        Returns:
            The spec it added.

        Raises:
            ValueError: an empty pattern or a bound out of range.
        """
        spec = HistorySpec(pattern, size, ttl, meta_ttl)
        self.histories.append(spec)
        return spec

    def presence_events(self, pattern: str) -> None:
        """Deliver join and leave events to every name or group that matches
        ``pattern`` (``room:*``), on every node.

        When an actor joins or leaves such an address (or joins it again with
        other ``meta``), each member of the address, the joining actor
        included, receives ``{"type": "presence", "address": A, "event":
        "join" | "leave", "member": M, "meta": META}`` in ``on_receive`` (by
        default forwarded to the client as JSON). Members of a node that died
        leave within about 1.5 times the backplane's ``node_ttl``. Addresses
        that do not match pay nothing. See the presence guide in the docs.

        Raises:
            ValueError: an empty pattern, or ``"all"``.
        """
        if not pattern or pattern == ALL:
            raise ValueError(f"presence events need a pattern of names or groups, not {pattern!r}")
        self.presence_patterns.append(pattern)

    def service(
        self,
        factory: Callable[[], Actor],
        *,
        names: tuple[str, ...] = (),
        critical: bool = False,
        **options: Any,
    ) -> ChildSpec:
        """Run a service actor (not a connection) under the app's root supervisor,
        started before the listeners open and stopped after every connection.

        Args:
            factory: makes its behaviour (a class or a zero-argument callable).
            names: names it answers to.
            critical: when it exceeds its restart intensity, the process stops
                (``/readyz`` 503, drain, ``wsup serve`` exits with status 3);
                otherwise only this service stops, counted in
                ``wsup_supervisor_escalations_total``.
            **options: further :class:`ChildSpec` fields (``restart``,
                ``intensity``, ``backoff``, ``mailbox``, ``singleton``...).

        Returns:
            The spec it added.
        """
        spec = ChildSpec(factory, names=names, critical=critical, **options)
        self.services.append(spec)
        return spec

    def supervise(self, spec: SupervisorSpec) -> SupervisorSpec:
        """Run a subtree (a :class:`SupervisorSpec` with its own strategy, intensity,
        restart type, children and ``critical`` flag) under the root supervisor,
        started with the services, in declaration order.

        Returns:
            ``spec``.
        """
        self.services.append(spec)
        return spec

    # -- reaching actors while running ---------------------------------------------------

    def _running(self) -> Server:
        if self.server is None:
            raise RuntimeError("the app is not running: start it with wsup serve or serve()")
        return self.server

    async def send(self, address: str, message: Any) -> Delivery:
        """Send ``message`` to every actor at ``address`` (``conn:…``, a name, a group).

        Returns:
            What it reached: ``local`` actors on this node, and whether other
            nodes were reached (``remote``); false when it reached nobody (then a
            dead letter).
        """
        return await self._running().runtime.send(address, message)

    async def publish(self, group: str, message: Any) -> Delivery:
        """Send ``message`` to every member of ``group``; an empty group is no dead letter.

        Returns:
            What it reached (see :meth:`send`).
        """
        return await self._running().runtime.publish(group, message)

    async def broadcast(self, message: Any) -> Delivery:
        """Send ``message`` to every connection.

        Returns:
            What it reached (see :meth:`send`).
        """
        return await self._running().runtime.broadcast(message)

    async def ask(self, address: str, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Ask the one actor at ``address``; see :meth:`actors.Runtime.ask`."""
        return await self._running().runtime.ask(address, message, timeout=timeout)

    async def spawn(
        self, factory: Callable[[], Actor], *, names: tuple[str, ...] = (), **options: Any
    ) -> ActorRef:
        """Start a service actor under the app's supervisor while the app runs.

        Returns:
            Its reference.
        """
        return await self._running().system.spawn(factory, names=names, **options)

    # -- from other threads ------------------------------------------------------------

    def _from_thread(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        server = self._running()
        token = server.loop_token
        if token is None:
            raise RuntimeError("the server has not finished starting")
        if threading.get_ident() == server.loop_thread:
            # Blocking the loop's own thread on the loop would deadlock.
            raise RuntimeError(
                "a *_threadsafe call on the event loop's thread: use await app.send() etc."
            )
        return anyio.from_thread.run(fn, *args, token=token)

    def send_threadsafe(self, address: str, message: Any) -> Delivery:
        """:meth:`send` from a thread that is not the server's event loop.

        For synchronous code: a web framework's request handler, a worker
        thread. Blocks until the message is queued (not until it is handled).

        Returns:
            What it reached (see :meth:`send`).

        Raises:
            RuntimeError: the app is not running, or this *is* the event loop thread.
        """
        delivery: Delivery = self._from_thread(self.send, address, message)
        return delivery

    def publish_threadsafe(self, group: str, message: Any) -> Delivery:
        """:meth:`publish` from another thread; see :meth:`send_threadsafe`."""
        delivery: Delivery = self._from_thread(self.publish, group, message)
        return delivery

    def broadcast_threadsafe(self, message: Any) -> Delivery:
        """:meth:`broadcast` from another thread; see :meth:`send_threadsafe`."""
        delivery: Delivery = self._from_thread(self.broadcast, message)
        return delivery

    def ask_threadsafe(self, address: str, message: Any, *, timeout: float | None = 5.0) -> Any:
        """:meth:`ask` from another thread; blocks until the reply (or the timeout)."""

        async def ask() -> Any:
            return await self.ask(address, message, timeout=timeout)

        return self._from_thread(ask)
