"""The server API, ``wsup send`` and ``--redis-prefix``, tested from outside.

Every test runs ``python -m supervisor serve`` as a child process on free
loopback ports (with its own ``redis-server`` where a cluster is needed) and
talks to it with ``http.client`` and the ``websockets`` sync client, as any
other service would.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

from supervisor.publisher import AsyncPublisher
from tests.e2e.apps.server_process import ROOT, ServerProcess, child_env, free_port, run_cli
from tests.helpers.clients import http_get
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.redis_server import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.api_app:app"
KEY = "s3cret-key"
TIMEOUT = 20.0
"""Seconds to wait for one message or answer (a deadlock guard, not a measurement)."""

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; return the status, the headers and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def api(port: int, method: str, path: str, body: Any = None, **options: Any) -> tuple[int, Any]:
    """One API request; return the status and the decoded JSON answer."""
    status, headers, data = call(port, method, path, body, **options)
    assert headers["Content-Type"] == "application/json", (status, data)
    return status, json.loads(data)


class Client:
    """A connection of the test app: ``user:NAME``, in its groups."""

    def __init__(self, port: int, user: str, *groups: str) -> None:
        query = "&".join([f"user={user}", *(f"group={g}" for g in groups)])
        self.ws: ClientConnection = connect(
            f"ws://127.0.0.1:{port}/u?{query}", open_timeout=TIMEOUT, ping_interval=None
        ).__enter__()
        self.user = user
        self.address: str = json.loads(self.ws.recv(timeout=TIMEOUT))["ready"]

    def recv(self) -> str | bytes:
        """The next message."""
        return self.ws.recv(timeout=TIMEOUT)


@contextmanager
def clients() -> Iterator[Callable[..., Client]]:
    """Open clients with ``open_(port, user, *groups)``; all closed at the end."""
    opened: list[Client] = []

    def open_(port: int, user: str, *groups: str) -> Client:
        client = Client(port, user, *groups)
        opened.append(client)
        return client

    try:
        yield open_
    finally:
        for client in opened:
            client.ws.close()


def serve(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start the test app; wait until it serves."""
    server = ServerProcess(APP, *args, env=env)
    server.wait_started()
    return server


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of ``/metrics``."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def redis_client(url: str) -> Any:
    """A synchronous client of the test's own Redis."""
    import redis

    return redis.Redis.from_url(url)


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until true (a bounded wait for something asynchronous)."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


# --- one node -----------------------------------------------------------------------------


def test_the_api_is_off_without_a_key() -> None:
    """Without a key, ``/api/`` answers 404 saying how to turn it on."""
    with serve() as server:
        status, _, body = call(server.port, "POST", "/api/send", {"address": "a", "message": 1})
        assert status == 404
        assert b"WSUP_API_KEY" in body


def test_send_reaches_a_named_connection_as_text_or_json_text() -> None:
    """A JSON string arrives as that text; another JSON value as its JSON text; the
    answer says what was reached."""
    with serve(env={"WSUP_API_KEY": KEY}) as server, clients() as open_:
        ada = open_(server.port, "ada")
        status, answer = api(
            server.port, "POST", "/api/send", {"address": "user:ada", "message": "hi"}
        )
        assert (status, answer) == (
            200,
            {"address": "user:ada", "reached": True, "local": 1, "remote": False},
        )
        assert ada.recv() == "hi"
        message = {"type": "order", "status": "shipped", "items": [1, 2]}
        assert (
            api(server.port, "POST", "/api/send", {"address": "user:ada", "message": message})[0]
            == 200
        )
        assert json.loads(ada.recv()) == message
        status, answer = api(
            server.port, "POST", "/api/send", {"address": "user:bob", "message": 1}
        )
        assert (status, answer["reached"], answer["local"]) == (200, False, 0)
        assert metric(server.port, "wsup_api_requests_total", endpoint="send", result="ok") == 3


def test_batch_send_broadcast_and_presence() -> None:
    """``addresses`` sends to each and answers per address; broadcast reaches every
    connection; presence lists the members of a group."""
    with serve(env={"WSUP_API_KEY": KEY}) as server, clients() as open_:
        ada = open_(server.port, "ada", "room:lobby")
        bob = open_(server.port, "bob", "room:lobby")
        status, answer = api(
            server.port,
            "POST",
            "/api/send",
            {"addresses": ["user:ada", "user:bob", "user:eve"], "message": "batch"},
        )
        assert status == 200
        assert [(r["address"], r["reached"]) for r in answer["results"]] == [
            ("user:ada", True),
            ("user:bob", True),
            ("user:eve", False),
        ]
        assert (ada.recv(), bob.recv()) == ("batch", "batch")
        status, answer = api(server.port, "POST", "/api/broadcast", {"message": {"n": 1}})
        assert (status, answer["local"]) == (200, 2)
        assert json.loads(ada.recv()) == json.loads(bob.recv()) == {"n": 1}
        status, answer = api(server.port, "GET", "/api/presence?address=room:lobby")
        assert status == 200
        assert answer["address"] == "room:lobby"
        assert answer["count"] == 2
        assert sorted(answer["members"]) == sorted([ada.address, bob.address])
        assert answer["meta"] == {ada.address: {"user": "ada"}, bob.address: {"user": "bob"}}
        assert api(server.port, "GET", "/api/presence?address=room:empty")[1]["count"] == 0


def test_bad_requests_get_clear_errors() -> None:
    """401 without or with a wrong key; 400 naming the problem; 404, 405, 411, 413."""
    with serve(env={"WSUP_API_KEY": KEY}) as server:
        port = server.port
        good = {"address": "user:ada", "message": "x"}
        status, headers, body = call(port, "POST", "/api/send", good, key=None)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert b"Authorization: Bearer" in body
        assert call(port, "POST", "/api/send", good, key="wrong")[0] == 401
        assert call(port, "POST", "/api/send", good, key=KEY + "x")[0] == 401
        cases: list[tuple[str, str, Any, bytes | None, str]] = [
            ("POST", "/api/send", None, b"{not json", "not valid JSON"),
            ("POST", "/api/send", None, b"[1]", "must be a JSON object"),
            ("POST", "/api/send", {"message": "x"}, None, "missing field 'address'"),
            ("POST", "/api/send", {"address": "a"}, None, "missing field 'message'"),
            ("POST", "/api/send", {"address": 3, "message": 1}, None, "'address' must be"),
            ("POST", "/api/broadcast", {}, None, "missing field 'message'"),
            ("GET", "/api/presence", None, None, "missing query parameter 'address'"),
        ]
        for method, path, data, raw, error in cases:
            status, answer = api(port, method, path, data, raw=raw)
            assert (status, error in answer["error"]) == (400, True), (path, data, raw, answer)
        assert api(port, "POST", "/api/nope", good)[0] == 404
        status, headers, _ = call(port, "GET", "/api/send")
        assert (status, headers["Allow"]) == (405, "POST")
        too_big = b'{"message": "' + b"x" * (1 << 20) + b'"}'
        status, answer = api(port, "POST", "/api/broadcast", raw=too_big)
        assert status == 413
        assert "too large" in answer["error"]
        status, _, _ = call(
            port, "POST", "/api/broadcast", raw=b"", headers={"Transfer-Encoding": "chunked"}
        )
        assert status == 411
        assert metric(port, "wsup_api_requests_total", endpoint="send", result="unauthorized") == 3
        assert (
            metric(port, "wsup_api_requests_total", endpoint="broadcast", result="too_large") == 1
        )


def test_api_port_and_key_file(tmp_path: Path) -> None:
    """``--api-port`` serves the API there only; ``--api-key-file`` reads the key."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    api_port = free_port()
    with serve("--api-port", str(api_port), "--api-key-file", str(key_file)) as server:
        status, answer = api(api_port, "POST", "/api/broadcast", {"message": "x"})
        assert (status, answer["reached"]) == (200, False)
        assert http_get(api_port, "/healthz")[0] == 200
        status, _, body = call(server.port, "POST", "/api/broadcast", {"message": "x"})
        assert status == 404
        assert str(api_port).encode() in body
    missing = run_cli("serve", APP, "--api-key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("wsup: error: --api-key-file: cannot read")


def test_http_routes_take_bodies_and_answer_in_http() -> None:
    """A POST route gets its body; over its limit 413; a chunked body 411; a wrong
    method 405 with Allow; an overlong URL a 414 that says nothing of WebSockets."""
    with serve() as server:
        port = server.port
        assert call(port, "POST", "/hook", raw=b"payload=1", key=None)[::2] == (
            200,
            b"POST payload=1",
        )
        status, _, body = call(port, "POST", "/hook", raw=b"x" * 65, key=None)
        assert (status, b"at most 64" in body) == (413, True)
        status, _, body = call(
            port, "POST", "/hook", raw=b"", key=None, headers={"Transfer-Encoding": "chunked"}
        )
        assert (status, b"Content-Length" in body) == (411, True)
        status, headers, _ = call(port, "GET", "/hook", key=None)
        assert (status, headers["Allow"]) == (405, "POST")
        status, headers, _ = call(port, "POST", "/page", raw=b"x", key=None)
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
        status, _, body = call(port, "GET", "/page?" + "a" * 9000, key=None)
        assert status == 414
        assert b"WebSocket" not in body


def test_api_answers_503_while_the_backplane_is_down() -> None:
    """With Redis configured but unreachable, sends get 503 and nothing is sent."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with serve("--redis", url, "--redis-optional", env={"WSUP_API_KEY": KEY}) as server:
        status, answer = api(server.port, "POST", "/api/send", {"address": "user:a", "message": 1})
        assert status == 503
        assert "backplane is down" in answer["error"]
        assert api(server.port, "GET", "/api/presence?address=room:x")[0] == 503


def test_wsup_send_needs_json_and_redis() -> None:
    """``wsup send`` refuses a MESSAGE that is not JSON, and says when Redis is missing."""
    result = run_cli("send", "user:ada", "hi", "--redis", "redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "MESSAGE must be JSON" in result.stderr
    result = run_cli("send", "user:ada", '"hi"', "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert result.stderr.startswith("wsup: error: cannot reach Redis")


# --- several nodes on a real Redis -----------------------------------------------------------


@needs_redis
def test_two_prefixes_on_one_redis_never_see_each_other() -> None:
    """Apps with different ``--redis-prefix`` on one Redis: a send in one never reaches
    the same name in the other; ``wsup send`` with a prefix reaches only that app."""
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        env = {"WSUP_API_KEY": KEY}
        shop = stack.enter_context(serve("--redis", redis.url, "--redis-prefix", "shop", env=env))
        chat = stack.enter_context(
            serve("--redis", redis.url, env={**env, "WSUP_REDIS_PREFIX": "chat"})
        )
        open_ = stack.enter_context(clients())
        in_shop = open_(shop.port, "ada")
        in_chat = open_(chat.port, "ada")
        status, answer = api(
            shop.port, "POST", "/api/send", {"address": "user:ada", "message": "shop"}
        )
        assert (status, answer["local"], answer["remote"]) == (200, 1, False)
        assert in_shop.recv() == "shop"
        sent = run_cli("send", "user:ada", '"chat"', "--redis", redis.url, "--redis-prefix", "chat")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout) == {"address": "user:ada", "nodes": 1}
        # Both went through the same Redis in this order: had the first leaked into
        # the chat app, it would arrive before the second.
        assert in_chat.recv() == "chat"


@needs_redis
def test_send_from_the_api_of_one_node_and_from_outside_reaches_every_node() -> None:
    """Through one node's API, ``wsup send``, and ``redis-cli PUBLISH`` (a process
    that is not Python) in the documented wire format: every node's members get it."""
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        env = {"WSUP_API_KEY": KEY}
        one = stack.enter_context(serve("--redis", redis.url, env=env))
        two = stack.enter_context(serve("--redis", redis.url, env=env))
        open_ = stack.enter_context(clients())
        here, there = open_(one.port, "ada"), open_(two.port, "ada")
        status, answer = api(
            one.port, "POST", "/api/send", {"address": "user:ada", "message": [1, 2]}
        )
        assert (status, answer["local"], answer["remote"]) == (200, 1, True)
        assert json.loads(here.recv()) == json.loads(there.recv()) == [1, 2]
        sent = run_cli("send", "user:ada", '"from a shell"', "--redis", redis.url)
        assert json.loads(sent.stdout)["nodes"] == 2
        assert here.recv() == there.recv() == "from a shell"
        # The payload, with its NUL, comes from stdin (-x): argv cannot hold a NUL.
        published = subprocess.run(
            ["redis-cli", "-p", str(redis.port), "-x", "PUBLISH", "wsup:addr:user:ada"],
            input=b"\x00shello",
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert published.stdout.strip() == b"2"
        assert here.recv() == there.recv() == "hello"


@needs_redis
def test_presence_spans_nodes_and_forgets_a_killed_one() -> None:
    """Presence counts members on both nodes, from either node's API; after one node
    is SIGKILLed its members leave the answer within the node TTL."""
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        env = {"WSUP_API_KEY": KEY}
        # Long enough that a node stalled by a busy machine is not taken for dead (a
        # query would then delete its entries for good), short enough to wait for.
        ttl = ("--redis-node-ttl", "5")
        one = stack.enter_context(serve("--redis", redis.url, *ttl, env=env))
        two = stack.enter_context(serve("--redis", redis.url, *ttl, env=env))
        open_ = stack.enter_context(clients())
        members = [open_(one.port, "ada", "room:lobby"), open_(two.port, "bob", "room:lobby")]
        members.append(open_(two.port, "eve", "room:lobby"))
        expected = sorted(m.address for m in members)

        def presence(port: int) -> list[str]:
            status, answer = api(port, "GET", "/api/presence?address=room:lobby")
            assert status == 200
            assert answer["count"] == len(answer["members"])
            # The metadata given at join comes back from every node.
            users = {member: meta["user"] for member, meta in answer["meta"].items()}
            assert users == {m.address: m.user for m in members if m.address in users}
            return sorted(answer["members"])

        eventually(lambda: presence(one.port) == presence(two.port) == expected, "both see 3")
        two.signal(signal.SIGKILL)
        two.wait(TIMEOUT)
        eventually(lambda: presence(one.port) == [members[0].address], "bob and eve leave")
        # The query also deleted the dead node's entries: nobody else would.
        stored = redis_client(redis.url).hkeys("wsup:presence:room:lobby")
        assert stored == [members[0].address.encode()]


def test_the_python_example_of_the_api_page_runs() -> None:
    """``examples/api_client.py`` (quoted on the server API page) prints what the page shows."""
    page = (ROOT / "docs" / "server-api.md").read_text(encoding="utf-8")
    with serve(env={"WSUP_API_KEY": KEY}) as server:
        result = subprocess.run(
            [sys.executable, "examples/api_client.py"],
            cwd=ROOT,
            env=child_env({"WSUP_API_KEY": KEY, "WSUP_API_URL": f"http://127.0.0.1:{server.port}"}),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
    lines = result.stdout.splitlines()
    assert lines == [
        "{'address': 'user:42', 'reached': False, 'local': 0, 'remote': False}",
        "{'address': 'room:lobby', 'count': 0, 'members': [], 'meta': {}}",
    ]
    assert all(line in page for line in lines)
    blocks = re.findall(r"```python\n(# examples/.*?)```", page, re.DOTALL)
    assert_blocks_are_files(blocks, re.compile(r"# (examples/\S+\.py)\n"), "on the API page")


@needs_redis
def test_the_async_publisher_writes_the_documented_wire_format() -> None:
    """``AsyncPublisher`` (asyncio code) publishes ``NUL kind data`` on
    ``<prefix>:addr:<address>``."""
    import redis.asyncio

    async def publish_and_listen(url: str) -> list[bytes]:
        listener = redis.asyncio.Redis.from_url(url)
        pubsub = listener.pubsub()
        await pubsub.subscribe("shop:addr:user:42")
        async with AsyncPublisher(url, prefix="shop") as publisher:
            assert await publisher.send("user:42", "hi") == 1
            assert await publisher.send("user:42", {"id": 1}) == 1
            assert await publisher.send("user:42", b"\x01") == 1
        payloads: list[bytes] = []
        while len(payloads) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TIMEOUT)
            if message is not None:
                payloads.append(message["data"])
        await pubsub.aclose()
        await listener.aclose()
        return payloads

    with RedisServer() as server:
        payloads = asyncio.run(publish_and_listen(server.url))
    assert payloads == [b"\x00shi", b'\x00j{"id":1}', b"\x00b\x01"]
