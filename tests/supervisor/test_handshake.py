"""The handshake decision with requests alone: no sockets, no event loop, no clock.

Requests are bytes fed to the real ``RequestReader``; the server is a
:class:`Host` that answers the decision's few questions from plain fields.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.utils import accept_key

from supervisor import Accept, App, Handler, HTTPResponse, Reject, Request, ServerConfig
from supervisor.server import _api
from supervisor.server._admission import Admission, Refusal
from supervisor.server._handshake import (
    Answer,
    Handshake,
    HookCall,
    HTTPRequest,
    RequestReader,
    Socket,
    Upgrade,
    UpgradeProtocol,
    answer_bytes,
    plain,
    remote_pair,
    serialize,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PEER = ("10.1.2.3", 40000)


class Host:
    """The server as a decision sees it, with every answer set by the test."""

    def __init__(self) -> None:
        self.accepting = True
        self.draining = False
        self.ready: tuple[bool, str] = (True, "ready")
        self.connections = 0
        self.admission = Admission(ServerConfig(), 0.0)
        self.metrics_asked: list[str | None] = []
        self.api_calls: list[tuple[_api.Call | _api.Answer, str]] = []

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    per_address = False

    def admit(self, client: str) -> Refusal | None:
        return self.admission.request(client, self.connections, 0.0)

    def release(self, client: str) -> None:
        self.admission.release(client)

    def render_metrics(self, accept: str | None) -> tuple[bytes, str]:
        self.metrics_asked.append(accept)
        return b"wsup_up 1\n", "text/plain; version=0.0.4"

    async def call_api(self, call: _api.Call | _api.Answer, client: str) -> Answer:
        self.api_calls.append((call, client))
        answer = call if isinstance(call, _api.Answer) else _api.Answer(200, {"ok": True})
        return self.api_answer(answer, client)

    def api_answer(self, answer: _api.Answer, client: str) -> Answer:
        return Answer(plain("wsup/test", answer.status, answer.json(), "application/json"))


class Echo(Handler):
    pass


def make(app: App | None = None, **config: Any) -> tuple[Handshake, Host]:
    if app is None:
        app = App()
        app.add_route("/chat/{room}", Echo)
    host = Host()
    settings = ServerConfig(**config)
    host.admission = Admission(settings, 0.0, jitter=lambda: 0.0)
    return Handshake(app, settings, host, "9.9.9"), host


def raw(
    target: str = "/chat/lobby",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    upgrade: bool = True,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: example.com"]
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
        ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read(handshake: Handshake, *chunks: bytes) -> Any:
    """What a reader makes of ``chunks``: None until the last one, then its result."""
    reader = RequestReader(UpgradeProtocol(), handshake, Socket(PEER))
    for chunk in chunks[:-1]:
        assert reader.feed(chunk) is None
    return reader.feed(chunks[-1])


def decide(
    handshake: Handshake,
    *chunks: bytes,
    ops_only: bool = False,
    api_port: bool = False,
    peer: tuple[str, int] = PEER,
) -> Any:
    socket = Socket(peer, ops_only, api_port)
    protocol = UpgradeProtocol()
    reader = RequestReader(protocol, handshake, socket)
    for chunk in chunks[:-1]:
        assert reader.feed(chunk) is None
    request = reader.feed(chunks[-1])
    if isinstance(request, Answer):
        return request
    assert isinstance(request, HTTPRequest), request
    return handshake.decide(request, protocol, socket)


def answer(handshake: Handshake, data: bytes, **kwargs: Any) -> Answer:
    decision = decide(handshake, data, **kwargs)
    if isinstance(decision, HookCall):
        decision = decision.run()
    assert isinstance(decision, Answer), decision
    return decision


# --- reading ------------------------------------------------------------------------


def test_the_reader_waits_for_the_whole_head() -> None:
    """Part of a request is not a request yet; the rest completes it, query parsed."""
    handshake, _ = make()
    data = raw("/chat/lobby?user=ann&user=bob")
    request = read(handshake, data[:20], data[20:])
    assert isinstance(request, HTTPRequest)
    assert (request.method, request.path) == ("GET", "/chat/lobby")
    assert request.target == "/chat/lobby?user=ann&user=bob"
    assert request.query == {"user": ["ann", "bob"]}
    assert request.body == b""


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP\r\n\r\n", 400),
        (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "long-line", "long-header"],
)
def test_what_is_not_a_request_gets_an_answer_counted_as_failed(data: bytes, status: int) -> None:
    """Invalid bytes end the handshake with an HTTP answer and a ``failed`` outcome."""
    handshake, _ = make()
    parsed = read(handshake, data)
    assert isinstance(parsed, Answer)
    assert parsed.status == status
    assert parsed.outcome is not None
    assert parsed.outcome.result == "failed"
    assert parsed.outcome.reason.startswith("invalid HTTP request")
    assert parsed.response.headers["Server"] == "wsup"


@pytest.mark.parametrize(
    ("config", "extra", "status", "problem"),
    [
        ({"max_headers": 10}, [(f"X-{n}", "v") for n in range(6)], 431, "more than 10 header"),
        ({"max_header_bytes": 2048}, [("X-A", "a" * 1000), ("X-B", "b" * 1000)], 431, "head over"),
        ({"max_header_bytes": 1024}, [], 414, "request line too long"),
    ],
    ids=["count", "bytes", "line-over-the-head-limit"],
)
def test_the_head_limits_are_settings(
    config: dict[str, int], extra: list[tuple[str, str]], status: int, problem: str
) -> None:
    """``max_headers`` and ``max_header_bytes``: 431 past them (414 for the request
    line), counted as a limit; within them the same request is upgraded."""
    handshake, _ = make(None, **config)
    target = "/chat/lobby?q=" + "x" * 1100 if status == 414 else "/chat/lobby"
    refused = read(handshake, raw(target, headers=extra))
    assert isinstance(refused, Answer)
    assert refused.status == status
    assert refused.outcome is not None
    assert refused.outcome.limit == "request_head"
    assert problem in refused.outcome.reason
    assert isinstance(decide(make()[0], raw(target, headers=extra)), Upgrade)


def test_a_head_that_never_ends_is_refused_once_past_the_limit() -> None:
    """A header value streamed without end is not held: 431 as soon as the head
    read passes ``max_header_bytes``, long before the client stops sending."""
    handshake, _ = make(max_header_bytes=4096)
    reader = RequestReader(UpgradeProtocol(), handshake, Socket(PEER))
    assert reader.feed(b"GET /chat/lobby HTTP/1.1\r\nX-Endless: ") is None
    fed = 0
    result = None
    while result is None and fed < 1 << 20:
        result = reader.feed(b"a" * 1000)
        fed += 1000
    assert isinstance(result, Answer)
    assert result.status == 431
    assert fed <= 5000


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET /chat/lobby HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/2.0 is not supported"),
        (b"BREW /chat/lobby HTTP/1.1\r\n\r\n", "unknown request method"),
        (b"GET /chat/lobby HTTP/1.1\r\nBad Name: x\r\n\r\n", "Invalid header token"),
        (
            b"POST /hook HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "Content-Length",
        ),
        (b"POST /hook HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    ],
    ids=["http2", "method", "header-name", "two-lengths", "bad-length"],
)
def test_the_parser_names_what_is_wrong(data: bytes, problem: str) -> None:
    """A request httptools refuses gets 400 with the problem in its body."""
    handshake, _ = make(webhook_app())
    refused = read(handshake, data)
    assert isinstance(refused, Answer)
    assert refused.status == 400
    assert problem in refused.response.body.decode()


def test_the_protocol_keeps_frames_sent_with_the_request_but_not_the_head() -> None:
    """Frames in the same read as the request reach the protocol; the head, even a
    large one, never enters its buffer, so the connection holds none of it."""
    handshake, _ = make()
    protocol = UpgradeProtocol()
    frame = b"\x81\x85\x00\x00\x00\x00hello"  # a masked text frame, zero mask
    data = raw(headers=[(f"X-Pad-{n}", "p" * 500) for n in range(50)]) + frame
    reader = RequestReader(protocol, handshake, Socket(PEER))
    request = reader.feed(data)
    assert isinstance(request, HTTPRequest)
    upgrade = handshake.decide(request, protocol, Socket(PEER))
    assert isinstance(upgrade, Upgrade)
    protocol.send_response(upgrade.response)
    assert [event.data for event in protocol.events_received()] == [b"hello"]  # type: ignore[union-attr]
    assert sys.getsizeof(protocol.reader.buffer) < 1024


def test_two_connection_lines_are_one_valid_upgrade() -> None:
    """``Connection: keep-alive`` and ``Connection: Upgrade`` on two lines: upgraded."""
    handshake, _ = make()
    data = raw().replace(b"Connection: Upgrade", b"Connection: keep-alive\r\nConnection: Upgrade")
    assert isinstance(decide(handshake, data), Upgrade)


# --- request bodies -----------------------------------------------------------------


def post(target: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: example.com", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def webhook_app(max_body: int = 64) -> App:
    app = App()
    app.http("/hook", methods=("POST",), max_body=max_body)(
        lambda request: HTTPResponse(f"{request.method} {request.body!r}")
    )
    return app


def test_a_body_is_read_whole_before_the_decision() -> None:
    """A POST to a route that takes one: the reader waits for Content-Length bytes,
    however they are split, and the handler sees them."""
    handshake, _ = make(webhook_app())
    data = post("/hook", b'{"event": "push"}')
    head_end = data.index(b"\r\n\r\n") + 4
    call = decide(handshake, data[:10], data[10 : head_end + 3], data[head_end + 3 :])
    assert isinstance(call, HookCall)
    assert call.request.method == "POST"
    assert call.request.body == b'{"event": "push"}'
    answer = call.run()
    assert isinstance(answer, Answer)
    assert answer.response.body == b'POST b\'{"event": "push"}\''


@pytest.mark.parametrize(
    ("data", "status", "allow"),
    [
        (post("/hook", b"x" * 65), 413, None),
        (post("/chat/lobby", b"hi"), 405, "GET, HEAD"),
        (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n",
            411,
            None,
        ),
    ],
    ids=["too-large", "no-body-here", "chunked"],
)
def test_bodies_refused_before_they_are_read(data: bytes, status: int, allow: str | None) -> None:
    """Over max_body: 413; a target that takes no body: 405 with Allow; chunked: 411."""
    handshake, _ = make(webhook_app())
    refused = read(handshake, data)
    assert isinstance(refused, Answer)
    assert refused.status == status
    if allow is not None:
        assert refused.response.headers["Allow"] == allow


def test_a_get_on_a_post_route_is_a_405() -> None:
    """The route's methods are the Allow header."""
    handshake, _ = make(webhook_app())
    refused = answer(handshake, raw("/hook", upgrade=False))
    assert refused.status == 405
    assert refused.response.headers["Allow"] == "POST"


# --- the server API -----------------------------------------------------------------


def test_the_server_api_is_decided_here_and_performed_by_the_host() -> None:
    """A valid API request is a call the host performs; the decision only parses it."""
    handshake, host = make(api_key="k3y")
    body = json.dumps({"address": "user:ada", "message": "hi"}).encode()
    call = decide(handshake, post("/api/send", body, [("Authorization", "Bearer k3y")]))
    assert isinstance(call, HookCall)
    assert host.api_calls == []
    pending = call.run()
    assert not isinstance(pending, Answer | Upgrade)
    pending.close()
    assert host.api_calls == []  # nothing is performed before the driver awaits it


@pytest.mark.anyio
async def test_an_api_call_answers_json() -> None:
    """Awaited, the host's answer comes back; the call names what to do."""
    handshake, host = make(api_key="k3y")
    body = json.dumps({"address": "user:ada", "message": "hi"}).encode()
    call = decide(handshake, post("/api/send", body, [("Authorization", "Bearer k3y")]))
    answer = await call.run()
    assert isinstance(answer, Answer)
    assert (answer.status, answer.response.body) == (200, b'{"ok":true}\n')
    assert host.api_calls == [(_api.Call("send", ("user:ada",), "hi"), PEER[0])]


def test_the_api_is_a_404_where_it_is_not_served() -> None:
    """No key: /api/ is a 404 saying how to turn it on; with --api-port, the main port
    says where it is."""
    off, _ = make()
    refused = answer(off, raw("/api/presence", upgrade=False))
    assert refused.status == 404
    assert b"the server API is off" in refused.response.body
    elsewhere, _ = make(api_key="k3y", api_port=9999)
    refused = answer(elsewhere, raw("/api/presence", upgrade=False))
    assert b"served on port 9999" in refused.response.body
    on_port = decide(elsewhere, raw("/api/presence", upgrade=False), ops_only=True, api_port=True)
    assert isinstance(on_port, HookCall)


# --- answers the server gives itself ------------------------------------------------


def test_operational_endpoints() -> None:
    """/healthz, /readyz (from the host's readiness) and /metrics (the host renders)."""
    handshake, host = make()
    healthz = answer(handshake, raw("/healthz", upgrade=False))
    assert (healthz.status, healthz.response.body, healthz.outcome) == (200, b"ok\n", None)
    host.ready = (False, "draining")
    readyz = answer(handshake, raw("/readyz", upgrade=False))
    assert (readyz.status, readyz.response.body) == (503, b"draining\n")
    metrics = answer(
        handshake,
        raw("/metrics", upgrade=False, headers=[("Accept", "application/openmetrics-text")]),
    )
    assert (metrics.status, metrics.response.body) == (200, b"wsup_up 1\n")
    assert metrics.response.headers["Content-Type"] == "text/plain; version=0.0.4"
    assert host.metrics_asked == ["application/openmetrics-text"]


def test_the_metrics_port_serves_only_the_operational_paths() -> None:
    """On the metrics port a WebSocket route is a 404; /healthz still answers."""
    handshake, _ = make()
    assert answer(handshake, raw("/chat/lobby"), ops_only=True).status == 404
    assert answer(handshake, raw("/healthz", upgrade=False), ops_only=True).status == 200


def test_ops_port_only_makes_the_main_port_answer_them_as_unknown_paths() -> None:
    """ops_port_only: the main port answers /healthz as it does /nowhere; the ops port serves it."""
    handshake, _ = make(ops_port_only=True, metrics_port=9100)
    for path in ("/healthz", "/readyz", "/metrics"):
        refused = answer(handshake, raw(path, upgrade=False))
        unknown = answer(handshake, raw("/nowhere", upgrade=False))
        assert refused.status == unknown.status == 404
        assert refused.response.body == f"no route for {path}\n".encode()
        assert refused.outcome is not None
        assert (refused.outcome.result, refused.outcome.reason) == ("rejected", "no_route")
        assert answer(handshake, raw(path, method="HEAD", upgrade=False)).status == 404
        assert answer(handshake, raw(path, upgrade=False), ops_only=True).status == 200
        head = answer(handshake, raw(path, method="HEAD", upgrade=False), ops_only=True)
        assert head.status == 200


def test_ops_port_only_needs_a_port_that_serves_them() -> None:
    """Without metrics_port or api_port the endpoints would be served nowhere: refused."""
    with pytest.raises(ValueError, match="ops_port_only needs metrics_port"):
        ServerConfig(ops_port_only=True)
    ServerConfig(ops_port_only=True, api_port=9101, api_key="k")


def test_ops_allow_admits_the_listed_networks_only() -> None:
    """A peer outside ops_allow gets 403 naming its address, for GET and HEAD, on every
    port; inside it, the answer; WebSocket routes are not concerned."""
    handshake, _ = make(ops_allow=["10.0.0.0/8", "127.0.0.1/32"])
    assert answer(handshake, raw("/metrics", upgrade=False)).status == 200
    assert answer(handshake, raw("/healthz", upgrade=False), peer=("127.0.0.1", 5)).status == 200
    outsider = ("203.0.113.5", 4000)
    for ops_only in (False, True):
        refused = answer(
            handshake, raw("/metrics", upgrade=False), peer=outsider, ops_only=ops_only
        )
        assert refused.status == 403
        assert refused.response.body == b"forbidden: /metrics is not served to 203.0.113.5\n"
        assert refused.outcome is not None
        assert (refused.outcome.reason, refused.outcome.client) == ("ops_forbidden", "203.0.113.5")
        head = answer(handshake, raw("/readyz", method="HEAD", upgrade=False), peer=outsider)
        assert head.status == 403
    # A dual-stack socket reports an IPv4 peer as an IPv4-mapped address.
    mapped = answer(handshake, raw("/healthz", upgrade=False), peer=("::ffff:10.9.9.9", 5))
    assert mapped.status == 200
    assert isinstance(decide(handshake, raw(), peer=outsider), Upgrade)


def test_ops_allow_matches_the_client_a_trusted_proxy_names() -> None:
    """Behind a trusted proxy the forwarded client is matched, not the proxy; from
    anyone else a forwarding header is not believed."""
    handshake, _ = make(ops_allow=["192.168.0.0/16"], trusted_proxies=["10.0.0.0/8"])
    via_proxy = [("X-Forwarded-For", "203.0.113.9")]
    refused = answer(handshake, raw("/metrics", upgrade=False, headers=via_proxy))
    assert (refused.status, refused.response.body) == (
        403,
        b"forbidden: /metrics is not served to 203.0.113.9\n",
    )
    inside = [("X-Forwarded-For", "192.168.1.20")]
    assert answer(handshake, raw("/metrics", upgrade=False, headers=inside)).status == 200
    # The proxy's own probe (no header) comes from the proxy: not in the list.
    assert answer(handshake, raw("/healthz", upgrade=False)).status == 403
    spoofed = answer(
        handshake, raw("/metrics", upgrade=False, headers=inside), peer=("203.0.113.5", 1)
    )
    assert spoofed.status == 403


@pytest.mark.parametrize(
    ("setting", "expected"), [("version", "wsup/9.9.9"), ("name", "wsup"), ("none", None)]
)
def test_the_server_header_on_every_answer_and_the_101(setting: str, expected: str | None) -> None:
    """server_header: the version, the name alone, or no header, on answers, on
    websockets' own refusals (426) and on the 101."""
    handshake, _ = make(server_header=setting)
    upgrade = decide(handshake, raw())
    assert isinstance(upgrade, Upgrade)
    responses = [
        upgrade.response,
        answer(handshake, raw("/healthz", upgrade=False)).response,
        answer(handshake, raw("/nowhere")).response,
        answer(handshake, raw("/chat/lobby", upgrade=False)).response,  # 426
        read(handshake, b"NOT HTTP\r\n\r\n").response,
    ]
    assert [r.headers.get_all("Server") for r in responses] == [
        [expected] if expected else []
    ] * len(responses)


def test_head_gets_the_status_of_the_get_without_a_body() -> None:
    """HEAD: 200 for endpoints, 426 for a WebSocket route, 404 elsewhere; no body."""
    handshake, host = make()
    statuses = {
        path: answer(handshake, raw(path, method="HEAD", upgrade=False)).status
        for path in ("/healthz", "/chat/lobby", "/nowhere")
    }
    assert statuses == {"/healthz": 200, "/chat/lobby": 426, "/nowhere": 404}
    host.ready = (False, "backplane down")
    head = answer(handshake, raw("/readyz", method="HEAD", upgrade=False))
    assert (head.status, head.response.body) == (503, b"")
    assert "Content-Length" not in head.response.headers


def test_other_methods_get_405_with_allow() -> None:
    """DELETE and friends: 405, Allow: GET, HEAD; not a refused handshake."""
    handshake, _ = make()
    refused = answer(handshake, raw("/chat/lobby", method="DELETE"))
    assert refused.status == 405
    assert refused.response.headers["Allow"] == "GET, HEAD"
    assert refused.outcome is None


def test_a_repeated_singleton_header_is_a_400() -> None:
    """Two Origin lines: 400 naming the header, counted as failed."""
    handshake, _ = make()
    refused = answer(
        handshake, raw(headers=[("Origin", "https://a.example"), ("Origin", "https://b.example")])
    )
    assert refused.status == 400
    assert b"more than one Origin header" in refused.response.body
    assert refused.outcome is not None
    assert refused.outcome.result == "failed"


@pytest.mark.parametrize(
    ("state", "status", "reason", "body"),
    [
        ({}, 404, "no_route", b"no route for /elsewhere\n"),
        ({"accepting": False}, 503, "not_accepting", b"not accepting"),
        (
            {"accepting": False, "draining": True},
            503,
            "not_accepting",
            b"server is shutting down",
        ),
        ({"connections": 2}, 503, "max_connections", b"too many connections"),
    ],
    ids=["no-route", "not-accepting", "draining", "max-connections"],
)
def test_refusals_by_the_server(
    state: dict[str, Any], status: int, reason: str, body: bytes
) -> None:
    """Each refusal has its status, body and ``rejected`` reason label."""
    handshake, host = make(max_connections=2)
    for name, value in state.items():
        setattr(host, name, value)
    target = "/elsewhere" if reason == "no_route" else "/chat/lobby"
    refused = answer(handshake, raw(target))
    assert refused.status == status
    assert body in refused.response.body
    assert refused.outcome is not None
    assert (refused.outcome.result, refused.outcome.reason) == ("rejected", reason)


def test_the_origin_policy() -> None:
    """A listed origin upgrades; another is a 403 refused for ``origin``."""
    handshake, _ = make(origins=["https://good.example"])
    assert isinstance(decide(handshake, raw(headers=[("Origin", "https://good.example")])), Upgrade)
    refused = answer(handshake, raw(headers=[("Origin", "https://evil.example")]))
    assert refused.status == 403
    assert refused.outcome is not None
    assert refused.outcome.reason == "origin"


def test_a_plain_get_of_a_websocket_route_is_a_426() -> None:
    """No Upgrade on a WebSocket route: websockets' 426, counted as failed."""
    handshake, _ = make()
    refused = answer(handshake, raw(upgrade=False))
    assert refused.status == 426
    assert refused.outcome is not None
    assert refused.outcome.result == "failed"


# --- upgrades -----------------------------------------------------------------------


def test_without_hooks_the_upgrade_is_decided_at_once() -> None:
    """No hooks: an Upgrade straight away, with the 101, the params and the peer."""
    handshake, _ = make()
    upgrade = decide(handshake, raw("/chat/l%C3%B6bby?x=1", headers=[("Cookie", "a=1")]))
    assert isinstance(upgrade, Upgrade)
    assert upgrade.response.status_code == 101
    expected = base64.b64encode(
        hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert upgrade.response.headers["Sec-WebSocket-Accept"] == expected
    assert upgrade.pattern == "/chat/{room}"
    request = upgrade.request
    assert dict(request.params) == {"room": "löbby"}
    assert request.query == {"x": ["1"]}
    assert request.cookies == {"a": "1"}
    assert request.remote_address == PEER
    assert request.client_address == PEER[0]
    assert upgrade.subprotocol is None
    assert dict(upgrade.values) == {}


def test_the_client_address_behind_a_trusted_proxy() -> None:
    """A trusted peer's X-Forwarded-For names the client."""
    handshake, _ = make(trusted_proxies=["10.0.0.0/8"])
    upgrade = decide(handshake, raw(headers=[("X-Forwarded-For", "203.0.113.9")]))
    assert isinstance(upgrade, Upgrade)
    assert upgrade.request.client_address == "203.0.113.9"


def test_the_route_subprotocol_is_negotiated() -> None:
    """The route's subprotocol, offered by the client, is confirmed in the 101."""
    app = App()
    app.add_route("/chat/{room}", Echo, subprotocols=["chat.v1"])
    handshake, _ = make(app)
    upgrade = decide(handshake, raw(headers=[("Sec-WebSocket-Protocol", "x, chat.v1")]))
    assert isinstance(upgrade, Upgrade)
    assert upgrade.subprotocol == "chat.v1"
    assert upgrade.request.subprotocols == ("x", "chat.v1")
    assert upgrade.response.headers["Sec-WebSocket-Protocol"] == "chat.v1"


def hooked_app(*hooks: Any, route_hook: Any = None) -> App:
    app = App()
    for hook in hooks:
        app.handshake(hook)
    app.add_route("/chat/{room}", Echo, hook=route_hook)
    return app


def test_plain_hooks_decide_without_waiting() -> None:
    """Plain hooks: run() returns the Upgrade itself, headers and values merged."""
    seen: list[str] = []

    def app_hook(request: Request) -> Accept:
        seen.append("app")
        return Accept(headers=[("X-A", "1")], values={"user": "ann"})

    def route_hook(request: Request) -> None:
        seen.append(f"route {request.params['room']}")

    handshake, _ = make(hooked_app(app_hook, route_hook=route_hook))
    call = decide(handshake, raw())
    assert isinstance(call, HookCall)
    assert seen == []  # the first step calls no user code
    upgrade = call.run()
    assert isinstance(upgrade, Upgrade)
    assert seen == ["app", "route lobby"]
    assert upgrade.response.headers["X-A"] == "1"
    assert dict(upgrade.values) == {"user": "ann"}


def test_the_101_bytes_carry_the_negotiation_the_server_and_the_hooks_headers() -> None:
    """The 101 as written: websockets' lines (upgrade, accept, subprotocol), the Server
    header, then the subprotocol a hook chose and the headers hooks added; the
    bytes websockets' own Response.serialize writes."""

    def app_hook(request: Request) -> Accept:
        return Accept(headers=[("X-A", "1"), ("Set-Cookie", "s=2")], subprotocol="superchat")

    app = hooked_app(app_hook)
    app.add_route("/room", Echo, subprotocols=("chat", "superchat"))
    handshake, _ = make(app)
    call = decide(handshake, raw("/room", headers=[("Sec-WebSocket-Protocol", "superchat, chat")]))
    assert isinstance(call, HookCall)
    upgrade = call.run()
    assert isinstance(upgrade, Upgrade)
    accept = accept_key(KEY)
    sent = upgrade.response.serialize()
    assert (
        sent
        == (
            "HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n"
            "Sec-WebSocket-Protocol: chat\r\n"
            "Server: wsup\r\n"
            "Sec-WebSocket-Protocol: superchat\r\n"
            "X-A: 1\r\n"
            "Set-Cookie: s=2\r\n"
            "\r\n"
        ).encode()
    )
    assert sent == Response.serialize(upgrade.response)


_FIELD = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    min_size=1,
    max_size=12,
)


@given(
    st.integers(100, 599),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
    st.lists(st.tuples(_FIELD.filter(lambda name: ":" not in name), _FIELD), max_size=6),
    st.binary(max_size=20),
)
def test_serialize_writes_what_websockets_writes(
    status: int, phrase: str, lines: list[tuple[str, str]], body: bytes
) -> None:
    """serialize() is byte for byte websockets' Response.serialize, with or without
    headers or a body, latin-1 values included."""
    response = Response(status, phrase, Headers(lines), body)
    assert serialize(response) == response.serialize()


def test_a_hook_that_rejects_ends_the_handshake() -> None:
    """Reject: its status, body and headers; later hooks do not run."""
    later: list[Request] = []
    handshake, _ = make(
        hooked_app(
            lambda request: Reject(401, "who are you?\n", headers=[("WWW-Authenticate", "Bearer")]),
            later.append,
        )
    )
    refused = answer(handshake, raw())
    assert (refused.status, refused.response.body) == (401, b"who are you?\n")
    assert refused.response.headers["WWW-Authenticate"] == "Bearer"
    assert refused.outcome is not None
    assert (refused.outcome.result, refused.outcome.reason) == ("rejected", "hook")
    assert later == []


def test_a_hook_that_raises_is_a_500() -> None:
    """A hook's exception: 500, refused by ``hook``."""

    def broken(request: Request) -> None:
        raise RuntimeError("bug")

    handshake, _ = make(hooked_app(broken))
    refused = answer(handshake, raw())
    assert refused.status == 500
    assert refused.outcome is not None
    assert refused.outcome.reason == "hook"


def test_a_subprotocol_the_client_did_not_offer_is_a_500() -> None:
    """A hook choosing an unoffered subprotocol is a server bug: 500, failed."""
    handshake, _ = make(hooked_app(lambda request: Accept(subprotocol="nope")))
    refused = answer(handshake, raw(headers=[("Sec-WebSocket-Protocol", "chat.v1")]))
    assert refused.status == 500
    assert refused.outcome is not None
    assert refused.outcome.result == "failed"


def test_a_hook_may_choose_an_offered_subprotocol() -> None:
    """The hook's choice wins over the route's and is in the 101."""
    handshake, _ = make(hooked_app(lambda request: Accept(subprotocol="b")))
    call = decide(handshake, raw(headers=[("Sec-WebSocket-Protocol", "a, b")]))
    upgrade = call.run()
    assert isinstance(upgrade, Upgrade)
    assert upgrade.subprotocol == "b"
    assert upgrade.response.headers["Sec-WebSocket-Protocol"] == "b"


@pytest.mark.anyio
async def test_an_async_hook_makes_the_rest_awaitable() -> None:
    """From the first hook returning an awaitable on, run() gives a coroutine to await;
    the plain hooks before it ran already, those after it run inside it."""
    order: list[str] = []

    def first(request: Request) -> Accept:
        order.append("first")
        return Accept(headers=[("X-1", "1")])

    async def second(request: Request) -> Accept:
        order.append("second")
        return Accept(headers=[("X-2", "2")])

    def third(request: Request) -> Reject | None:
        order.append("third")
        return None

    handshake, _ = make(hooked_app(first, second, third))
    call = decide(handshake, raw())
    assert isinstance(call, HookCall)
    pending = call.run()
    assert not isinstance(pending, Answer | Upgrade)
    assert order == ["first"]
    upgrade = await pending
    assert isinstance(upgrade, Upgrade)
    assert order == ["first", "second", "third"]
    assert (upgrade.response.headers["X-1"], upgrade.response.headers["X-2"]) == ("1", "2")


@pytest.mark.anyio
async def test_an_async_hook_that_rejects() -> None:
    """An awaited Reject ends the handshake like a plain one."""

    async def no(request: Request) -> Reject:
        return Reject(403, "no\n")

    handshake, _ = make(hooked_app(no))
    pending = decide(handshake, raw()).run()
    refused = await pending
    assert isinstance(refused, Answer)
    assert refused.status == 403


# --- plain HTTP routes --------------------------------------------------------------


def http_app(handler: Any) -> App:
    app = App()
    app.add_route("/chat/{room}", Echo)
    app.http("/status")(handler)
    return app


def test_an_http_route_answers_with_its_response() -> None:
    """A plain handler's HTTPResponse is the answer; it sees the query."""
    handshake, _ = make(
        http_app(
            lambda request: HTTPResponse(
                f"hi {request.query_param('name')}", status=201, headers=[("X-Y", "z")]
            )
        )
    )
    call = decide(handshake, raw("/status?name=ann", upgrade=False))
    assert isinstance(call, HookCall)
    response = call.run()
    assert isinstance(response, Answer)
    assert (response.status, response.response.body) == (201, b"hi ann")
    assert response.response.headers["X-Y"] == "z"
    assert response.outcome is None


@pytest.mark.anyio
async def test_an_async_http_route() -> None:
    """An ``async def`` handler's answer comes from awaiting run()."""

    async def status(request: Request) -> HTTPResponse:
        return HTTPResponse("fine")

    handshake, _ = make(http_app(status))
    pending = decide(handshake, raw("/status", upgrade=False)).run()
    response = await pending
    assert isinstance(response, Answer)
    assert response.response.body == b"fine"


@pytest.mark.parametrize(
    "handler",
    [
        lambda request: 1 / 0,
        lambda request: "not a response",
        lambda request: HTTPResponse("x", status=999),
    ],
    ids=["raises", "wrong-type", "bad-status"],
)
def test_a_broken_http_route_is_a_500(handler: Any) -> None:
    """Whatever the handler does wrong, the client gets a 500."""
    handshake, _ = make(http_app(handler))
    assert answer(handshake, raw("/status", upgrade=False)).status == 500


# --- what the driver writes ---------------------------------------------------------


def test_answer_bytes_adds_the_date_the_driver_read() -> None:
    """The decision reads no clock: the driver's Date goes first, once."""
    handshake, _ = make()
    healthz = answer(handshake, raw("/healthz", upgrade=False))
    data = answer_bytes(healthz.response, "Sun, 06 Dec 2026 14:00:00 GMT")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1] == b"Date: Sun, 06 Dec 2026 14:00:00 GMT"
    assert b"Server: wsup" in lines
    assert body == b"ok\n"


def test_remote_pair() -> None:
    """Socket addresses become (host, port); a UNIX socket's path has port 0."""
    assert remote_pair(("::1", 80, 0, 0)) == ("::1", 80)
    assert remote_pair("/run/wsup.sock") == ("/run/wsup.sock", 0)
    assert remote_pair(None) == ("", 0)
