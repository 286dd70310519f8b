"""Fuzz: arbitrary and mutated request heads against a running server, over raw sockets.

Whatever a client writes before the handshake completes, the server answers
with a well-formed HTTP response that is not a server error (no 5xx but 505,
for an unsupported HTTP version), or closes the connection when the client
left before finishing its request; it logs no error and goes on serving:
``/healthz`` and an echo round trip work after every input.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st

from tests.helpers.fuzz import (
    Fuzzer,
    Served,
    ServeFactory,
    echo_round_trip,
    open_parser,
    parse_response,
    read_response,
    send_quietly,
    upgrade_lines,
)

pytestmark = pytest.mark.e2e

_PATHS = st.one_of(
    st.sampled_from(
        [
            "/echo",
            "/echo/",
            "/echo?x=1&x=2#frag",
            "http://127.0.0.1/echo",
            "//echo",
            "/%2e%2e/echo",
            "/ech%6F",
            "*",
            "",
            "/healthz",
            "/readyz",
            "/metrics",
            "/nope",
        ]
    ),
    st.text(max_size=40).map(lambda text: "/" + text),
)
_NAMES = st.sampled_from(
    [
        b"Host",
        b"Upgrade",
        b"Connection",
        b"Sec-WebSocket-Key",
        b"Sec-WebSocket-Version",
        b"Sec-WebSocket-Extensions",
        b"Sec-WebSocket-Protocol",
        b"Origin",
        b"Cookie",
        b"Authorization",
        b"X-Forwarded-For",
        b"Forwarded",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Accept",
        b"",
        b"Bad Name",
        b"\xff\xfe",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"Upgrade",
            b"keep-alive, Upgrade",
            b"13",
            b"8",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"permessage-deflate; client_max_window_bits=16",
            b"permessage-deflate; server_max_window_bits",
            b"chat, superchat",
            b"https://example.com",
            b'for=10.0.0.1, for="[::1]:80"',
            b"10.0.0.1, garbage",
            b"5",
            b"chunked",
            b"",
        ]
    ),
    st.binary(max_size=60),
)


@dataclass(frozen=True)
class Mutation:
    """One change to the lines of a valid request: what, where, with which bytes."""

    kind: str
    where: int
    data: bytes = b""
    count: int = 1


_MUTATIONS = st.one_of(
    st.builds(
        Mutation,
        st.sampled_from(["drop", "duplicate", "swapcase", "fold", "truncate"]),
        st.integers(0, 30),
    ),
    st.builds(Mutation, st.just("garble"), st.integers(0, 30), st.binary(min_size=1, max_size=8)),
    st.builds(
        Mutation,
        st.just("add"),
        st.integers(0, 30),
        st.tuples(_NAMES, _VALUES).map(lambda pair: pair[0] + b": " + pair[1]),
    ),
    st.builds(
        Mutation,
        st.just("request-line"),
        st.integers(0, 30),
        st.sampled_from(
            [b"POST", b"HEAD", b"get", b"GET GET", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x", b""]
        ),
    ),
    st.builds(
        Mutation,
        st.just("big"),
        st.integers(0, 30),
        count=st.sampled_from([4_000, 8_190, 8_200, 70_000]),
    ),
    st.builds(
        Mutation, st.just("many"), st.integers(0, 30), count=st.sampled_from([50, 99, 101, 300])
    ),
)


def _mutate(lines: list[bytes], mutation: Mutation) -> list[bytes]:
    """``lines`` with ``mutation`` applied (a copy)."""
    lines = list(lines)
    if not lines:
        return lines
    i = mutation.where % len(lines)
    line = lines[i]
    match mutation.kind:
        case "drop":
            del lines[i]
        case "duplicate":
            lines.insert(i, line)
        case "swapcase":
            lines[i] = line.swapcase()
        case "fold":
            lines.insert(i + 1, b" folded continuation")
        case "truncate":
            lines[i] = line[: mutation.where % (len(line) + 1)]
        case "garble":
            at = mutation.where % (len(line) + 1)
            lines[i] = line[:at] + mutation.data + line[at + len(mutation.data) :]
        case "add":
            lines.insert(max(1, i), mutation.data)
        case "request-line":
            method, _, rest = lines[0].partition(b" ")
            target, _, version = rest.rpartition(b" ")
            if mutation.data.startswith(b"HTTP") or not mutation.data:
                lines[0] = b" ".join([method, target, mutation.data])
            else:
                lines[0] = b" ".join([mutation.data, target, version])
        case "big":
            lines.insert(max(1, i), b"X-Big: " + b"a" * mutation.count)
        case "many":
            lines[max(1, i) : max(1, i)] = [b"X-H%d: v" % n for n in range(mutation.count)]
    return lines


@dataclass(frozen=True)
class Attempt:
    """What one example writes, and so what the server must do.

    Attributes:
        data: everything written.
        finished: the data holds the end of a request head (a blank line after
            something else than empty lines, which a server ignores before a
            request line, RFC 9112 2.2), so the server must answer; otherwise the
            client half-closes after writing, and the server may answer or simply
            close.
    """

    data: bytes
    finished: bool


def _attempt(data: bytes) -> Attempt:
    return Attempt(data, b"\r\n\r\n" in data.lstrip(b"\r\n"))


@st.composite
def mutated_requests(draw: st.DrawFn) -> Attempt:
    """A valid upgrade (or plain GET) request with a few mutations, maybe cut short."""
    path = draw(_PATHS)
    lines = upgrade_lines(path)
    if draw(st.booleans()):
        lines += draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=3).map(_header_lines))
    for mutation in draw(st.lists(_MUTATIONS, max_size=4)):
        lines = _mutate(lines, mutation)
    ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    data = ending.join(lines) + ending + ending
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # the client gives up half-way
    return _attempt(data)


def _header_lines(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + value for name, value in pairs]


_JUNK = st.one_of(
    st.binary(max_size=3_000).map(_attempt),
    st.binary(max_size=500).map(lambda data: _attempt(data + b"\r\n\r\n")),
    st.builds(
        lambda prefix, junk: _attempt(prefix + junk),
        st.sampled_from([b"GET ", b"GET /echo HTTP/1.1\r\n", b"\x16\x03\x01", b"PRI * HTTP/2.0"]),
        st.binary(max_size=300),
    ),
)


def _check_answer(served: Served, attempt: Attempt) -> None:
    """Write ``attempt`` on a fresh connection and check what comes back."""
    with socket.create_connection(served.address, timeout=15) as sock:
        send_quietly(sock, attempt.data)
        if not attempt.finished:
            # Already reset by the server? Its answer may still be there.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        answer, end = read_response(sock)
        if not answer:
            assert not attempt.finished, f"no answer to a whole request head ({end})"
            return
        response = parse_response(answer)
        # 505 HTTP Version Not Supported is the answer to HTTP/1.0 or HTTP/2 in the
        # request line (RFC 9110 §15.6.6); any other 5xx would be the server's fault.
        assert response.status < 500 or response.status == 505, answer[:300]
        if attempt.finished:
            assert response.status != 408, "a whole request head waited for the timeout"
        if response.status == 101:
            assert end == "complete"
            assert response.header("upgrade") == ["websocket"], response
            echo_round_trip(sock, open_parser(*served.address), response.body)


def test_mutated_upgrade_requests_get_a_clean_answer(serve: ServeFactory, fuzz: Fuzzer) -> None:
    """Mutated upgrade requests: a well-formed answer (not 5xx) or a close; the server lives on."""
    with serve(trusted_proxies=["127.0.0.0/8"], origins=None, handshake_timeout=5) as served:

        def check(attempt: Attempt) -> None:
            _check_answer(served, attempt)
            served.assert_quiet()
            served.assert_healthy()

        fuzz.run(mutated_requests(), check)


def test_binary_junk_gets_a_clean_answer(serve: ServeFactory, fuzz: Fuzzer) -> None:
    """Arbitrary bytes instead of a request: 400 or a close, never a 5xx; the server lives on."""
    with serve(handshake_timeout=5) as served:

        def check(attempt: Attempt) -> None:
            _check_answer(served, attempt)
            served.assert_quiet()
            served.assert_healthy()

        fuzz.run(_JUNK, check)
