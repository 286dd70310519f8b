"""Node's ``ws`` client against ``examples/echo.py``: an independent WebSocket implementation.

The scripts in ``tests/e2e/node/`` talk to a ``python -m supervisor serve
examples.echo:app`` child process and print one JSON report each; the tests
assert on the reports and on the server's ``connection.closed`` log lines.
``node`` and ``tests/e2e/node_modules/ws`` come from ``.ci/test-deps``: when
they are missing these tests fail.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from supervisor import ServerConfig
from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.node import node

pytestmark = pytest.mark.e2e

E2E = Path(__file__).resolve().parent
SCRIPTS = E2E / "node"
MAX_SIZE = ServerConfig().max_size  # examples/echo.py keeps the default (1 MiB)


def run_script(script: str, *args: str, stdin: str = "") -> dict[str, Any]:
    """Run a script of ``tests/e2e/node`` and return its JSON report."""
    result = subprocess.run(
        [node(), str(SCRIPTS / script), *args],
        cwd=E2E,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["errors"] == [], report
    return report


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerProcess]:
    """One echo server for the module's tests (a child process, killed at the end)."""
    with ServerProcess("examples.echo:app") as server:
        server.wait_started()
        yield server


def text(data: str) -> dict[str, Any]:
    """A text message of the echo conversation."""
    return {"type": "text", "data": data}


def binary(data: bytes) -> dict[str, Any]:
    """A binary message of the echo conversation."""
    return {"type": "binary", "base64": base64.b64encode(data).decode()}


def received(report: dict[str, Any]) -> list[str | bytes]:
    """The messages the client received: ``str`` for text, ``bytes`` for binary."""
    messages: list[str | bytes] = []
    for item in report["received"]:
        data = base64.b64decode(item["base64"])
        messages.append(data if item["binary"] else data.decode("utf-8"))
    return messages


def converse(
    server: ServerProcess, messages: list[dict[str, Any]], reason: str = "bye"
) -> dict[str, Any]:
    """Run an echo conversation that ends with a close 1000 and ``reason``; return the report."""
    spec = {"messages": messages, "close": {"code": 1000, "reason": reason}}
    return run_script("echo_client.js", server.url("/echo"), stdin=json.dumps(spec))


def _reason(reason: str) -> Callable[[dict[str, Any]], bool]:
    """Select the ``connection.closed`` record with this close reason."""
    return lambda record: record.get("reason") == reason


def test_text_and_binary_come_back_with_their_type(echo_server: ServerProcess) -> None:
    """Text stays text and binary stays binary, byte for byte, for Node's ws client."""
    payloads: list[str | bytes] = [
        "hello",
        b"\x00\x01\x02\xfe\xff",
        "héllo wörld ✓ 🚀",
        b"",
        "",
        bytes(range(256)) * 40,
        "x" * 70_000,  # past the 16-bit length field
    ]
    report = converse(echo_server, [text(p) if isinstance(p, str) else binary(p) for p in payloads])
    assert report["opened"]
    assert [item["binary"] for item in report["received"]] == [
        isinstance(p, bytes) for p in payloads
    ]
    assert received(report) == payloads
    assert report["close"] == {"code": 1000, "reason": "bye"}


def test_fragmented_messages_are_assembled(echo_server: ServerProcess) -> None:
    """A message Node sends in several frames comes back as one message of the same type."""
    report = converse(
        echo_server,
        [
            {"type": "fragments", "binary": False, "parts": ["frag", "mented ", "téxt"]},
            {"type": "fragments", "binary": True, "parts": ["AAA", "BBB"]},
        ],
    )
    assert received(report) == ["fragmented téxt", b"AAABBB"]
    assert report["close"] == {"code": 1000, "reason": "bye"}


def test_no_subprotocol_or_extension_is_negotiated(echo_server: ServerProcess) -> None:
    """The echo route speaks no subprotocol, and compression is off by default."""
    report = converse(echo_server, [text("ping")])
    assert report["protocol"] == ""
    assert report["extensions"] == ""
    assert received(report) == ["ping"]


def test_normal_close_is_logged_with_its_counts(echo_server: ServerProcess) -> None:
    """The server logs a client-initiated 1000 close with the messages and bytes exchanged."""
    report = converse(echo_server, [text("one"), binary(b"two")], reason="counted")
    assert report["close"] == {"code": 1000, "reason": "counted"}
    closed = echo_server.wait_for_event("connection.closed", where=_reason("counted"))
    assert closed["code"] == 1000
    assert closed["initiator"] == "client"
    assert (closed["messages_in"], closed["messages_out"]) == (2, 2)
    assert closed["bytes_in"] > closed["bytes_out"] > 0  # client frames carry a mask


def test_message_of_exactly_max_size_is_echoed(echo_server: ServerProcess) -> None:
    """A 1 MiB binary message (exactly max_size) is accepted and echoed intact."""
    report = run_script("big_message.js", echo_server.url("/echo"), str(MAX_SIZE))
    [connection] = report["connections"]
    assert connection["echoed"] == {"binary": True, "length": MAX_SIZE, "intact": True}
    assert connection["close"] == {"code": 1000, "reason": "done"}


def test_message_beyond_max_size_closes_with_1009(echo_server: ServerProcess) -> None:
    """A message of max_size + 1 is never echoed: the server closes with 1009 (message too big)."""
    report = run_script("big_message.js", echo_server.url("/echo"), str(MAX_SIZE + 1))
    [connection] = report["connections"]
    assert connection["opened"]
    assert connection["echoed"] is None
    assert connection["close"] == {
        "code": 1009,
        "reason": f"frame with {MAX_SIZE + 1} bytes exceeds limit of {MAX_SIZE} bytes",
    }
    closed = echo_server.wait_for_event(
        "connection.closed", where=_reason(connection["close"]["reason"])
    )
    assert (closed["code"], closed["initiator"]) == (1009, "server")
    assert closed["messages_in"] == 0


def test_client_still_sending_a_too_big_message_gets_1009(echo_server: ServerProcess) -> None:
    """Node's client, still writing a 4 MiB message when the server fails, sees 1009."""
    # The server keeps reading after failing the connection, so the client is not
    # reset and reads the 1009 close frame. The next test is the
    # deterministic reproducer.
    size, attempts = 4 * MAX_SIZE, 20
    report = run_script("big_message.js", echo_server.url("/echo"), str(size), str(attempts))
    codes = [c["close"]["code"] for c in report["connections"]]
    assert codes == [1009] * attempts


def test_too_big_message_does_not_reset_a_client_still_sending(
    echo_server: ServerProcess,
) -> None:
    """After failing with 1009 the server discards input until the client closes: no reset."""
    # A lingering close (half-close, read and discard until EOF or the close
    # timeout), as websockets' own server does, lets a client finish writing and
    # then read the close frame.
    uri = parse_uri(echo_server.url("/echo"))
    protocol = ClientProtocol(uri)
    with socket.create_connection((uri.host, uri.port), timeout=10) as sock:
        protocol.send_request(protocol.connect())
        sock.sendall(b"".join(protocol.data_to_send()))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1 << 16)
        assert head.startswith(b"HTTP/1.1 101 ")
        size = 16 * MAX_SIZE
        # A masked binary frame header announcing `size` bytes (mask key 0: payload as is).
        sock.sendall(b"\x82\xff" + size.to_bytes(8, "big") + bytes(4))
        chunk = bytes(1 << 16)
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)  # ConnectionResetError today, after ~2 MiB
        close = sock.recv(1 << 16)
    assert close[:1] == b"\x88"
    assert int.from_bytes(close[2:4], "big") == 1009
