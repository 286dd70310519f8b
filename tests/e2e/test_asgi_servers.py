"""wsup's routes served by real ASGI servers (uvicorn, hypercorn) through supervisor.asgi.

The ASGI server runs as a child process on a free loopback port (the FastAPI
example and the wrapping app once per server for the module: a test that shares
one sees only the log events of its own time, and counts what it added to
counters) and tests talk to it with the websockets client, Node's ``ws`` or a raw
socket:
``examples/fastapi_app.py`` (wsup mounted in FastAPI under ``/ws``) for the
chat protocol of the SPEC, ``tests/e2e/apps/asgi_app.py`` (wsup wrapping a
Starlette app, JSON logs) for echo, restarts, the slow-consumer policy,
admission limits and the wrapped app, and ``tests/e2e/apps/asgi_mount_app.py``
(wsup in a Starlette ``Mount``). Every case runs under both servers; the drain
on SIGTERM runs hypercorn from Python with the shutdown trigger of
``docs/asgi.md`` (``tests/e2e/apps/hypercorn_drain.py``).
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from tests.e2e.apps.server_process import ServerProcess, free_port
from tests.helpers.clients import TIMEOUT, get_url, open_ws, recv_until_closed
from tests.helpers.node import node
from tests.helpers.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.e2e

SERVERS = ("uvicorn", "hypercorn")
E2E = Path(__file__).resolve().parent
TEST_APP = "tests.e2e.apps.asgi_app:application"
LIMITED_APP = "tests.e2e.apps.asgi_app:limited"
MOUNT_APP = "tests.e2e.apps.asgi_mount_app:application"
EXAMPLE = "examples.fastapi_app:app"
CHAT_CLIENT = E2E / "node" / "chat_client.js"


def asgi_server(
    server: str, target: str, *, drain: str | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``server`` (uvicorn or hypercorn) serving ``target``; wait until it listens.

    ``drain``: the ``module:attr`` of ``target``'s ASGIApp, to run hypercorn
    from Python with a shutdown trigger that drains it (uvicorn needs none).
    ``env``: more environment variables for the server.
    """
    port = free_port()
    if server == "hypercorn" and drain is not None:
        command = [sys.executable, "-m", "tests.e2e.apps.hypercorn_drain", target, drain]
        command.append(str(port))
        ready = "Running on"
    elif server == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", target, "--port", str(port)]
        command += ["--host", "127.0.0.1"]
        ready = "Uvicorn running on"
    else:
        # --workers 0: serve in this process (no worker child left behind by a kill).
        command = [sys.executable, "-m", "hypercorn", target, "--workers", "0"]
        command += ["--bind", f"127.0.0.1:{port}"]
        ready = "Running on"
    process = ServerProcess(target, port=port, command=command, env=env)
    try:
        process.wait_for_line(ready, timeout=30)
    except BaseException:
        process.stop()
        raise
    return process


@pytest.fixture(scope="module", params=SERVERS)
def example_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``examples/fastapi_app.py`` under each ASGI server, shared by the module's tests."""
    with asgi_server(request.param, EXAMPLE) as process:
        yield process


@pytest.fixture
def example(example_server: ServerProcess) -> ServerProcess:
    """The shared example server; the test's events are its own (counters: see ``Counts``)."""
    example_server.forget_events()
    return example_server


@pytest.fixture(scope="module", params=SERVERS)
def wrapped_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``tests/e2e/apps/asgi_app.py`` (wsup wrapping Starlette) under each ASGI server,
    shared by the module's tests."""
    with asgi_server(request.param, TEST_APP) as process:
        yield process


@pytest.fixture
def wrapped(wrapped_server: ServerProcess) -> ServerProcess:
    """The shared wrapping server; the test's events are its own (counters: see ``Counts``)."""
    wrapped_server.forget_events()
    return wrapped_server


@pytest.fixture(params=SERVERS)
def limited(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``asgi_app.limited`` (one connection per address) under each ASGI server."""
    with asgi_server(request.param, LIMITED_APP) as process:
        yield process


@pytest.fixture(params=SERVERS)
def mounted(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """``tests/e2e/apps/asgi_mount_app.py`` (wsup in a Starlette ``Mount``) under each server."""
    with asgi_server(request.param, MOUNT_APP) as process:
        yield process


def client_close(process: ServerProcess, code: int, reason: str) -> tuple[int, str, str]:
    """How wsup sees a client's close frame ``(code, reason)`` under ``process``'s server.

    hypercorn does not pass the client's close code on to the app: its
    ``websocket.disconnect`` says 1006 for every close of an open connection.
    """
    if "hypercorn" in process.command:
        return 1006, "", "network"
    return code, reason, "client"


def http(process: ServerProcess, path: str) -> tuple[int, str, str]:
    """GET ``path``; the status, ``Content-Type`` and body."""
    return get_url(f"http://127.0.0.1:{process.port}{path}")


def sample(process: ServerProcess, path: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of wsup's ``/metrics`` as the adapter serves it at ``path``; None if
    there is none (a labelled counter not incremented yet)."""
    status, _, body = http(process, path)
    assert status == 200, body
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", body, re.MULTILINE)
    return None if found is None else float(found.group(1))


def metric(process: ServerProcess, path: str, name: str, **labels: str) -> float:
    """One sample of wsup's ``/metrics`` as the adapter serves it at ``path``."""
    value = sample(process, path, name, labels)
    assert value is not None, f"{name}{labels} not in /metrics"
    return value


class Counts:
    """What a test added to counters of a server that earlier tests used too.

    ``Counts(process, path, (name, labels), ...)`` reads each counter when the test
    begins; :meth:`added` reads it again and returns the difference.
    """

    def __init__(
        self, process: ServerProcess, path: str, *counters: tuple[str, dict[str, str]]
    ) -> None:
        self.process = process
        self.path = path
        self.before = {
            (name, tuple(sorted(labels.items()))): sample(process, path, name, labels) or 0.0
            for name, labels in counters
        }

    def added(self, name: str, **labels: str) -> float:
        """How much the counter ``name{labels}`` grew since the test began."""
        before = self.before[name, tuple(sorted(labels.items()))]
        return metric(self.process, self.path, name, **labels) - before


def chat(process: ServerProcess, room: str, user: str) -> ClientConnection:
    """A chat client of the FastAPI example."""
    return open_ws(process.url(f"/ws/chat/{room}?user={user}"))


def said(ws: ClientConnection) -> dict[str, Any]:
    """The next event a chat client receives."""
    event: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
    return event


def test_fastapi_example_serves_http_and_the_chat_protocol(example: ServerProcess) -> None:
    """FastAPI answers /hello; wsup under /ws speaks the chat protocol (say, dm, error)."""
    counts = Counts(example, "/ws/metrics", ("wsup_handshakes_total", {"result": "accepted"}))
    status, content_type, body = http(example, "/hello")
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"hello": "world"})
    with (
        chat(example, "lobby", "ann") as ann,
        chat(example, "lobby", "bob") as bob,
        chat(example, "kitchen", "cy") as cy,
    ):
        ann.send(json.dumps({"type": "say", "text": "hi"}))
        for client in (ann, bob):
            event = said(client)
            assert {k: event[k] for k in ("type", "room", "from", "text")} == {
                "type": "said",
                "room": "lobby",
                "from": "ann",
                "text": "hi",
            }
        bob.send(json.dumps({"type": "dm", "to": "cy", "text": "psst"}))
        assert said(cy) == {"type": "dm", "from": "bob", "text": "psst"}
        cy.send("not json")
        assert said(cy)["type"] == "error"
        cy.send(json.dumps({"type": "shout", "text": "x"}))
        assert said(cy)["type"] == "error"
        cy.send(json.dumps({"type": "say", "text": "still open"}))
        assert said(cy)["text"] == "still open"
    assert counts.added("wsup_handshakes_total", result="accepted") == 3


def test_missing_user_is_rejected_with_http_400(example: ServerProcess) -> None:
    """The chat's hook rejects a handshake without ?user= with HTTP 400 and its reason."""
    counts = Counts(example, "/ws/metrics", ("wsup_handshakes_total", {"result": "rejected"}))
    with pytest.raises(InvalidStatus) as caught:
        open_ws(example.url("/ws/chat/lobby"))
    assert caught.value.response.status_code == 400
    assert b"missing ?user=NAME" in caught.value.response.body
    assert counts.added("wsup_handshakes_total", result="rejected") == 1


def test_ops_endpoints_under_the_mount(example: ServerProcess) -> None:
    """/ws/healthz, /ws/readyz and /ws/metrics are wsup's; other paths stay FastAPI's."""
    assert http(example, "/ws/healthz")[0] == 200
    assert http(example, "/ws/readyz")[:1] == (200,)
    status, content_type, body = http(example, "/ws/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "wsup_build_info" in body
    assert http(example, "/nowhere")[0] == 404


def test_echo_and_the_wrapped_app(wrapped: ServerProcess) -> None:
    """Text stays text, binary stays binary; /plain is answered by the wrapped Starlette app."""
    counts = Counts(wrapped, "/metrics", ("wsup_messages_received_total", {"kind": "binary"}))
    with open_ws(wrapped.url("/echo")) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\xff"
    assert http(wrapped, "/plain")[::2] == (200, "plain")
    event = wrapped.wait_for_event("connection.closed", where=lambda r: r["path"] == "/echo")
    assert (event["code"], event["reason"], event["initiator"]) == client_close(wrapped, 1000, "")
    assert event["messages_in"] == event["messages_out"] == 2
    assert counts.added("wsup_messages_received_total", kind="binary") == 1


def test_node_ws_client_echo(wrapped: ServerProcess) -> None:
    """Node's ws client: text and binary messages come back unchanged, close code kept."""
    spec = {
        "messages": [
            {"type": "text", "data": "héllo"},
            {"type": "binary", "base64": base64.b64encode(b"\x01\x02").decode()},
        ],
        "close": {"code": 4000, "reason": "bye"},
    }
    result = subprocess.run(
        [node(), str(E2E / "node" / "echo_client.js"), wrapped.url("/echo")],
        cwd=E2E,
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert [(m["binary"], base64.b64decode(m["base64"])) for m in report["received"]] == [
        (False, "héllo".encode()),
        (True, b"\x01\x02"),
    ]
    assert report["close"]["code"] == 4000
    event = wrapped.wait_for_event("connection.closed", where=lambda r: r["path"] == "/echo")
    assert (event["code"], event["reason"], event["initiator"]) == client_close(
        wrapped, 4000, "bye"
    )


def test_a_crash_restarts_the_handler_on_the_same_connection(wrapped: ServerProcess) -> None:
    """A handler that raises is restarted; the client keeps its connection."""
    counts = Counts(wrapped, "/metrics", ("wsup_actor_restarts_total", {"kind": "connection"}))
    with open_ws(wrapped.url("/crash")) as ws:
        assert ws.recv(timeout=TIMEOUT) == "connected"
        ws.send("before")
        assert ws.recv(timeout=TIMEOUT) == "before"
        ws.send("crash")
        assert ws.recv(timeout=TIMEOUT) == "connected"  # the new handler's on_connect
        ws.send("after")
        assert ws.recv(timeout=TIMEOUT) == "after"
    wrapped.wait_for_event("actor.restarted")
    assert counts.added("wsup_actor_restarts_total", kind="connection") == 1


def test_a_client_that_reads_nothing_is_disconnected_as_a_slow_consumer(
    wrapped: ServerProcess,
) -> None:
    """Once the ASGI server stops taking messages, wsup's outbound buffer fills and the
    ``disconnect`` policy ends the connection."""
    closed = ("wsup_connections_closed_total", {"reason": "slow_consumer", "initiator": "server"})
    dropped = ("wsup_messages_dropped_total", {"policy": "disconnect"})
    counts = Counts(wrapped, "/metrics", closed, dropped)
    with socket.create_connection(("127.0.0.1", wrapped.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(b"0123456789abcdef").decode()
        sock.sendall(
            (
                "GET /flood HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        event = wrapped.wait_for_event(
            "connection.closed", where=lambda r: r["path"] == "/flood", timeout=60
        )
    assert event["code"] == 1013
    assert counts.added("wsup_messages_dropped_total", policy="disconnect") >= 1
    assert counts.added(closed[0], **closed[1]) == 1


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_drains_wsup_connections_before_the_server_stops(server: str) -> None:
    """SIGTERM: wsup's drain closes each chat connection with 1001 (not uvicorn's 1012
    nor hypercorn's cancellation), then the ASGI server shuts down and the process exits."""
    with asgi_server(server, EXAMPLE, drain="examples.fastapi_app:ws") as process:
        with chat(process, "lobby", "ann") as ann:
            ann.send(json.dumps({"type": "say", "text": "hi"}))
            assert said(ann)["text"] == "hi"
            process.signal(signal.SIGTERM)
            _, code, reason = recv_until_closed(ann)
        assert (code, reason) == (1001, "server shutting down")
        # uvicorn raises the signal it caught again once it has shut down.
        assert process.wait(30) in (0, -signal.SIGTERM)
        assert "server.drain_completed" in process.log()
        event = process.wait_for_event("connection.closed")
        assert (event["code"], event["initiator"]) == (1001, "server")


def run_node_chat(process: ServerProcess, clients: dict[str, str], steps: list[Any]) -> Any:
    """Run ``chat_client.js`` against ``process`` with ``clients`` (id → path) and
    ``steps``; its report."""
    spec = {"clients": {cid: process.url(path) for cid, path in clients.items()}, "steps": steps}
    result = subprocess.run(
        [node(), str(CHAT_CLIENT)],
        cwd=E2E,
        input=json.dumps(spec) + "\ngo\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["errors"] == [], report
    return report


def test_node_ws_speaks_the_chat_protocol(example: ServerProcess) -> None:
    """Node's ws against the FastAPI example: a ``say`` reaches the room and no other,
    a ``dm`` its user, bad input an ``error``; no ``?user`` is refused with HTTP 400."""
    # "not json" answers an error: once it is back, that client has joined its room.
    report = run_node_chat(
        example,
        {
            "ann": "/ws/chat/lobby?user=ann",
            "bob": "/ws/chat/lobby?user=bob",
            "cy": "/ws/chat/kitchen?user=cy",
            "nobody": "/ws/chat/lobby",
        },
        [
            *({"send": c, "data": "not json"} for c in ("ann", "bob", "cy")),
            *({"expect": c, "count": 1} for c in ("ann", "bob", "cy")),
            {"send": "ann", "data": json.dumps({"type": "say", "text": "hi"})},
            {"expect": "ann", "count": 2},
            {"expect": "bob", "count": 2},
            {"send": "bob", "data": json.dumps({"type": "dm", "to": "cy", "text": "psst"})},
            {"expect": "cy", "count": 2},
        ],
    )
    clients = report["clients"]
    assert [m["type"] for m in clients["ann"]["received"]] == ["error", "said"]
    for user in ("ann", "bob"):
        event = clients[user]["received"][1]
        assert (event["type"], event["from"], event["text"]) == ("said", "ann", "hi")
    assert clients["cy"]["received"][1] == {"type": "dm", "from": "bob", "text": "psst"}
    nobody = clients["nobody"]
    assert (nobody["opened"], nobody["status"]) == (False, 400)
    assert "missing ?user=NAME" in nobody["body"]
    assert clients["ann"]["close"]["code"] == 1000


def test_admission_limits_answer_503_with_retry_after(limited: ServerProcess) -> None:
    """``max_connections_per_address`` and ``handshake_rate_per_address`` refuse with
    HTTP 503 and ``Retry-After`` through the real server, counted per limit."""
    with open_ws(limited.url("/echo")) as ws:
        ws.send("one")
        assert ws.recv(timeout=TIMEOUT) == "one"
        with pytest.raises(InvalidStatus) as caught:
            open_ws(limited.url("/echo"))
        response = caught.value.response
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert b"too many connections from this address" in response.body
    limited.wait_for_event("connection.closed", where=lambda r: r["path"] == "/echo")
    with open_ws(limited.url("/echo")) as ws:  # room again; the rate's second token
        ws.send("two")
        assert ws.recv(timeout=TIMEOUT) == "two"
    with pytest.raises(InvalidStatus) as caught:
        open_ws(limited.url("/echo"))  # the rate has no token left
    assert caught.value.response.status_code == 503
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    for limit in ("max_connections_per_address", "handshake_rate_per_address"):
        assert metric(limited, "/metrics", "wsup_limited_total", limit=limit) == 1
    assert metric(limited, "/metrics", "wsup_handshakes_total", result="rejected") == 2


def test_starlette_mount_serves_wsup_under_its_path(mounted: ServerProcess) -> None:
    """wsup in a Starlette ``Mount("/live")``: echo (websockets and Node's ws), a crash
    and restart, the ops endpoints under the mount; Starlette keeps its own routes."""
    with open_ws(mounted.url("/live/echo")) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
    with open_ws(mounted.url("/live/crash")) as ws:
        assert ws.recv(timeout=TIMEOUT) == "connected"
        ws.send("crash")
        assert ws.recv(timeout=TIMEOUT) == "connected"
    spec = {"messages": [{"type": "text", "data": "héllo"}], "close": {"code": 1000, "reason": ""}}
    result = subprocess.run(
        [node(), str(E2E / "node" / "echo_client.js"), mounted.url("/live/echo")],
        cwd=E2E,
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert [base64.b64decode(m["base64"]) for m in report["received"]] == ["héllo".encode()]
    assert http(mounted, "/plain")[::2] == (200, "plain")
    assert http(mounted, "/live/healthz")[0] == 200
    assert metric(mounted, "/live/metrics", "wsup_handshakes_total", result="accepted") == 3
    assert metric(mounted, "/live/metrics", "wsup_actor_restarts_total", kind="connection") == 1
    with pytest.raises(InvalidStatus) as caught:
        open_ws(mounted.url("/live/nowhere"))
    assert caught.value.response.status_code == 404


DJANGO_APP = "tests.e2e.apps.django_app:application"


@pytest.mark.parametrize("server", SERVERS)
def test_django_channels_router_serves_a_view_and_wsup_chat_then_drains(server: str) -> None:
    """Django Channels' ``ProtocolTypeRouter``: a Django view answers HTTP, wsup the
    chat (a handshake without ``?user`` gets 400), and SIGTERM drains with 1001."""
    with asgi_server(server, DJANGO_APP, drain="tests.e2e.apps.django_app:ws") as process:
        status, content_type, body = http(process, "/hello")
        assert (status, content_type, json.loads(body)) == (
            200,
            "application/json",
            {"hello": "django"},
        )
        with pytest.raises(InvalidStatus) as caught:
            open_ws(process.url("/chat/lobby"))
        assert caught.value.response.status_code == 400
        with (
            open_ws(process.url("/chat/lobby?user=ann")) as ann,
            open_ws(process.url("/chat/lobby?user=bob")) as bob,
        ):
            bob.send("not json")  # once the error is back, bob has joined the room
            assert said(bob)["type"] == "error"
            ann.send(json.dumps({"type": "say", "text": "hi"}))
            for client in (ann, bob):
                event = said(client)
                assert (event["type"], event["from"], event["text"]) == ("said", "ann", "hi")
            process.signal(signal.SIGTERM)
            for client in (ann, bob):
                _, code, reason = recv_until_closed(client)
                assert (code, reason) == (1001, "server shutting down")
        assert process.wait(30) in (0, -signal.SIGTERM)
        assert "server.drain_completed" in process.log()


def wait_subscribed(url: str, address: str, nodes: int) -> None:
    """Wait until ``nodes`` nodes subscribe to ``address`` in Redis (a bounded poll: a
    child process gives no other sign that a join or a name has reached Redis)."""
    channel = f"wsup:addr:{address}".encode()
    inspector = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + TIMEOUT
        while inspector.pubsub_numsub(channel) != [(channel, nodes)]:
            assert time.monotonic() < deadline, f"{address}: not {nodes} subscribers"
            time.sleep(0.01)
    finally:
        inspector.close()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_two_asgi_nodes_chat_through_the_redis_backplane(redis_server: RedisServer) -> None:
    """``ASGIApp(backplane=RedisBackplane(url))``: a node under uvicorn and one under
    hypercorn, one Redis; a ``dm`` crosses from each node to the other, and a room's
    ``say`` reaches its member on the other node."""
    env = {"WSUP_TEST_REDIS": redis_server.url}
    target = "tests.e2e.apps.asgi_cluster_app:app"
    with (
        asgi_server("uvicorn", target, env=env) as a,
        asgi_server("hypercorn", target, env=env) as b,
        chat(a, "lobby", "ann") as ann,
        chat(b, "lobby", "bob") as bob,
    ):
        for user in ("ann", "bob"):
            wait_subscribed(redis_server.url, f"user:{user}", 1)
        wait_subscribed(redis_server.url, "room:lobby", 2)
        ann.send(json.dumps({"type": "dm", "to": "bob", "text": "across"}))
        assert said(bob) == {"type": "dm", "from": "ann", "text": "across"}
        bob.send(json.dumps({"type": "dm", "to": "ann", "text": "back"}))
        assert said(ann) == {"type": "dm", "from": "bob", "text": "back"}
        bob.send(json.dumps({"type": "say", "text": "hi all"}))
        for client in (bob, ann):
            event = said(client)
            assert (event["type"], event["from"], event["text"]) == ("said", "bob", "hi all")
    for node_process in (a, b):
        assert "redis.connected" in node_process.log()
