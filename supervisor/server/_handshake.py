"""The handshake decision, written once for every driver: a request in, an answer out.

Theory of operation: a driver (the stream path in ``_server``: trio, TLS; the
callback path in ``_aio``: asyncio transports) reads bytes and feeds them to a
:class:`RequestReader`, which yields an :class:`HTTPRequest` once the request
(and body) is complete, or an :class:`Answer` when the bytes are not a request
wsup serves. :meth:`Handshake.decide` then decides, in this order: a repeated
singleton header is a 400; the server API (``/api/``, or its own port); the
metrics port serves only the operational paths; ``/api/`` where the API is not
served is a 404; methods a target does not take get 405; HEAD gets the status a
GET would; ``/healthz``, ``/readyz`` and ``/metrics``; the app's plain HTTP
routes; 404 for a path no
WebSocket route matches; 503 while not accepting, or with ``Retry-After`` when
admission control refuses (``max_connections``, per-address caps, handshake
rates: the host's :meth:`HandshakeHost.admit`, see ``_admission``);
403 for a refused ``Origin``; the WebSocket checks of websockets'
``ServerProtocol.accept`` (426, 400); last the app's handshake hooks. Its
result is one of three:

* an :class:`Answer`: an HTTP response to write before closing the socket,
  with what to count and log about it (:attr:`Answer.outcome`);
* an :class:`Upgrade`: the route, the request as handlers see it, the hooks'
  values and the 101 response; the driver writes it through the protocol
  and hands the socket to a new connection;
* a :class:`HookCall`: user functions (handshake hooks, an HTTP route's
  handler) or a server API call still have to run. :meth:`HookCall.run` calls them and returns the
  final :class:`Answer` or :class:`Upgrade` at once when each returns a plain
  value, or an awaitable of it when one returns an awaitable (``async def``):
  only then does a driver need to wait, and the callback path a task.

Under an ASGI server (``supervisor.asgi``), the server parsed the request and
checked its WebSocket headers: :meth:`Handshake.decide_scope` makes the same
decision from the route on (readiness, admission control, ``Origin``, the
route's subprotocols, the hooks), with the same three results.

Nothing here reads a socket, a clock or the event loop: what it needs from
the server at decision time comes through :class:`HandshakeHost` (readiness,
whether it accepts, whether admission control lets a client in, the metrics exposition).
The ``Date`` header is added by the driver when it writes (:func:`answer_bytes`).
It only logs the exceptions of user code (a hook or HTTP handler that raised),
where the traceback is.

A request that announces a body (a webhook to an ``@app.http`` route declared
with ``methods=("POST",)``, a server API call) is read whole by the
:class:`RequestReader` before the decision: once httptools has parsed its
head, the reader asks :meth:`Handshake.body_plan` how much body the target
takes (405, 411, 413 or a limit) and collects the ``Content-Length`` bytes
httptools frames. The server API (``_api``) is decided here like any
target; performing a call is the server's (:meth:`HandshakeHost.call_api`).
"""

from __future__ import annotations

import functools
import http
import inspect
import re
import uuid
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol, TypeAlias

import httptools
import structlog
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.extensions import Extension
from websockets.http11 import MAX_LINE_LENGTH, Response
from websockets.http11 import Request as WSRequest
from websockets.protocol import Protocol as WSProtocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Origin, Subprotocol
from websockets.utils import accept_key

from .._constants import HEALTHZ, METRICS, OPS_PATHS, READYZ
from . import _api
from ._admission import Refusal
from ._app import Accept, App, HTTPResponse, Reject, Request, RouteOptions
from ._config import ServerConfig, ServerHeader
from ._proxy import Networks, TrustedProxies
from ._request import (
    CheckedHeaders,
    OriginPolicy,
    header_list,
    header_tokens,
    parse_cookies,
    repeated_singleton,
    single_header,
    split_target,
)

if TYPE_CHECKING:
    from ..metrics import LimitName
    from ._routing import RouteMatch

__all__ = [
    "LINGER_BYTES",
    "Answer",
    "Decision",
    "HTTPRequest",
    "Handshake",
    "HandshakeHost",
    "HookCall",
    "Outcome",
    "ProtocolFactory",
    "RequestReader",
    "Socket",
    "UpgradeProtocol",
    "Upgrade",
    "answer_bytes",
    "negotiate",
    "plain",
    "remote_pair",
    "server_header_value",
]

_log = structlog.get_logger("wsup.server")

#: At most this many bytes are read and discarded after an HTTP answer before closing
#: (the lingering close of both drivers).
LINGER_BYTES: Final = 1 << 20
#: At most this many requests pipelined in one read are parsed before they are answered.
_PIPELINED: Final = 32
_GET_ONLY: Final = ("GET",)


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

    @property
    def per_address(self) -> bool:
        """Whether :meth:`admit` needs the client's address (else the peer's is given)."""

    def admit(self, client: str) -> Refusal | None:
        """Whether a WebSocket upgrade from ``client`` may go on (``max_connections``,
        per-address caps, handshake rates: see ``_admission``); None, or the refusal.
        Let through, it holds a per-address slot: the connection's if one opens,
        else given back with :meth:`release`."""

    def release(self, client: str) -> None:
        """Give back the slot :meth:`admit` held for an upgrade that opened no connection."""

    def render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type for this ``Accept`` header."""

    def call_api(self, call: _api.Call | _api.Answer, client: str) -> Coroutine[Any, Any, Answer]:
        """Perform a server API call (or take its refusal); count and log it; the answer."""

    def api_answer(self, answer: _api.Answer, client: str) -> Answer:
        """Count and log a server API answer given before the call (411, 413)."""


@dataclass(slots=True)
class Socket:
    """Where a request came from (one per accepted socket; not frozen: a frozen
    dataclass's constructor cost five times as much, 7k instructions).

    Attributes:
        remote: the peer's ``(host, port)``.
        ops_only: it came to the metrics or API port (not the server port).
        api_port: it came to ``api_port``.
    """

    remote: tuple[str, int]
    ops_only: bool = False
    api_port: bool = False


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
        body: the request body (empty but for a target that takes one).
        keep_alive: the client keeps the connection open after the answer
            (HTTP/1.1 without ``Connection: close``, or HTTP/1.0 with
            ``Connection: keep-alive``).
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes = b""
    keep_alive: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an :class:`Answer` means for ``wsup_handshakes_total`` and the log.

    Attributes:
        result: ``rejected`` (the server or the app turned the client away:
            ``handshake.rejected``) or ``failed``/``timeout`` (not a usable
            handshake: ``handshake.failed``).
        reason: for ``rejected``, the ``reason`` label (``no_route``,
            ``not_accepting``, ``max_connections``, ``origin``, ``hook``,
            ``ops_forbidden``); for
            the others, the error in words.
        path: the request path, when there was a request.
        client: the client address, when the hooks saw one (else the peer's).
        limit: the limit that refused the request, for ``wsup_limited_total``.
    """

    result: str
    reason: str
    path: str | None = None
    client: str | None = None
    limit: LimitName | None = None


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
    server_header: str | None,
    status: int,
    body: str | bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A complete non-101 answer: the body, ``Connection: close`` and no caching;
    a ``Server`` header unless ``server_header`` is None."""
    data = body.encode() if isinstance(body, str) else body
    fields = [
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ]
    if server_header is not None:
        fields.insert(0, ("Server", server_header))
    all_headers = Headers(fields)
    for name, value in headers:
        all_headers[name] = value
    return Response(status, http.HTTPStatus(status).phrase, all_headers, data)


def server_header_value(setting: ServerHeader, version: str) -> str | None:
    """The ``Server`` header ``ServerConfig.server_header`` asks for (None: no header)."""
    if setting == "version":
        return f"wsup/{version}"
    return "wsup" if setting == "name" else None


def answer_bytes(response: Response, date: str, keep_alive: bool = False) -> bytes:
    """The bytes of an answer, with its ``Date`` header (``date``, read by the driver);
    ``keep_alive``: the connection stays open for another request (``Connection:
    keep-alive`` instead of ``close``)."""
    headers = response.headers
    if keep_alive and "Connection" in headers:
        del headers["Connection"]
        headers["Connection"] = "keep-alive"
    if "Date" not in headers:
        response.headers = Headers([("Date", date), *headers.raw_items()])
    return response.serialize()


def remote_pair(peer: Any) -> tuple[str, int]:
    """The peer's ``(host, port)`` from what a socket reports (a UNIX socket: a path)."""
    if isinstance(peer, tuple):
        return str(peer[0]), int(peer[1])
    return ("" if peer is None else str(peer)), 0


class UpgradeProtocol(ServerProtocol):
    """websockets' ``ServerProtocol`` for a request that :class:`RequestReader` reads:
    its parser reads frames from the start.

    ``ServerProtocol``'s own parser reads the request first; started when the
    protocol is made, then dropped unused once httptools had read the request,
    that chain of generators cost a third as much as the rest of the protocol's
    construction (19k of 57k instructions). Everything else is websockets':
    the validation and negotiation of the upgrade, the 101, the frames, the
    closing handshake. Its :attr:`id` is made when first read (websockets' own
    logs read it; wsup's do not): ``uuid4()`` is a system call and a tenth of
    the constructor's instructions. :class:`ProtocolFactory` makes them per
    socket.
    """

    @functools.cached_property
    def id(self) -> uuid.UUID:  # type: ignore[override]  # websockets sets it in __init__
        """Unique identifier of the connection, for websockets' logs."""
        return uuid.uuid4()

    def parse(self) -> Generator[None]:
        return WSProtocol.parse(self)


class ProtocolFactory:
    """Makes the :class:`UpgradeProtocol` of each socket, in the state its constructor
    would leave it in, for a quarter of the instructions.

    websockets' constructor sets some twenty attributes from its arguments,
    checks them, and starts the frame parser: 26k instructions per socket, the
    dearest part of accepting one (``python -m bench.sections --scenario
    handshake``). The options are the same for every socket of a server, so a
    model protocol is made once; each new one starts from a copy of its
    attributes, with its own mutable state (the stream reader, the event and
    write lists, the negotiated extensions) and its own parser, started as the
    constructor starts it. ``tests/supervisor/test_upgrade_protocol.py`` checks
    that a protocol made here holds the same attributes as one made by the
    constructor, and shares with other sockets' protocols only what the
    constructor's share (the options themselves).

    Args:
        options: ``ServerProtocol``'s keyword arguments (``max_size``,
            ``extensions``, ``logger``...).
    """

    __slots__ = ("_state",)

    #: The attributes of websockets' protocol made afresh for each socket.
    FRESH: Final = ("id", "reader", "events", "writes", "extensions", "parser")

    def __init__(self, **options: Any) -> None:
        state = dict(vars(UpgradeProtocol(**options)))
        for name in self.FRESH:
            del state[name]  # a KeyError: websockets renamed one; see the test
        self._state = state

    def __call__(self) -> UpgradeProtocol:
        protocol = UpgradeProtocol.__new__(UpgradeProtocol)
        state = self._state.copy()  # one copy of the whole table: cheaper than setattr
        state["reader"] = StreamReader()
        state["events"] = []
        state["writes"] = []
        state["extensions"] = []
        protocol.__dict__ = state
        protocol.parser = parser = protocol.parse()
        next(parser)  # as the constructor does: waiting for the first frame
        return protocol


class RequestReader:
    """Collects a request, head and body, from the bytes a driver reads.

    httptools (llhttp) parses the bytes: the request line, the headers (each
    line within 8 KiB, their count within ``max_headers``, the whole head within
    ``max_header_bytes``) and, for a target that takes one, the body, up to what
    :meth:`Handshake.body_plan` allows. websockets' protocol, which will carry
    the connection, never sees the head: an :class:`UpgradeProtocol` parses
    frames from the start, and the bytes past an upgrade request (frames a
    client sent before the 101) are fed to it for the connection. One per
    socket.

    Both drivers only loop on :meth:`feed` until it returns something, and, on a
    connection kept alive after an answer, ask :meth:`next` for a request read
    already before feeding more; another parser for the head would change this
    class alone.
    """

    __slots__ = ("_message", "_parser", "_protocol")

    def __init__(self, protocol: UpgradeProtocol, handshake: Handshake, socket: Socket) -> None:
        self._protocol = protocol
        self._message = message = _Message(handshake, socket)
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(message)

    @property
    def reading_body(self) -> bool:
        """Whether the head is read and the body is still coming."""
        return self._message.body is not None

    @property
    def idle(self) -> bool:
        """Whether nothing of another request has arrived (a kept-alive connection
        waiting for its next request)."""
        message = self._message
        return not message.in_head and message.body is None and not message.ready

    @property
    def more(self) -> bool:
        """Whether anything may follow the request just answered: a request read
        already, what ended the reading, or more bytes to parse."""
        message = self._message
        return self._parser is not None or bool(message.ready) or message.failure is not None

    @property
    def reading(self) -> bool:
        """Whether another request may still be read from these bytes (False after an
        upgrade request, a malformed one, or too many pipelined at once)."""
        return self._parser is not None

    def feed(self, data: bytes) -> HTTPRequest | Answer | None:
        """Take ``data``; the next request once it is complete, an :class:`Answer` if
        the bytes are not a request wsup serves, else None (need more).

        Requests pipelined behind the one returned are parsed too: :meth:`next`
        gives them, one per answer.
        """
        parser = self._parser
        if parser is not None:
            message = self._message
            message.chunk_completed = False
            # The callbacks reach the parser only while it runs: no cycle between them
            # outlives a read (a kept-alive socket's reader is freed without the collector).
            message.parser = parser
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                message.upgrade_rest = data[upgrade.args[0] :]
                self._stop()
            except httptools.HttpParserError as error:
                if not message.overflow:
                    message.failure = message.refusal or message.invalid(error)
                self._stop()
            else:
                message.failure = message.held(len(data))
                if message.failure is not None:
                    self._stop()
            finally:
                message.parser = None
        return self.next()

    def next(self) -> HTTPRequest | Answer | None:
        """The next request already read (pipelined behind the last one answered), or
        what ended the reading; None: more bytes are needed."""
        message = self._message
        ready = message.ready
        if not ready:
            failure = message.failure
            message.failure = None
            return failure
        request = ready.popleft()
        rest = message.upgrade_rest
        if rest and not ready:
            # The frames that came with an upgrade request: the connection's.
            message.upgrade_rest = b""
            self._protocol.receive_data(rest)
        return request

    def _stop(self) -> None:
        self._parser = None


class _Message:
    """httptools' callbacks: the request being parsed, and the limits it must keep."""

    __slots__ = (
        "body",
        "by_name",
        "chunk_completed",
        "failure",
        "fields_size",
        "handshake",
        "head_read",
        "in_head",
        "line_limit",
        "lines",
        "max_headers",
        "overflow",
        "parser",
        "pending",
        "ready",
        "refusal",
        "socket",
        "upgrade_rest",
        "url",
    )

    def __init__(self, handshake: Handshake, socket: Socket) -> None:
        self.handshake = handshake
        self.max_headers = handshake.max_headers
        self.line_limit = min(MAX_LINE_LENGTH, handshake.max_header_bytes)
        self.socket = socket
        self.parser: httptools.HttpRequestParser | None = None
        self.url = b""
        #: The header lines as llhttp delivers them, decoded: name and value.
        self.lines: list[tuple[str, str]] = []
        #: Their values by lower-cased name (the ``Headers`` made of them).
        self.by_name: dict[str, list[str]] = {}
        #: Their size as lines of a head ("name: value CRLF"; a byte per character).
        self.fields_size = 0
        #: Bytes read while the head was incomplete (what the parser may be holding).
        self.head_read = 0
        self.in_head = False
        #: A message completed in the bytes being parsed (the next one began in them).
        self.chunk_completed = False
        #: The request whose body is being collected, and the body.
        self.pending: HTTPRequest | None = None
        self.body: bytearray | None = None
        #: Complete requests not returned yet (pipelined), in order.
        self.ready: deque[HTTPRequest] = deque()
        #: Too many of them in one read: parsing stopped there.
        self.overflow = False
        #: What ends the reading once the ready requests are answered.
        self.failure: Answer | None = None
        #: The bytes past an upgrade request (the last ready one): the protocol's.
        self.upgrade_rest = b""
        #: The answer a callback decided on, stopping the parser.
        self.refusal: Answer | None = None

    # -- httptools' callbacks (raising stops the parser) -----------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.lines = []
        self.by_name = {}
        self.fields_size = 0
        self.in_head = True
        # Begun after another message in these bytes: their start is not counted.
        self.head_read = -1 if self.chunk_completed else 0

    def on_url(self, url: bytes) -> None:
        if self.url:
            url = self.url + url  # in pieces when it spans reads
        self.url = url
        # The request line is "METHOD SP target SP HTTP/1.1 CRLF".
        limit = self.line_limit
        if len(url) + 12 > limit and len(url) + len(self._method()) + 12 > limit:
            self._stop(
                414,
                f"request line too long: path and query must fit in {limit} bytes",
                "request line too long",
                "request_head",
            )

    def _method(self) -> bytes:
        assert self.parser is not None
        return self.parser.get_method()

    def on_header(self, name: bytes, value: bytes) -> None:
        lines = self.lines
        if len(lines) >= self.max_headers:
            self._too_large(f"more than {self.max_headers} header fields")
        # Names are tokens (llhttp checked them); values may hold obs-text, kept as
        # ISO-8859-1 like websockets does. llhttp keeps trailing whitespace; websockets
        # not. The lines' lengths are checked once the head is complete.
        key = name.decode("ascii")
        text = value.rstrip(b" \t").decode("iso-8859-1")
        self.fields_size += len(key) + len(text) + 4  # "name: value CRLF"
        lines.append((key, text))
        key = key.lower()
        values = self.by_name.get(key)
        if values is None:
            self.by_name[key] = [text]
        else:
            values.append(text)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        assert parser is not None
        handshake = self.handshake
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._stop(400, f"HTTP/{version} is not supported: use HTTP/1.1", "HTTP version")
        raw_method = parser.get_method()
        # The request line, "METHOD SP target SP HTTP/1.1 CRLF", and the final CRLF.
        size = len(raw_method) + len(self.url) + 14 + self.fields_size
        lines = self.lines
        if size > MAX_LINE_LENGTH:  # then one line may be over it
            for name, value in lines:
                if len(name) + len(value) + 4 > MAX_LINE_LENGTH:
                    self._too_large(f"a header line over {MAX_LINE_LENGTH} bytes")
        if size > handshake.max_header_bytes:
            self._too_large(f"a request head over {handshake.max_header_bytes} bytes")
        try:
            target = self.url.decode("ascii")
        except UnicodeDecodeError:
            self._stop(400, "the request target is not ASCII", "request target not ASCII")
        method = raw_method.decode("ascii")
        path, query = split_target(target)
        by_name = self.by_name
        request = HTTPRequest(method, target, path, query, CheckedHeaders(lines, by_name))
        request.keep_alive = parser.should_keep_alive()
        length = _announced(by_name)
        if length:
            plan = handshake.body_plan(method, path, length, self.socket)
            if isinstance(plan, Answer):
                self.refusal = plan
                raise _Stop
            self.body = bytearray()
        self.pending = request

    def on_body(self, data: bytes) -> None:
        assert self.body is not None
        self.body += data  # no more than Content-Length, checked against the limit already

    def on_message_complete(self) -> None:
        self.chunk_completed = True
        request = self.pending
        assert request is not None
        self.pending = None
        if self.body is not None:
            request.body = bytes(self.body)
            self.body = None
        ready = self.ready
        ready.append(request)
        if len(ready) >= _PIPELINED:
            # A read full of tiny pipelined requests: parse no more of it. The
            # connection closes after answering these (the client may send the rest
            # again on a new one).
            self.overflow = True
            raise _Stop

    # -- the answers -----------------------------------------------------------------------

    def held(self, size: int) -> Answer | None:
        """After ``size`` more bytes and no complete request: the 431 if the head
        being read passed ``max_header_bytes`` (it may never end), else None."""
        if not self.in_head:
            return None
        # Begun after another message in the same read: that read is not counted.
        self.head_read = 0 if self.head_read < 0 else self.head_read + size
        limit = self.handshake.max_header_bytes
        if self.head_read <= limit:
            return None
        problem = f"a request head over {limit} bytes"
        return self._answer(
            431, f"request header fields too large: {problem}", problem, "request_head"
        )

    def invalid(self, error: Exception) -> Answer:
        """The 400 for bytes that are not an HTTP/1.1 request."""
        if isinstance(error, httptools.HttpParserInvalidMethodError):
            problem = "unknown request method"
        else:
            problem = f"not a valid HTTP/1.1 request ({error})"
        return self._answer(400, f"bad request: {problem}", problem)

    def _stop(
        self, status: int, text: str, problem: str, limit: LimitName | None = None
    ) -> NoReturn:
        self.refusal = self._answer(status, text, problem, limit)
        raise _Stop

    def _too_large(self, problem: str) -> NoReturn:
        self._stop(431, f"request header fields too large: {problem}", problem, "request_head")

    def _answer(
        self, status: int, text: str, problem: str | None = None, limit: LimitName | None = None
    ) -> Answer:
        path = split_target(self.url.decode("ascii", "replace"))[0] if self.url else None
        outcome = Outcome("failed", f"invalid HTTP request: {problem or text}", path, None, limit)
        return Answer(plain(self.handshake.server_header, status, text + "\n"), outcome)


class _Stop(Exception):
    """Raised by a callback to stop the parser: the answer is in ``_Message.refusal``."""


def _switching_protocols(
    accept: str, extensions: str | None, subprotocol: str | None, server: str | None
) -> Response:
    """The 101 that ``ServerProtocol.accept`` would make, with the ``Server`` header
    (``server``, None for none) and without its ``Date`` (optional in a 1xx answer,
    RFC 9110 6.6.1, and a clock read and a format).

    Its values need no check (:class:`CheckedHeaders`): the accept key is base64,
    the extensions and the subprotocol what websockets negotiated (tokens), the
    ``Server`` header the server's own.
    """
    lines = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
    by_name = {
        "upgrade": ["websocket"],
        "connection": ["Upgrade"],
        "sec-websocket-accept": [accept],
    }
    if extensions is not None:
        lines.append(("Sec-WebSocket-Extensions", extensions))
        by_name["sec-websocket-extensions"] = [extensions]
    if subprotocol is not None:
        lines.append(("Sec-WebSocket-Protocol", subprotocol))
        by_name["sec-websocket-protocol"] = [subprotocol]
    if server is not None:
        lines.append(("Server", server))
        by_name["server"] = [server]
    return _SwitchingProtocols(101, "Switching Protocols", CheckedHeaders(lines, by_name))


class _SwitchingProtocols(Response):
    """A 101 that serialises itself for a fifth of the instructions websockets'
    ``Response.serialize`` takes (13,000: a Python f-string per line); the same
    bytes (``tests/supervisor/test_handshake.py`` checks), hooks' headers included."""

    def serialize(self) -> bytes:
        return serialize(self)


def serialize(response: Response) -> bytes:
    """The bytes of ``response``, as websockets' ``Response.serialize`` writes them,
    with the lines joined in C (``str.join`` over ``map``)."""
    head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n"
    fields = "\r\n".join(map(": ".join, response.headers.raw_items()))
    text = f"{head}{fields}\r\n\r\n" if fields else f"{head}\r\n"
    return text.encode("iso-8859-1") + response.body


#: A ``Sec-WebSocket-Key`` that websockets' check (base64 of 16 bytes) passes for sure.
_KEY: Final = re.compile(r"[A-Za-z0-9+/]{22}==")
#: ``Connection`` values (lower-cased) that name the ``upgrade`` option: what clients send.
_CONNECTION_UPGRADE: Final = frozenset({"upgrade", "keep-alive, upgrade"})


def negotiate(
    protocol: ServerProtocol, request: HTTPRequest, subprotocols: Sequence[str]
) -> tuple[str, str | None, str | None] | None:
    """``protocol.process_request`` for the common upgrade, at a quarter of its cost.

    The common upgrade: ``GET``, one ``Connection`` line naming ``upgrade`` (as
    clients send it: ``Upgrade`` or ``keep-alive, Upgrade``), one ``Upgrade:
    websocket``, ``Sec-WebSocket-Version: 13``, a key of 22 base64 digits and
    ``==`` (what decodes to 16 bytes), at most one ``Origin``. For it, the
    accept key is websockets' (``accept_key``), and the extensions and the
    subprotocol are negotiated by the protocol's own ``process_extensions`` and
    ``process_subprotocol``, only when the client offers any or the route needs
    a subprotocol. Anything else (or a negotiation that fails) is for
    ``process_request``, which checks it again from the start and says what is
    wrong.

    Args:
        protocol: the protocol that carries the connection (no ``origins`` of its
            own: wsup checks ``Origin``).
        request: the upgrade request.
        subprotocols: the route's subprotocols, in its order of preference.

    Returns:
        What ``process_request`` returns (the ``Sec-WebSocket-Accept``,
        ``Sec-WebSocket-Extensions`` and ``Sec-WebSocket-Protocol`` values),
        with the same ``origin``, ``extensions`` and ``subprotocol`` set on
        ``protocol``; or None: not the common upgrade, ask ``process_request``.
        Never raises.
    """
    headers = request.headers
    connection = headers.get_all("Connection")
    upgrade = headers.get_all("Upgrade")
    key = headers.get_all("Sec-WebSocket-Key")
    origin = headers.get_all("Origin")
    if (
        request.method != "GET"
        or len(connection) != 1
        or connection[0].lower() not in _CONNECTION_UPGRADE
        or len(upgrade) != 1
        or upgrade[0].lower() != "websocket"
        or headers.get_all("Sec-WebSocket-Version") != ["13"]
        or len(key) != 1
        or _KEY.fullmatch(key[0]) is None
        or len(origin) > 1
        or protocol.origins is not None
    ):
        return None
    extensions = None
    accepted: list[Extension] = []
    if protocol.available_extensions and headers.get_all("Sec-WebSocket-Extensions"):
        try:
            extensions, accepted = protocol.process_extensions(headers)
        except InvalidHandshake:
            return None
    subprotocol = None
    if subprotocols or headers.get_all("Sec-WebSocket-Protocol"):
        protocol.available_subprotocols = [Subprotocol(p) for p in subprotocols] or None
        try:
            subprotocol = protocol.process_subprotocol(headers)
        except InvalidHandshake:
            return None
    protocol.origin = Origin(origin[0]) if origin else None
    protocol.extensions = accepted
    protocol.subprotocol = subprotocol
    return accept_key(key[0]), extensions, subprotocol


def _announced(by_name: Mapping[str, list[str]]) -> int:
    """The body a request announces (its header values by lower-cased name): its
    ``Content-Length`` (0: none), or -1 for ``Transfer-Encoding`` (llhttp refused
    both together, or a malformed length)."""
    if "transfer-encoding" in by_name:
        return -1
    length = by_name.get("content-length")
    return int(length[0]) if length else 0


class Handshake:
    """Decides every handshake of one server. No I/O: see the module docstring.

    Args:
        app: the routes, HTTP routes and hooks (read at each decision).
        config: ``origins``, ``trusted_proxies``, where the operational endpoints
            are served and to whom (``ops_port_only``, ``ops_allow``),
            ``server_header``, and the server API's ``api_key``, ``api_port`` and
            ``api_max_body``.
        host: the server, as far as a decision needs it.
        version: wsup's version, for ``config.server_header == "version"``.

    Raises:
        ValueError: an entry of ``config.origins`` or ``config.trusted_proxies``
            is malformed (at construction, so a typo stops the server at start-up).
    """

    __slots__ = (
        "_api_key",
        "_api_max_body",
        "_api_port",
        "_app",
        "_host",
        "_max_http_requests",
        "_ops_allow",
        "_ops_on_main_port",
        "_origins",
        "_proxies",
        "max_header_bytes",
        "max_headers",
        "server_header",
    )

    def __init__(self, app: App, config: ServerConfig, host: HandshakeHost, version: str) -> None:
        self._app = app
        self._host = host
        self._origins = OriginPolicy(config.origins)
        self._proxies = TrustedProxies(config.trusted_proxies)
        self._ops_on_main_port = not config.ops_port_only
        self._ops_allow = (
            None if config.ops_allow is None else Networks(config.ops_allow, "ops_allow network")
        )
        #: The ``Server`` header of every answer, or None for none.
        self.server_header = server_header_value(config.server_header, version)
        self._api_key = config.api_key
        self._api_port = config.api_port
        self._api_max_body = config.api_max_body
        #: The request head's limits (``RequestReader`` keeps them).
        self.max_header_bytes = config.max_header_bytes
        self.max_headers = config.max_headers
        self._max_http_requests = config.max_http_requests

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

    def timed_out(self, *, reading_body: bool = False) -> Answer:
        """The answer when the request (or its body) did not arrive within
        ``handshake_timeout``."""
        what = "request body" if reading_body else "request"
        return Answer(
            self.plain(408, "handshake timed out\n"),
            Outcome("timeout", f"no {what} before the handshake timeout"),
        )

    def keeps_alive(self, request: HTTPRequest, answer: Answer, served: int) -> bool:
        """Whether the connection stays open for another request after ``answer`` to
        ``request``, the ``served``-th request on it (HTTP/1.1 keep-alive).

        Not after an upgrade request (whatever its answer: a kept-alive connection
        may end with an upgrade, never go on after a refused one), a 400 or a 5xx,
        ``max_http_requests`` requests, or once the server drains; not when the
        client asked to close (``Connection: close``, or HTTP/1.0 without
        ``Connection: keep-alive``).
        """
        status = answer.status
        return (
            request.keep_alive
            and served < self._max_http_requests
            and status != 400
            and status < 500
            and self._host.accepting
            and "upgrade" not in header_tokens(request.headers, "Connection")
        )

    # -- requests with a body --------------------------------------------------------------

    def body_plan(self, method: str, path: str, length: int, socket: Socket) -> int | Answer:
        """How much body a request that announces one may send, or the answer at once.

        Args:
            method: the request method.
            path: the request path.
            length: its ``Content-Length``, or -1 for a ``Transfer-Encoding`` body.
            socket: where it came from.

        Returns:
            The largest body its target takes, when the length is within it;
            otherwise the answer: 404 for ``/api/`` where the API is not served,
            405 when the target takes no body, 411 for a chunked one, 413 when
            ``Content-Length`` passes the limit.
        """
        api = self._serves_api(path, socket)
        limit = self._body_limit(method, path, socket, api)
        if limit is None:
            not_here = None if socket.ops_only else self._api_not_here(path)
            if not_here is not None:
                return not_here
            # Not a target that takes a body: wsup reads none there.
            allow = self._allow(path)
            return Answer(
                self.plain(
                    405,
                    f"requests with a body are not supported here: use {allow}\n",
                    headers=[("Allow", allow)],
                ),
                Outcome("failed", f"{method} with a body", path),
            )
        if length < 0:
            text = "send the body with Content-Length: chunked bodies are not supported"
            return self._body_refused(411, text, path, api, socket)
        if length > limit:
            text = f"request body too large: {length} bytes, at most {limit}"
            return self._body_refused(413, text, path, api, socket)
        return limit

    def _body_refused(self, status: int, text: str, path: str, api: bool, socket: Socket) -> Answer:
        if api:
            error = _api.error(status, text, _api.endpoint_of(path))
            return self._host.api_answer(error, socket.remote[0])
        return Answer(self.plain(status, text + "\n"))

    def _body_limit(self, method: str, path: str, socket: Socket, api: bool) -> int | None:
        """The largest body ``method path`` takes on this socket, or None for none."""
        if api:
            return self._api_max_body
        options = None if socket.ops_only else self._app.http_options.get(path)
        if options is not None and method in options.methods and method not in ("GET", "HEAD"):
            return options.max_body
        return None

    # -- the server API --------------------------------------------------------------------

    def _serves_api(self, path: str, socket: Socket) -> bool:
        """Whether this request is for the server API, here (key set, right port)."""
        if self._api_key is None or not _api.is_api_path(path):
            return False
        if self._api_port is None:
            return not socket.ops_only
        return socket.api_port

    def _api_not_here(self, path: str) -> Answer | None:
        """The 404 for ``/api/`` on the main port when the API is off or elsewhere."""
        if not _api.is_api_path(path):
            return None
        app = self._app
        if path in app.http_routes:
            return None
        if app.router.match(path) is not None:
            return None  # the app's own WebSocket route
        why = (
            "the server API is off: configure an API key (WSUP_API_KEY or --api-key-file)"
            if self._api_key is None
            else f"the server API is served on port {self._api_port}"
        )
        return Answer(self.plain(404, why + "\n"))

    def _allow(self, path: str) -> str:
        options = self._app.http_options.get(path)
        return options.allow if options is not None else "GET, HEAD"

    # -- the decision ----------------------------------------------------------------------

    def decide(
        self, request: HTTPRequest, protocol: ServerProtocol, socket: Socket
    ) -> Answer | Upgrade | HookCall:
        """Decide what to do with ``request``.

        Args:
            request: the parsed request.
            protocol: the WebSocket protocol that read it; on an upgrade it
                negotiates extensions and the subprotocol, and later carries
                the connection.
            socket: where it came from.

        Returns:
            The answer, the upgrade, or the user code (or server API call) still to run.
        """
        path = request.path
        headers = request.headers
        repeated = repeated_singleton(headers)
        if repeated is not None:
            return Answer(
                self.plain(400, f"bad request: more than one {repeated} header\n"),
                Outcome("failed", f"more than one {repeated} header", path),
            )
        if self._api_key is not None and self._serves_api(path, socket):
            return self._api_call(request, socket)
        if socket.ops_only and path not in OPS_PATHS:
            return Answer(self.plain(404, f"this port serves {METRICS}, {HEALTHZ}, {READYZ}\n"))
        app = self._app
        not_here = self._api_not_here(path)
        if not_here is not None:
            return not_here
        # Served here: on an ops port, or on the main one unless ops_port_only (then
        # the path is any other path: the app's, or a 404).
        ops = path in OPS_PATHS and (socket.ops_only or self._ops_on_main_port)
        if ops and self._ops_allow is not None:
            forbidden = self._ops_forbidden(request, socket)
            if forbidden is not None:
                return forbidden
        method = request.method
        if method == "HEAD":
            return Answer(self._head(path, ops))
        options = app.http_options.get(path)
        if method not in (options.methods if options is not None else _GET_ONLY):
            # Only GET (and HEAD, for probes), or what a plain HTTP route declares.
            allow = self._allow(path)
            use = allow.removesuffix(", HEAD").replace(", HEAD", "")
            return Answer(
                self.plain(
                    405, f"{method} is not supported: use {use}\n", headers=[("Allow", allow)]
                )
            )
        if ops:
            return Answer(self._operational(path, headers))
        match = app.router.match(path)
        upgrade = "upgrade" in header_tokens(headers, "Connection")
        if match is None or not upgrade:
            handler = app.http_routes.get(path)
            if handler is not None and not upgrade:
                return _HTTPCall(self, self._request(request, socket.remote, {}), (handler,))
            if match is None:
                return self._refuse(404, f"no route for {path}\n", "no_route", path)
        route: RouteOptions = match.target  # type: ignore[assignment]
        # During the readiness grace /readyz already says 503 but handshakes are
        # still accepted: load balancers are still sending traffic our way.
        host = self._host
        peer = socket.remote[0]
        # The client's address, for admission control per address and for the request.
        client_address = (
            self._proxies.client_address(peer, list(headers.raw_items()))
            if host.per_address
            else None
        )
        client = peer if client_address is None else client_address
        turned_away = self._admit(path, client)
        if turned_away is not None:
            return turned_away
        # From here on, every answer but a 101 gives back the slot admit() held.
        origins = self._origins
        if not origins.allows_all and not origins.allows(single_header(headers, "Origin")):
            host.release(client)
            return self._refuse(403, "origin not allowed\n", "origin", path)
        # websockets' checks and negotiation (key, version, extensions, subprotocol):
        # the common upgrade through its helpers, anything else through process_request.
        negotiated = negotiate(protocol, request, route.subprotocols) or self._process_request(
            request, protocol, route
        )
        if isinstance(negotiated, Answer):
            host.release(client)
            return negotiated
        response = _switching_protocols(*negotiated, self.server_header)
        user_request = self._request(request, socket.remote, match.params, client_address)
        hooks = app.hooks
        pattern = match.route.pattern
        if route.hook is None and not hooks:
            # Nothing to call: the common case, decided here and now.
            return Upgrade(route, pattern, user_request, protocol.subprotocol, {}, response)
        pending = _UpgradeCall(
            self, user_request, route, pattern, protocol.subprotocol, response, host
        )
        pending.hooks = (*hooks, route.hook) if route.hook is not None else tuple(hooks)
        return pending

    def _process_request(
        self, request: HTTPRequest, protocol: ServerProtocol, route: RouteOptions
    ) -> tuple[str, str | None, str | None] | Answer:
        """websockets' checks and negotiation of an upgrade request that is not the
        common one (:func:`negotiate`): what the 101 needs, or the answer websockets
        words (426 for a plain GET, 400 for a bad key...)."""
        protocol.available_subprotocols = [Subprotocol(p) for p in route.subprotocols] or None
        ws_request = WSRequest(request.target, request.headers)
        try:
            return protocol.process_request(ws_request)
        except Exception:
            # Not a valid WebSocket handshake: accept() runs the same checks again
            # and makes the answer.
            refused = protocol.accept(ws_request)
            if self.server_header is not None:
                refused.headers["Server"] = self.server_header
            error = protocol.handshake_exc
            return Answer(
                refused,
                Outcome(
                    "failed",
                    f"{refused.status_code}: {error or refused.reason_phrase}",
                    request.path,
                ),
            )

    def decide_scope(
        self, request: Request, match: RouteMatch | None
    ) -> Answer | Upgrade | HookCall:
        """Decide a WebSocket handshake that an ASGI server parsed (``supervisor.asgi``).

        The checks of :meth:`decide` once a request names a WebSocket route, in
        the same order and with the same answers: 404 for no route; 503 while not
        accepting; admission control's 503 with ``Retry-After``; 403 for a
        refused ``Origin``; 400 when the route needs a subprotocol the client did
        not offer; last the hooks. The ASGI server checked the WebSocket headers
        and writes the 101 itself: an :class:`Upgrade`'s response carries only
        the headers the hooks add.

        Args:
            request: the request as hooks see it, built from the scope.
            match: the route the scope's path matched, if any.
        """
        path = request.path
        if match is None:
            return self._refuse(404, f"no route for {path}\n", "no_route", path)
        route: RouteOptions = match.target  # type: ignore[assignment]
        host = self._host
        client = request.client_address
        turned_away = self._admit(path, client)
        if turned_away is not None:
            return turned_away
        # From here on, every answer but the upgrade gives back the slot admit() held.
        origins = self._origins
        if not origins.allows_all and not origins.allows(request.header("origin")):
            host.release(client)
            return self._refuse(403, "origin not allowed\n", "origin", path)
        subprotocol, problem = _select_subprotocol(route.subprotocols, request.subprotocols)
        if problem is not None:
            host.release(client)
            return Answer(
                self.plain(400, f"bad request: {problem}\n"), Outcome("failed", problem, path)
            )
        response = Response(101, "Switching Protocols", Headers())
        hooks = self._app.hooks
        pattern = match.route.pattern
        if route.hook is None and not hooks:
            return Upgrade(route, pattern, request, subprotocol, {}, response)
        pending = _UpgradeCall(self, request, route, pattern, subprotocol, response, host)
        pending.hooks = (*hooks, route.hook) if route.hook is not None else tuple(hooks)
        return pending

    def _admit(self, path: str, client: str) -> Answer | None:
        """The first checks of an upgrade to a route, on either path: 503 while the
        server does not accept, then admission control. ``None``: admitted, and the
        caller holds ``client``'s slot until its 101 (any other answer gives it back)."""
        host = self._host
        if not host.accepting:
            why = "server is shutting down" if host.draining else "not accepting new connections"
            return self._refuse(503, why + "\n", "not_accepting", path)
        refusal = host.admit(client)
        if refusal is not None:
            return self.refused(refusal, path, client)
        return None

    def _api_call(self, request: HTTPRequest, socket: Socket) -> HookCall:
        assert self._api_key is not None
        call = _api.parse(
            request.method,
            request.path,
            request.query,
            list(request.headers.raw_items()),
            request.body,
            self._api_key,
        )
        return _APICall(self, self._request(request, socket.remote, {}), call, self._host)

    def _refuse(
        self, status: int, body: str, reason: str, path: str, client: str | None = None
    ) -> Answer:
        return Answer(self.plain(status, body), Outcome("rejected", reason, path, client))

    def _ops_forbidden(self, request: HTTPRequest, socket: Socket) -> Answer | None:
        """The 403 for an operational path asked from outside ``ops_allow``, or None.

        The client address is what a trusted proxy forwarded when the peer is one,
        else the peer itself: matching the peer alone would let anyone in through
        the proxy, and a forwarding header from anyone else is not believed.
        """
        assert self._ops_allow is not None
        peer = socket.remote[0]
        client = self._proxies.client_address(peer, list(request.headers.raw_items()))
        if client in self._ops_allow:
            return None
        text = f"forbidden: {request.path} is not served to {client or 'this client'}\n"
        return self._refuse(403, text, "ops_forbidden", request.path, client)

    def refused(
        self, refusal: Refusal, path: str | None = None, client: str | None = None
    ) -> Answer:
        """The 503 of admission control, with its ``Retry-After``; rejected for its limit."""
        retry = [("Retry-After", str(refusal.retry_after))]
        return Answer(
            self.plain(503, refusal.why + "\n", headers=retry),
            Outcome("rejected", refusal.limit, path, client),
        )

    def _operational(self, path: str, headers: Headers) -> Response:
        if path == HEALTHZ:
            return self.plain(200, "ok\n")
        if path == READYZ:
            ready, why = self._host.readiness()
            if ready:
                return self.plain(200, why + "\n")
            # Unready but serving (capacity, descriptors, lag, the backplane): ask
            # again soon. A node that stopped accepting will not be back.
            retry = [("Retry-After", "1")] if self._host.accepting else []
            return self.plain(503, why + "\n", headers=retry)
        body, content_type = self._host.render_metrics(header_list(headers, "Accept"))
        return self.plain(200, body, content_type)

    def _head(self, path: str, ops: bool) -> Response:
        """The answer to HEAD: the status and headers of the GET, without its body
        (``ops``: ``path`` is an operational endpoint served here)."""
        if ops and path == READYZ:
            status = 200 if self._host.readiness()[0] else 503
        elif ops or path in self._app.http_routes:
            status = 200
        elif self._app.router.match(path) is not None:
            status = 426  # a WebSocket route: needs GET with Upgrade
        else:
            status = 404
        response = self.plain(status, b"")
        del response.headers["Content-Length"]
        return response

    def _request(
        self,
        request: HTTPRequest,
        remote: tuple[str, int],
        params: Mapping[str, str],
        client_address: str | None = None,
    ) -> Request:
        """The request as hooks and handlers see it (``client_address``: the client's
        address when the caller has it already, else found here)."""
        headers = request.headers
        raw = list(headers.raw_items())
        if client_address is None:
            client_address = self._proxies.client_address(remote[0], raw)
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
            client_address=client_address,
            subprotocols=tuple(offered),
            method=request.method,
            body=request.body,
        )


def _select_subprotocol(
    available: Sequence[str], offered: Sequence[str]
) -> tuple[str | None, str | None]:
    """The route's first subprotocol that the client offered, as websockets chooses
    (for a handshake whose headers an ASGI server parsed).

    Returns:
        ``(subprotocol, None)``, or ``(None, problem)`` when the route needs one
        and the client offered none of them.
    """
    if not available:
        return None, None
    if not offered:
        return None, "missing subprotocol"
    for subprotocol in available:
        if subprotocol in offered:
            return subprotocol, None
    return None, "invalid subprotocol; expected one of " + ", ".join(available)


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

    def abandon(self) -> None:
        """The call will not run or will not finish (its task could not start, or was
        cancelled): give back what deciding it held. Idempotent."""

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
    """The handshake hooks of a WebSocket route: they accept (merged) or one rejects.

    The upgrade holds a per-address slot of admission control while the hooks
    run (:meth:`HandshakeHost.admit`); any answer but the upgrade gives it back.
    """

    __slots__ = (
        "_chosen",
        "_client",
        "_headers",
        "_host",
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
        host: HandshakeHost,
    ) -> None:
        super().__init__(handshake, request, ())
        self._host = host
        #: The client whose slot is held; None once given back.
        self._client: str | None = request.client_address
        self._route = route
        self._pattern = pattern
        self._response = response
        self._subprotocol: str | None = negotiated
        self._chosen: str | None = None  # what the hooks chose, checked once they all ran
        self._headers: list[tuple[str, str]] = []
        self._values: dict[str, Any] = {}

    def run(self) -> Decision | Coroutine[Any, Any, Decision]:
        decision = super().run()
        if isinstance(decision, Answer):
            self.abandon()
        return decision

    async def _run_from(self, index: int, pending: Awaitable[Any]) -> Decision:
        try:
            decision = await super()._run_from(index, pending)
        except BaseException:  # cancelled while a hook awaited (the server stops)
            self.abandon()
            raise
        if isinstance(decision, Answer):
            self.abandon()
        return decision

    def abandon(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._host.release(client)

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
        self._client = None  # the slot goes with the upgrade (the driver gives it back on failure)
        return Upgrade(
            self._route, self._pattern, self.request, self._subprotocol, self._values, response
        )


class _APICall(HookCall):
    """A server API request: the server performs it (:meth:`HandshakeHost.call_api`)."""

    __slots__ = ("_call", "_host")

    def __init__(
        self,
        handshake: Handshake,
        request: Request,
        call: _api.Call | _api.Answer,
        host: HandshakeHost,
    ) -> None:
        super().__init__(handshake, request, ())
        self._call = call
        self._host = host

    def run(self) -> Decision | Coroutine[Any, Any, Decision]:
        return self._host.call_api(self._call, self.request.remote_address[0])
