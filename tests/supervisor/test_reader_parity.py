"""The request reader (httptools) against the parser it replaced (websockets'), byte for byte.

The same bytes go to :class:`RequestReader` and to a reader built on websockets'
``ServerProtocol``, the way wsup read requests before; both results then go
through the same :meth:`Handshake.decide`. They must agree on the status (or
the upgrade: route, request, 101 headers) for valid requests, and for mutated
ones except where the two parsers legitimately differ, each case named in
:func:`known_difference` with the reason.

The server is configured with websockets' limits (128 header fields, no limit
on the whole head but 128 lines of 8 KiB) so that the limits agree too.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import MAX_LINE_LENGTH, Response, parse_headers
from websockets.http11 import Request as WSRequest
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol

from supervisor import App, HTTPResponse, ServerConfig
from supervisor.server import _handshake
from supervisor.server._handshake import (
    Answer,
    Handshake,
    HookCall,
    HTTPRequest,
    RequestReader,
    Socket,
    Upgrade,
    UpgradeProtocol,
)
from supervisor.server._request import split_target
from tests.fuzz.test_fuzz_handshake import mutated_requests
from tests.supervisor.test_handshake import Echo, Host

PEER = ("10.1.2.3", 40000)
KEY = base64.b64encode(b"0123456789abcdef").decode()
WEBSOCKETS_LIMITS = {"max_headers": 128, "max_header_bytes": 1 << 21}


def make() -> Handshake:
    app = App()
    app.add_route("/echo", Echo, subprotocols=("chat",))
    app.add_route("/chat/{room}", Echo)

    @app.http("/hook", methods=("GET", "POST"), max_body=64)
    def hook(request: Any) -> HTTPResponse:
        return HTTPResponse(request.body or b"none")

    return Handshake(app, ServerConfig(**WEBSOCKETS_LIMITS), Host(), "wsup/test")  # type: ignore[arg-type]


HANDSHAKE = make()


# --- the reader wsup had: websockets' parser, bodies parsed again ---------------------------


def websockets_read(handshake: Handshake, data: bytes, protocol: ServerProtocol) -> Any:
    """What the websockets-based reader made of ``data``: a request, an answer, or None."""
    socket = Socket(PEER)
    protocol.receive_data(data)
    events = protocol.events_received()
    if events:
        request = events[0]
        assert isinstance(request, WSRequest)
        path, query = split_target(request.path)
        return HTTPRequest(request.method, request.path, path, query, request.headers)
    error = protocol.handshake_exc
    if error is None:
        return None
    cause = error.__cause__
    if isinstance(cause, NotImplementedError) or (
        isinstance(cause, ValueError) and "unsupported request body" in str(cause)
    ):
        return body_request(handshake, data, socket)
    if isinstance(error, RequestLineTooLong):
        return 414
    if isinstance(error, HeaderLineTooLong | TooManyHeaders):
        return 431
    return 400


def body_request(handshake: Handshake, data: bytes, socket: Socket) -> Any:
    """A request websockets refused for its body, parsed again with its header parser."""
    end = data.find(b"\r\n\r\n")
    reader = StreamReader()
    reader.feed_data(data[: end + 4])
    reader.feed_eof()

    def head() -> Any:
        line = yield from reader.read_line(MAX_LINE_LENGTH, ValueError)
        method, target, _ = bytes(line).rstrip(b"\r\n").split(b" ", 2)
        headers = yield from parse_headers(reader.read_line)
        return method.decode("ascii"), target.decode("ascii"), headers

    parser = head()
    try:
        next(parser)
    except StopIteration as done:
        method, target, headers = done.value
    else:  # pragma: no cover - the whole head is there
        raise AssertionError("wanted more than the whole head")
    if "Transfer-Encoding" in headers:
        length = -1
    else:
        lengths = set(headers.get_all("Content-Length"))
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            return 400
        length = int(next(iter(lengths)))
    path, query = split_target(target)
    plan = handshake.body_plan(method, path, length, socket)
    if isinstance(plan, Answer):
        return plan.status
    body = data[end + 4 : end + 4 + length]
    if len(body) < length:
        return None
    return HTTPRequest(method, target, path, query, headers, body)


# --- both, decided -------------------------------------------------------------------------


def verdict(handshake: Handshake, parsed: Any, protocol: ServerProtocol) -> Any:
    """What a client gets for ``parsed``: a status, or the upgrade's essentials."""
    if parsed is None or isinstance(parsed, int):
        return parsed
    if isinstance(parsed, Answer):
        return parsed.status
    assert isinstance(parsed, HTTPRequest)
    step = handshake.decide(parsed, protocol, Socket(PEER))
    decision = step.run() if isinstance(step, HookCall) else step
    if isinstance(decision, Answer):
        return decision.status, bytes(decision.response.body)
    assert isinstance(decision, Upgrade)
    request = decision.request
    headers = dict(decision.response.headers.raw_items())
    headers.pop("Date", None)  # websockets dates its 101; a 1xx needs no Date
    return (
        101,
        decision.pattern,
        decision.subprotocol,
        headers,
        (request.method, request.path, request.query, request.headers, request.body),
    )


def both(data: bytes, chunks: Sequence[int] = ()) -> tuple[Any, Any]:
    """The old and the new verdict on ``data`` (the new reader fed in ``chunks``)."""
    old_protocol = ServerProtocol()
    old = verdict(HANDSHAKE, websockets_read(HANDSHAKE, data, old_protocol), old_protocol)
    protocol = UpgradeProtocol()
    reader = RequestReader(protocol, HANDSHAKE, Socket(PEER))
    parsed = None
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in chunks), len(data)]:
        if parsed is None and cut >= start:
            parsed = reader.feed(data[start:cut])
            start = cut
    return old, verdict(HANDSHAKE, parsed, protocol)


def known_difference(data: bytes, old: Any, new: Any) -> str | None:
    """Why the two readers may answer ``data`` differently, or None if they must not."""
    status = new[0] if isinstance(new, tuple) else new
    head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data
    line, _, _ = head.partition(b"\r\n")
    method = line.split(b" ", 1)[0]
    if method not in _LLHTTP_METHODS and status == 400:
        # llhttp knows the registered methods only; websockets took any token
        # (and the decision answered 405 to it).
        return "unknown method"
    if data.startswith((b"\r\n", b"\n")):
        # RFC 9112 2.2: a server SHOULD ignore empty lines before the request
        # line; llhttp does, websockets did not (400).
        return "empty line before the request"
    if re.match(rb"^\S+  +\S|^\S+ \S+  +HTTP", line):
        return "several spaces in the request line: llhttp accepts them, websockets did not"
    if b"\n" in head.replace(b"\r\n", b""):
        # A bare LF (or an obs-fold, or CR alone) inside the head: both refuse most,
        # but not at the same point, so one may say 400 while the other waits or
        # answers 431 for a line it reached first.
        return "a bare LF, CR or obs-fold in the head"
    if b"\r" in head.replace(b"\r\n", b""):
        return "a bare CR in the head"
    if re.search(rb"\r\n[^:\r\n]*[ \t]:", head) or re.search(rb"\r\n[ \t]", head):
        return "whitespace around a header name"
    if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", head.replace(b"\r\n", b"")):
        return "a control character"
    lowered = head.lower()
    if lowered.count(b"\r\ncontent-length:") > 1 or (
        b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered
    ):
        # Request smuggling: llhttp refuses two Content-Length headers (even equal)
        # and Content-Length with Transfer-Encoding (400); websockets took equal
        # lengths, and the body plan answered 411 for Transfer-Encoding.
        return "ambiguous body framing"
    if re.search(rb"\r\ncontent-length:[ \t]*[^0-9\r]", lowered) or re.search(
        rb"\r\ncontent-length:[ \t]*\d+[^0-9 \t\r]", lowered
    ):
        return "a malformed Content-Length: llhttp refuses it, websockets read a head first"
    if re.search(rb"\r\ntransfer-encoding:", lowered):
        return "Transfer-Encoding: llhttp checks its value, websockets only its presence"
    if not re.match(rb"^\S+ \S+ HTTP/1\.[01]$", line) and b" " in line:
        # A version other than 1.0 and 1.1, or a target with odd bytes: both 400 in
        # the end, but llhttp stops at the first bad byte, which may come before a
        # limit websockets hit first, or after the end of what was sent.
        return "a malformed request line"
    if old in (414, 431) or new in (414, 431):
        # The limits are measured on slightly different spans: websockets on the raw
        # line, wsup on name, ': ', value without its trailing whitespace, CRLF.
        return "a line at the limit"
    if status == 400 and old is None:
        # llhttp refuses a bad byte as soon as it sees it; websockets waited for
        # the whole line.
        return "refused before the end of the head"
    return None


_LLHTTP_METHODS = {
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"COPY",
    b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND",
    b"REBIND", b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE",
    b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PATCH", b"PURGE", b"MKCALENDAR",
    b"LINK", b"UNLINK", b"SOURCE", b"QUERY",
}  # fmt: skip


# --- the properties ------------------------------------------------------------------------

_TOKENS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
    lambda text: text.strip()
)


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    """A well-formed request: an upgrade, a plain GET, or a POST with a body."""
    target = draw(
        st.sampled_from(["/echo", "/chat/lobby?x=1&x=2", "/hook", "/healthz", "/nope", "/echo?a"])
    )
    kind = draw(st.sampled_from(["upgrade", "get", "post", "head"]))
    method = {"upgrade": "GET", "get": "GET", "post": "POST", "head": "HEAD"}[kind]
    headers = [("Host", "example.com")]
    if kind == "upgrade":
        headers += [
            ("Upgrade", draw(st.sampled_from(["websocket", "WebSocket"]))),
            ("Connection", draw(st.sampled_from(["Upgrade", "keep-alive, Upgrade"]))),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
        if draw(st.booleans()):
            headers.append(("Sec-WebSocket-Protocol", draw(st.sampled_from(["chat", "x, chat"]))))
    body = b""
    if kind == "post":
        body = draw(st.binary(max_size=80))
        headers.append(("Content-Length", str(len(body))))
    headers += draw(st.lists(st.tuples(_TOKENS, _VALUES), max_size=6))
    headers = draw(st.permutations(headers))
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@given(valid_requests(), st.lists(st.integers(0, 1 << 16), max_size=3))
def test_valid_requests_get_the_same_answer(data: bytes, chunks: list[int]) -> None:
    """A well-formed request, in any number of reads: the same status or the same upgrade."""
    old, new = both(data, chunks)
    assert old == new


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated_requests(), st.lists(st.integers(0, 1 << 16), max_size=2))
def test_mutated_requests_get_the_same_answer(attempt: Any, chunks: list[int]) -> None:
    """A mutated upgrade request: the same answer, or a difference named and explained."""
    old, new = both(attempt.data, chunks)
    if old != new:
        why = known_difference(attempt.data, old, new)
        assert why is not None, (attempt.data[:300], old, new)


def test_the_differences_are_real() -> None:
    """Each difference named above does happen (else its excuse should go)."""
    cases = {
        b"get /echo HTTP/1.1\r\nHost: x\r\n\r\n": "unknown method",
        b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n": "empty line before the request",
        b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n": "several spaces",
        b"POST /hook HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx": "ambiguous",
    }
    for data, why in cases.items():
        old, new = both(data)
        if why == "ambiguous" and old == new:
            # websockets 17.0 (the lowest version allowed) refuses a repeated
            # Content-Length itself, 17.4 does not: then both refuse.
            assert new == 400, new
            continue
        assert old != new, data
        assert why in (known_difference(data, old, new) or ""), data


# --- the common upgrade's negotiation against process_request -------------------------------
#
# ``negotiate`` checks and negotiates the common upgrade with websockets' helpers;
# anything else goes to ``process_request``. Both must answer the same bytes the same:
# the status, the 101's headers and bytes (accept, extensions, subprotocol, Server),
# the protocol's negotiated state, or the refusal.

DEFLATE = [
    ServerPerMessageDeflateFactory(
        server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
    )
]


def make_routes() -> Handshake:
    app = App()
    app.add_route("/echo", Echo)
    app.add_route("/chat", Echo, subprotocols=("chat", "superchat"))
    return Handshake(app, ServerConfig(origins=None), Host(), "wsup/test")


ROUTES = make_routes()


def negotiated(data: bytes, compression: bool, fast: bool) -> Any:
    """What a client gets for ``data``, with the common upgrade's negotiation or without."""
    protocol = UpgradeProtocol(extensions=DEFLATE if compression else None)
    parsed = RequestReader(protocol, ROUTES, Socket(PEER)).feed(data)
    if not isinstance(parsed, HTTPRequest):
        return parsed if parsed is None else parsed.status
    with contextlib.ExitStack() as stack:
        if not fast:
            stack.enter_context(mock.patch.object(_handshake, "negotiate", return_value=None))
        step = ROUTES.decide(parsed, protocol, Socket(PEER))
    decision = step.run() if isinstance(step, HookCall) else step
    assert isinstance(decision, Answer | Upgrade)
    response = decision.response
    sent = response.serialize()
    # The bytes are websockets' serialisation of the same response.
    assert sent == Response.serialize(response)
    sent = re.sub(rb"\r\nDate: [^\r]*", b"", sent)  # websockets dates its refusals
    if isinstance(decision, Answer):
        return decision.status, sent, decision.outcome
    return (
        101,
        sent,
        decision.subprotocol,
        protocol.subprotocol,
        protocol.origin,
        [repr(extension) for extension in protocol.extensions],
    )


def upgrade_request(lines: Sequence[tuple[str, str]], target: str = "/echo") -> bytes:
    head = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in lines)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


_KEYS = st.one_of(
    st.just(KEY),
    st.binary(min_size=16, max_size=16).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(min_size=0, max_size=20).map(lambda raw: base64.b64encode(raw).decode()),
    st.text("ABCabc012+/=_-. ", min_size=20, max_size=26),
    st.sampled_from(
        ["dGhlIHNhbXBsZSBub25jZR==", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ="]
    ),
)
_OPTIONAL: dict[str, st.SearchStrategy[str]] = {
    "Sec-WebSocket-Extensions": st.sampled_from(
        [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate;;",
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate; client_max_window_bits=9",
        ]
    ),
    "Sec-WebSocket-Protocol": st.sampled_from(["chat", "superchat, chat", "other", "chat;", ""]),
    "Origin": st.sampled_from(["https://example.com", "null", ""]),
}


_COMMON: dict[str, tuple[str, st.SearchStrategy[str]]] = {
    "Host": ("example.com", st.just("")),
    "Upgrade": ("websocket", st.sampled_from(["WebSocket", "websocket, h2c", "h2c", ""])),
    "Connection": (
        "Upgrade",
        st.sampled_from(["upgrade", "keep-alive, Upgrade", "Upgrade, keep-alive", "close", ","]),
    ),
    "Sec-WebSocket-Key": (KEY, _KEYS),
    "Sec-WebSocket-Version": ("13", st.sampled_from(["8", "13, 8", "013"])),
}


@st.composite
def upgrade_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An upgrade request near the common one (each header common, unusual, repeated or
    missing), and whether the server compresses."""
    lines: list[tuple[str, str]] = []
    for name, (usual, unusual) in _COMMON.items():
        # Mostly once and as clients send it; sometimes missing, twice, or unusual.
        times = draw(st.sampled_from([1] * 6 + [0, 2]))
        for _ in range(times):
            odd = draw(st.sampled_from([False] * 4 + [True]))
            value = draw(unusual) if odd else usual
            lines.append((draw(st.sampled_from([name, name.lower()])), value))
    for name, values in _OPTIONAL.items():
        times = draw(st.sampled_from([0, 0, 1, 1, 2]))
        lines += [(name, draw(values)) for _ in range(times)]
    lines += draw(st.lists(st.tuples(_TOKENS, _VALUES), max_size=3))
    target = draw(st.sampled_from(["/echo", "/chat", "/echo?x=1"]))
    return upgrade_request(draw(st.permutations(lines)), target), draw(st.booleans())


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(upgrade_requests())
def test_common_upgrade_negotiation_answers_as_process_request(case: tuple[bytes, bool]) -> None:
    """An upgrade request, common or not: the same answer (status, bytes, outcome) or the
    same 101 (bytes, subprotocol, negotiated extensions) with the fast negotiation as with
    websockets' process_request alone."""
    data, compression = case
    assert negotiated(data, compression, fast=True) == negotiated(data, compression, fast=False)


COMMON_UPGRADES = {
    "websockets": [
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("User-Agent", "Python/3.11 websockets/17.0"),
    ],
    "chrome": [
        ("Host", "example.com"),
        ("Connection", "Upgrade"),
        ("Pragma", "no-cache"),
        ("Upgrade", "websocket"),
        ("Origin", "https://example.com"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
        ("Cookie", "a=b"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
        ("Sec-WebSocket-Protocol", "superchat, chat"),
    ],
    "firefox": [
        ("Host", "example.com"),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", "https://example.com"),
        ("Sec-WebSocket-Protocol", "chat"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Sec-WebSocket-Key", KEY),
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "websocket"),
    ],
}


@pytest.mark.parametrize("compression", [False, True])
@pytest.mark.parametrize("target", ["/echo", "/chat"])
@pytest.mark.parametrize("client", list(COMMON_UPGRADES))
def test_what_clients_send_is_the_common_upgrade(
    client: str, target: str, compression: bool
) -> None:
    """The upgrades browsers and websockets send take the fast negotiation, which returns
    what process_request returns and leaves the protocol in the same state."""
    data = upgrade_request(COMMON_UPGRADES[client], target)
    fast, general = (UpgradeProtocol(extensions=DEFLATE if compression else None) for _ in "ab")
    request = RequestReader(fast, ROUTES, Socket(PEER)).feed(data)
    assert isinstance(request, HTTPRequest)
    subprotocols = ("chat", "superchat") if target == "/chat" else ()
    result = _handshake.negotiate(fast, request, subprotocols)
    assert result is not None
    general.available_subprotocols = [Subprotocol(p) for p in subprotocols] or None
    assert result == general.process_request(WSRequest(request.target, request.headers))
    assert (fast.origin, fast.subprotocol) == (general.origin, general.subprotocol)
    assert [repr(e) for e in fast.extensions] == [repr(e) for e in general.extensions]
    assert bool(fast.extensions) == compression
