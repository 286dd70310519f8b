"""The handshake decision, written once for every driver: a request in, an answer out.

Theory of operation: a driver (the stream path in ``_server``: trio, TLS; the
callback path in ``_aio``: asyncio transports) reads bytes and feeds them to a
:class:`RequestReader`, which yields an :class:`HTTPRequest` once the request
head is complete, or an :class:`Answer` when the bytes are not a valid request.
:meth:`Handshake.decide` then decides, in this order: the metrics port serves
only the operational paths; a repeated singleton header is a 400; methods other
than GET and HEAD get 405; HEAD gets the status a GET would; ``/healthz``,
``/readyz`` and ``/metrics``; the app's plain HTTP routes; 404 for a path no
WebSocket route matches; 503 while not accepting or at ``max_connections``;
403 for a refused ``Origin``; the WebSocket checks of websockets'
``ServerProtocol.accept`` (426, 400); last the app's handshake hooks. Its
result is one of three:

* an :class:`Answer`: an HTTP response to write before closing the socket,
  with what to count and log about it (:attr:`Answer.outcome`);
* an :class:`Upgrade`: the route, the request as handlers see it, the hooks'
  values and the 101 response; the driver writes it through the protocol
  and hands the socket to a new connection;
* a :class:`HookCall`: user functions (handshake hooks, an HTTP route's
  handler) still have to run. :meth:`HookCall.run` calls them and returns the
  final :class:`Answer` or :class:`Upgrade` at once when each returns a plain
  value, or an awaitable of it when one returns an awaitable (``async def``):
  only then does a driver need to wait, and the callback path a task.

Nothing here reads a socket, a clock or the event loop: what it needs from
the server at decision time comes through :class:`HandshakeHost` (readiness,
whether it accepts, how many connections are open, the metrics exposition).
The ``Date`` header is added by the driver when it writes (:func:`answer_bytes`).
It only logs the exceptions of user code (a hook or HTTP handler that raised),
where the traceback is.

A request body is not read yet: :attr:`HTTPRequest.body` is where a reader that
accepts ``Content-Length`` bodies for plain HTTP requests puts it.
"""

from __future__ import annotations

import http
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

import structlog
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request as WSRequest
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ._app import Accept, App, HTTPResponse, Reject, Request, RouteOptions
from ._config import ServerConfig
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

__all__ = [
    "OPS_PATHS",
    "Answer",
    "Decision",
    "HTTPRequest",
    "Handshake",
    "HandshakeHost",
    "HookCall",
    "Outcome",
    "RequestReader",
    "Upgrade",
    "answer_bytes",
    "plain",
    "remote_pair",
]

_log = structlog.get_logger("wsup.server")

#: The operational endpoints, answered by the server itself (and alone on the metrics port).
OPS_PATHS: Final[frozenset[str]] = frozenset(("/healthz", "/readyz", "/metrics"))


class HandshakeHost(Protocol):
    """What a handshake decision asks of the server, at the moment it decides."""

    @property
    def accepting(self) -> bool:
        """Whether new WebSocket connections are accepted (False once draining)."""

    @property
    def draining(self) -> bool:
        """Whether the server is draining (says why a handshake is refused)."""

    def readiness(self) -> tuple[bool, str]:
        """Whether this node should get new connections, and why not (``/readyz``)."""

    def open_connections(self) -> int:
        """How many WebSocket connections are open (for ``max_connections``)."""

    def render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type for this ``Accept`` header."""


@dataclass(slots=True)
class HTTPRequest:
    """A parsed request head, as the decision reads it.

    Attributes:
        method: the request method (``GET``).
        target: the request target as sent (``/chat/x?user=a``).
        path: the target's path, still percent-encoded.
        query: the target's query parameters, every value of each.
        headers: the headers (look them up with the ``_request`` helpers:
            a repeated header makes ``Headers.__getitem__`` raise).
        body: the request body (empty: bodies are not read yet).
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an :class:`Answer` means for ``wsup_handshakes_total`` and the log.

    Attributes:
        result: ``rejected`` (the server or the app turned the client away:
            ``handshake.rejected``) or ``failed``/``timeout`` (not a usable
            handshake: ``handshake.failed``).
        reason: for ``rejected``, the ``reason`` label (``no_route``,
            ``not_accepting``, ``max_connections``, ``origin``, ``hook``); for
            the others, the error in words.
        path: the request path, when there was a request.
        client: the client address, when the hooks saw one (else the peer's).
    """

    result: str
    reason: str
    path: str | None = None
    client: str | None = None


@dataclass(slots=True)
class Answer:
    """An HTTP answer: write it, then close the socket (lingering).

    Attributes:
        response: the status, headers and body (no ``Date``: see :func:`answer_bytes`).
        outcome: what to count and log; ``None`` for an answer that is not a
            refused handshake (``/healthz``, an HTTP route, a 405...).
    """

    response: Response
    outcome: Outcome | None = None

    @property
    def status(self) -> int:
        """The HTTP status."""
        return self.response.status_code


@dataclass(slots=True)
class Upgrade:
    """An accepted WebSocket handshake: send :attr:`response`, then open a connection.

    Attributes:
        route: the matched route's settings.
        pattern: the matched route's pattern (for logs).
        request: the request as hooks and handlers see it.
        subprotocol: the negotiated subprotocol, if any.
        values: what the hooks put in ``Accept.values``.
        response: the 101 response, with the hooks' headers.
    """

    route: RouteOptions
    pattern: str
    request: Request
    subprotocol: str | None
    values: Mapping[str, Any]
    response: Response


Decision: TypeAlias = "Answer | Upgrade"


def plain(
    server_header: str,
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A complete non-101 answer: the body, ``Connection: close`` and no caching."""
    data = body.encode() if isinstance(body, str) else body
    all_headers = Headers(
        [
            ("Server", server_header),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    for name, value in headers:
        all_headers[name] = value
    return Response(status, http.HTTPStatus(status).phrase, all_headers, data)


def answer_bytes(response: Response, date: str) -> bytes:
    """The bytes of an answer, with its ``Date`` header (``date``, read by the driver)."""
    if "Date" not in response.headers:
        response.headers = Headers([("Date", date), *response.headers.raw_items()])
    return response.serialize()


def remote_pair(peer: Any) -> tuple[str, int]:
    """The peer's ``(host, port)`` from what a socket reports (a UNIX socket: a path)."""
    if isinstance(peer, tuple):
        return str(peer[0]), int(peer[1])
    return ("" if peer is None else str(peer)), 0


class RequestReader:
    """Collects a request head from the bytes a driver reads.

    Backed by the ``ServerProtocol`` that will carry the connection: bytes
    past the request (frames a client sent early) stay in its buffer for the
    connection. One per socket.
    """

    __slots__ = ("_protocol", "_server_header")

    def __init__(self, protocol: ServerProtocol, server_header: str) -> None:
        self._protocol = protocol
        self._server_header = server_header

    def feed(self, data: bytes) -> HTTPRequest | Answer | None:
        """Take ``data``; the request once its head is complete, an :class:`Answer`
        if the bytes are not a valid request, else None (need more)."""
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            ws_request = events[0]
            assert isinstance(ws_request, WSRequest)
            path, query = split_target(ws_request.path)
            return HTTPRequest(ws_request.method, ws_request.path, path, query, ws_request.headers)
        if protocol.handshake_exc is not None:
            return self._invalid(protocol.handshake_exc)
        return None

    def _invalid(self, error: Exception) -> Answer:
        cause = error.__cause__ if isinstance(error, InvalidMessage) else None
        text = str(cause or error)
        name = type(error).__name__
        if name == "RequestLineTooLong":
            status, body = 414, f"request line too long: {error}\n"
        elif name in ("HeaderLineTooLong", "TooManyHeaders"):
            status, body = 431, f"request header fields too large: {error}\n"
        elif cause is not None and "unsupported request body" in str(cause):
            # A request with a body (POST, PUT...): request bodies are not read.
            response = plain(
                self._server_header,
                405,
                "requests with a body are not supported: use GET\n",
                headers=[("Allow", "GET, HEAD")],
            )
            return Answer(response, Outcome("failed", f"invalid HTTP request: {text}"))
        else:
            status, body = 400, "bad request: not a valid HTTP/1.1 request\n"
        return Answer(
            plain(self._server_header, status, body),
            Outcome("failed", f"invalid HTTP request: {text}"),
        )


class Handshake:
    """Decides every handshake of one server. No I/O: see the module docstring.

    Args:
        app: the routes, HTTP routes and hooks (read at each decision).
        config: ``max_connections``, ``origins`` and ``trusted_proxies``.
        host: the server, as far as a decision needs it.
        server_header: the ``Server`` header of every answer (``wsup/1.2``).

    Raises:
        ValueError: an entry of ``config.origins`` or ``config.trusted_proxies``
            is malformed (at construction, so a typo stops the server at start-up).
    """

    __slots__ = ("_app", "_host", "_max_connections", "_origins", "_proxies", "server_header")

    def __init__(
        self, app: App, config: ServerConfig, host: HandshakeHost, server_header: str
    ) -> None:
        self._app = app
        self._host = host
        self._max_connections = config.max_connections
        self._origins = OriginPolicy(config.origins)
        self._proxies = TrustedProxies(config.trusted_proxies)
        self.server_header = server_header

    # -- answers without a request ---------------------------------------------------------

    def plain(
        self,
        status: int,
        body: str | bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """A complete non-101 answer (see :func:`plain`)."""
        return plain(self.server_header, status, body, content_type, headers)

    def timed_out(self) -> Answer:
        """The answer when no request arrived within ``handshake_timeout``."""
        return Answer(
            self.plain(408, "handshake timed out\n"),
            Outcome("timeout", "no request before the handshake timeout"),
        )

    # -- the decision ----------------------------------------------------------------------

    def decide(
        self,
        request: HTTPRequest,
        protocol: ServerProtocol,
        remote: tuple[str, int],
        *,
        ops_only: bool = False,
    ) -> Answer | Upgrade | HookCall:
        """Decide what to do with ``request``.

        Args:
            request: the parsed request.
            protocol: the WebSocket protocol that read it; on an upgrade it
                negotiates extensions and the subprotocol, and later carries
                the connection.
            remote: the peer's ``(host, port)``.
            ops_only: the request came in on the metrics port.

        Returns:
            The answer, the upgrade, or the hooks still to run.
        """
        path = request.path
        headers = request.headers
        if ops_only and path not in OPS_PATHS:
            return Answer(self.plain(404, "this port serves /metrics, /healthz, /readyz\n"))
        repeated = repeated_singleton(headers)
        if repeated is not None:
            return Answer(
                self.plain(400, f"bad request: more than one {repeated} header\n"),
                Outcome("failed", f"more than one {repeated} header", path),
            )
        method = request.method
        if method != "GET":
            if method == "HEAD":
                return Answer(self._head(path))
            # Request bodies are never read: only GET (and HEAD, for probes) make sense.
            return Answer(
                self.plain(
                    405, f"{method} is not supported: use GET\n", headers=[("Allow", "GET, HEAD")]
                )
            )
        if path in OPS_PATHS:
            return Answer(self._operational(path, headers))
        app = self._app
        match = app.router.match(path)
        upgrade = "upgrade" in header_tokens(headers, "Connection")
        if match is None or not upgrade:
            handler = app.http_routes.get(path)
            if handler is not None and not upgrade:
                return _HTTPCall(self, self._request(request, remote, {}), (handler,))
            if match is None:
                return self._refuse(404, f"no route for {path}\n", "no_route", path)
        route: RouteOptions = match.target  # type: ignore[assignment]
        # During the readiness grace /readyz already says 503 but handshakes are
        # still accepted: load balancers are still sending traffic our way.
        host = self._host
        if not host.accepting:
            why = "server is shutting down" if host.draining else "not accepting new connections"
            return self._refuse(503, why + "\n", "not_accepting", path)
        if host.open_connections() >= self._max_connections:
            return self._refuse(503, "too many connections\n", "max_connections", path)
        origins = self._origins
        if not origins.allows_all and not origins.allows(single_header(headers, "Origin")):
            return self._refuse(403, "origin not allowed\n", "origin", path)
        protocol.available_subprotocols = [Subprotocol(p) for p in route.subprotocols] or None
        response = protocol.accept(WSRequest(request.target, headers))
        if response.status_code != 101:
            # Not a valid WebSocket handshake (426 for a plain GET, 400 for a bad key...).
            error = protocol.handshake_exc
            return Answer(
                response,
                Outcome(
                    "failed", f"{response.status_code}: {error or response.reason_phrase}", path
                ),
            )
        user_request = self._request(request, remote, match.params)
        pending = _UpgradeCall(
            self, user_request, route, match.route.pattern, protocol.subprotocol, response
        )
        hooks = app.hooks
        if route.hook is not None:
            pending.hooks = (*hooks, route.hook)
        elif hooks:
            pending.hooks = tuple(hooks)
        else:
            return pending.conclude()  # no hooks: nothing to call
        return pending

    def _refuse(self, status: int, body: str, reason: str, path: str) -> Answer:
        return Answer(self.plain(status, body), Outcome("rejected", reason, path))

    def _operational(self, path: str, headers: Headers) -> Response:
        if path == "/healthz":
            return self.plain(200, "ok\n")
        if path == "/readyz":
            ready, why = self._host.readiness()
            return self.plain(200 if ready else 503, why + "\n")
        body, content_type = self._host.render_metrics(header_list(headers, "Accept"))
        return self.plain(200, body, content_type)

    def _head(self, path: str) -> Response:
        """The answer to HEAD: the status and headers of the GET, without its body."""
        if path == "/readyz":
            status = 200 if self._host.readiness()[0] else 503
        elif path in OPS_PATHS or path in self._app.http_routes:
            status = 200
        elif self._app.router.match(path) is not None:
            status = 426  # a WebSocket route: needs GET with Upgrade
        else:
            status = 404
        response = self.plain(status, b"")
        del response.headers["Content-Length"]
        return response

    def _request(
        self, request: HTTPRequest, remote: tuple[str, int], params: Mapping[str, str]
    ) -> Request:
        headers = request.headers
        raw = list(headers.raw_items())
        offered: list[str] = []
        for value in headers.get_all("Sec-WebSocket-Protocol"):
            offered.extend(p.strip() for p in value.split(",") if p.strip())
        return Request(
            path=request.path,
            params=params,
            query=request.query,
            headers=raw,
            cookies=parse_cookies(headers.get_all("Cookie")),
            remote_address=remote,
            client_address=self._proxies.client_address(remote[0], raw),
            subprotocols=tuple(offered),
        )


class HookCall:
    """User functions still to run before the answer is known: see :meth:`run`.

    Attributes:
        request: what each of them is called with.
        hooks: the functions, in order.
    """

    __slots__ = ("_handshake", "hooks", "request")

    def __init__(
        self, handshake: Handshake, request: Request, hooks: Sequence[Callable[[Request], Any]]
    ) -> None:
        self._handshake = handshake
        self.request = request
        self.hooks = tuple(hooks)

    def run(self) -> Decision | Coroutine[Any, Any, Decision]:
        """Call the functions in order; the decision, or an awaitable of it.

        The decision comes back at once when every function returned a plain
        value; from the first that returns an awaitable on, the rest runs in
        the coroutine returned (to be awaited, on the callback path in a task).
        A function that raises is logged and answers 500.
        """
        hooks = self.hooks
        for index, hook in enumerate(hooks):
            try:
                result = hook(self.request)
            except Exception:
                return self._raised()
            if inspect.isawaitable(result):
                return self._run_from(index, result)
            answer = self._take(result)
            if answer is not None:
                return answer
        return self.conclude()

    async def _run_from(self, index: int, pending: Awaitable[Any]) -> Decision:
        try:
            result = await pending
        except Exception:
            return self._raised()
        answer = self._take(result)
        if answer is not None:
            return answer
        for hook in self.hooks[index + 1 :]:
            try:
                result = hook(self.request)
                if inspect.isawaitable(result):
                    result = await result
            except Exception:
                return self._raised()
            answer = self._take(result)
            if answer is not None:
                return answer
        return self.conclude()

    def _take(self, result: Any) -> Answer | None:
        """Take one function's result; an answer if it ends the handshake."""
        raise NotImplementedError

    def _raised(self) -> Answer:
        raise NotImplementedError

    def conclude(self) -> Decision:
        """The decision once every function ran without ending the handshake."""
        raise NotImplementedError


class _HTTPCall(HookCall):
    """An HTTP route's handler: its :class:`HTTPResponse` is the answer."""

    __slots__ = ()

    def _take(self, result: Any) -> Answer | None:
        if not isinstance(result, HTTPResponse):
            _log.error(
                "http.handler_failed",
                path=self.request.path,
                error=f"the handler returned {type(result).__name__}, not an HTTPResponse",
            )
            return Answer(self._handshake.plain(500, "internal server error\n"))
        try:
            response = self._handshake.plain(
                result.status, result.body, result.content_type, result.headers
            )
        except ValueError:  # not an HTTP status
            _log.exception("http.handler_failed", path=self.request.path)
            return Answer(self._handshake.plain(500, "internal server error\n"))
        return Answer(response)

    def _raised(self) -> Answer:
        _log.exception("http.handler_failed", path=self.request.path)
        return Answer(self._handshake.plain(500, "internal server error\n"))

    def conclude(self) -> Decision:  # pragma: no cover - _take always answers
        raise AssertionError("an HTTP handler always answers")


class _UpgradeCall(HookCall):
    """The handshake hooks of a WebSocket route: they accept (merged) or one rejects."""

    __slots__ = (
        "_chosen",
        "_headers",
        "_pattern",
        "_response",
        "_route",
        "_subprotocol",
        "_values",
    )

    def __init__(
        self,
        handshake: Handshake,
        request: Request,
        route: RouteOptions,
        pattern: str,
        negotiated: str | None,
        response: Response,
    ) -> None:
        super().__init__(handshake, request, ())
        self._route = route
        self._pattern = pattern
        self._response = response
        self._subprotocol: str | None = negotiated
        self._chosen: str | None = None  # what the hooks chose, checked once they all ran
        self._headers: list[tuple[str, str]] = []
        self._values: dict[str, Any] = {}

    def _take(self, result: Any) -> Answer | None:
        if isinstance(result, Reject):
            request = self.request
            return Answer(
                self._handshake.plain(
                    result.status, result.body or "rejected\n", headers=result.headers
                ),
                Outcome("rejected", "hook", request.path, request.client_address),
            )
        if isinstance(result, Accept):
            self._headers.extend(result.headers)
            self._values.update(result.values)
            self._chosen = result.subprotocol or self._chosen
        return None

    def _raised(self) -> Answer:
        _log.exception("handshake.hook_failed", path=self.request.path)
        return Answer(
            self._handshake.plain(500, "internal server error\n"),
            Outcome("rejected", "hook", self.request.path, self.request.client_address),
        )

    def conclude(self) -> Decision:
        response = self._response
        chosen = self._chosen
        if chosen is not None:
            if chosen not in self.request.subprotocols:
                _log.error("handshake.bad_subprotocol", subprotocol=chosen)
                return Answer(
                    self._handshake.plain(500, "internal server error\n"),
                    Outcome(
                        "failed",
                        f"a hook chose subprotocol {chosen!r}, which the client did not offer",
                        self.request.path,
                    ),
                )
            self._subprotocol = chosen
            response.headers["Sec-WebSocket-Protocol"] = chosen
        for name, value in self._headers:
            response.headers[name] = value
        return Upgrade(
            self._route, self._pattern, self.request, self._subprotocol, self._values, response
        )
