"""The Redis backplane against a real ``redis-server``, with wsup nodes in this process.

Every test starts its own ``redis-server`` on a free loopback port (never the
machine's Redis) and two or three in-process wsup nodes serving
``tests/e2e/apps/cluster_app.py``, each with its own :class:`RedisBackplane`.
Real ``websockets`` clients (sync, in worker threads) connect to the nodes and
ask their connection actors to send to names, groups, connection addresses or
everyone. A client's connection says "ready" only once its node has applied
its subscriptions in Redis, so no test waits on time. Each test runs on
asyncio (uvloop) and on trio; on trio the Redis client runs on an asyncio loop
in a thread of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
import redis
from anyio.streams.memory import MemoryObjectSendStream
from websockets.sync.client import ClientConnection, connect

from actors import Actor, Delivery, Down, DownReason
from supervisor import Server
from supervisor.redis import RedisBackplane, RedisUnavailable
from tests.e2e.apps.cluster_app import make_app
from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.clients import http_get as get_on_port
from tests.helpers.redis_server import REDIS_SERVER, RedisServer, free_port, quick_backplane
from tests.helpers.server import running_server, ws_url

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

TIMEOUT = 10.0
"""Seconds a client waits for one message (a deadlock guard, not a measurement)."""
KILLED_TTL = "3"
"""``--redis-node-ttl`` of the nodes that tests kill: a killed node is gone within 1.5
times this, and a live one that a busy machine stalls for less is not taken for dead."""


@asynccontextmanager
async def cluster(url: str, nodes: int = 2, **options: Any) -> AsyncIterator[list[Server]]:
    """Run ``nodes`` wsup nodes of the cluster app, all on the Redis at ``url``."""
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(make_app(), backplane=quick_backplane(url, **options))
            )
            for _ in range(nodes)
        ]
        yield servers


def redis_of(server: Server) -> RedisBackplane:
    """Return the Redis backplane of ``server``."""
    found = server.runtime.backplane
    assert isinstance(found, RedisBackplane)
    return found


def sample(server: Server, name: str, **labels: str) -> float:
    """Return the current value of one metric series of ``server``."""
    value = server.metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def http_get(server: Server, path: str) -> tuple[int, str]:
    """GET ``path`` from ``server`` (blocking); return the status and body."""
    host, port = server.ports[0]
    return get_on_port(port, path, host=host)


async def readyz(server: Server) -> int:
    """Return the status of ``GET /readyz`` on ``server``."""
    status, _ = await anyio.to_thread.run_sync(http_get, server, "/readyz")
    return status


class Client:
    """A client of the cluster app; each blocking call runs in a worker thread."""

    def __init__(self, ws: ClientConnection, ready: dict[str, Any]) -> None:
        self.ws = ws
        self.ready = ready

    @classmethod
    async def open(cls, server: Server | str, user: str, *groups: str) -> Client:
        """Connect as ``user`` (in ``groups``) and wait for the connection's "ready".

        ``server`` is an in-process server or the ``ws://`` URL of ``/node`` elsewhere.
        """
        query = urlencode([("user", user), *(("group", group) for group in groups)])
        base = server if isinstance(server, str) else ws_url(server, "/node")
        url = f"{base}?{query}"

        def connect_and_wait() -> Client:
            ws = connect(url, open_timeout=TIMEOUT, ping_interval=None).__enter__()
            first = json.loads(ws.recv(timeout=TIMEOUT))
            return cls(ws, first["ready"])

        return await anyio.to_thread.run_sync(connect_and_wait)

    async def recv(self) -> str | bytes:
        """Return the next message (text as ``str``, binary as ``bytes``)."""
        return await anyio.to_thread.run_sync(self.ws.recv, TIMEOUT)

    async def recv_json(self) -> Any:
        """Return the next message, decoded from JSON."""
        message = await self.recv()
        assert isinstance(message, str), message
        return json.loads(message)

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """Run one command and return its reply (always the next message)."""
        await anyio.to_thread.run_sync(self.ws.send, json.dumps({"op": op, **fields}))
        reply = await self.recv_json()
        assert isinstance(reply, dict), reply
        assert "reply" in reply, reply
        return reply

    async def send(self, to: str, **payload: Any) -> None:
        """Send to ``to`` and check that the send succeeded."""
        assert await self.command("send", to=to, **payload) == {"reply": "sent"}

    def close(self) -> None:
        """Close the connection (blocking, quick)."""
        with contextlib.suppress(Exception):
            self.ws.close()


@asynccontextmanager
async def clients() -> AsyncIterator[list[Client]]:
    """Collect clients opened in the block and close them all at the end."""
    opened: list[Client] = []
    try:
        yield opened
    finally:
        for client in opened:
            await anyio.to_thread.run_sync(client.close)


# --- delivery across nodes ------------------------------------------------------------------


async def test_a_direct_message_reaches_a_user_on_another_node(redis_server: RedisServer) -> None:
    """A send to ``user:bob`` from node A reaches bob's connection on node B, types intact."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        opened += [alice, bob]
        assert alice.ready["node"] != bob.ready["node"]
        await alice.send("user:bob", text="hello bob")
        await alice.send("user:bob", json={"n": 1, "tags": ["a", "b"]})
        await alice.send("user:bob", hex="00ff10")
        await alice.send(bob.ready["conn"], text="to your connection address")
        assert await bob.recv() == "hello bob"
        assert await bob.recv_json() == {"n": 1, "tags": ["a", "b"]}
        assert await bob.recv() == b"\x00\xff\x10"
        assert await bob.recv() == "to your connection address"


async def test_messages_from_one_sender_to_one_target_keep_their_order(
    redis_server: RedisServer,
) -> None:
    """Two hundred messages from alice (node A) reach bob (node B) in the order sent."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        opened += [alice, bob]
        count = 200

        def send_all() -> None:
            for index in range(count):
                alice.ws.send(json.dumps({"op": "send", "to": "user:bob", "json": index}))

        await anyio.to_thread.run_sync(send_all)
        assert [await bob.recv_json() for _ in range(count)] == list(range(count))
        assert [await alice.recv_json() for _ in range(count)] == [{"reply": "sent"}] * count


async def test_a_group_message_reaches_each_member_on_every_node_once(
    redis_server: RedisServer,
) -> None:
    """A publish to ``group:room`` reaches members on both nodes exactly once, and no one else."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        alice = await Client.open(a, "alice", "room")
        dave = await Client.open(a, "dave")
        bob = await Client.open(b, "bob", "room")
        carol = await Client.open(b, "carol", "room")
        opened += [alice, dave, bob, carol]
        assert await alice.command("publish", group="room", json={"said": "hi room"}) == {
            "reply": "sent"
        }
        for member in (alice, bob, carol):
            assert await member.recv_json() == {"said": "hi room"}
        # Markers from node B travel through Redis after the group message did:
        # had alice got a second copy (her node's own publish echoed back) or
        # dave any copy, it would come before the marker.
        await bob.send("user:alice", text="marker")
        await bob.send("user:dave", text="marker")
        assert await alice.recv() == "marker"
        assert await dave.recv() == "marker"


async def test_a_broadcast_reaches_every_connection_of_every_node(
    redis_server: RedisServer,
) -> None:
    """A broadcast from node A reaches every connection on nodes A, B and C."""
    async with cluster(redis_server.url, nodes=3) as (a, b, c), clients() as opened:
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        carol = await Client.open(c, "carol")
        erin = await Client.open(c, "erin")
        opened += [alice, bob, carol, erin]
        assert await alice.command("broadcast", text="to everyone") == {"reply": "sent"}
        for client in (alice, bob, carol, erin):
            assert await client.recv() == "to everyone"


async def test_the_reach_count_decides_dead_letters(redis_server: RedisServer) -> None:
    """A send nobody holds anywhere is a ``no_recipient`` dead letter; a remote-only one is not."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        opened += [alice, bob]
        before = sample(a, "wsup_dead_letters_total", reason="no_recipient")
        sent = sample(a, "wsup_backplane_messages_total", direction="sent")
        await alice.send("user:bob", text="someone is there")
        assert await bob.recv() == "someone is there"
        assert sample(a, "wsup_dead_letters_total", reason="no_recipient") == before
        await alice.send("user:nobody", text="nobody is there")
        assert sample(a, "wsup_dead_letters_total", reason="no_recipient") == before + 1
        assert sample(a, "wsup_backplane_messages_total", direction="sent") == sent + 2
        assert sample(b, "wsup_backplane_messages_total", direction="received") >= 1


async def test_sends_across_nodes_say_what_they_reached(redis_server: RedisServer) -> None:
    """app.send/publish return the local count and whether another node was reached; an
    empty group reached nowhere is counted apart, never a dead letter."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        bob = await Client.open(b, "bob")
        opened.append(bob)
        await redis_of(a).synced()
        await redis_of(b).synced()
        assert await a.app.send("user:bob", "over there") == Delivery(0, True)
        assert await bob.recv() == "over there"
        assert await b.app.send("user:bob", "right here") == Delivery(1, False)
        assert await bob.recv() == "right here"
        letters = sample(a, "wsup_dead_letters_total", reason="no_recipient")
        assert await a.app.publish("room:nobody", "tick") == Delivery(0, False)
        assert sample(a, "wsup_empty_group_publishes_total") == 1
        assert sample(a, "wsup_dead_letters_total", reason="no_recipient") == letters


async def test_a_message_that_is_not_json_is_a_type_error_at_the_sender(
    redis_server: RedisServer,
) -> None:
    """Sending an object that cannot cross nodes raises TypeError naming the address."""
    async with cluster(redis_server.url, nodes=1) as (a,):
        with pytest.raises(TypeError, match=r"'user:bob'.*JSON-serialisable"):
            await a.runtime.send("user:bob", object())


async def test_the_live_nodes_are_listed(redis_server: RedisServer) -> None:
    """``nodes()`` lists every running node with its host and process id."""
    async with cluster(redis_server.url) as (a, b):
        listed = await redis_of(a).nodes()
        assert set(listed) == {a.runtime.node_id, b.runtime.node_id}
        assert await redis_of(b).nodes() == listed
        assert {node.pid for node in listed.values()} == {os.getpid()}


async def test_a_killed_node_leaves_the_cluster(redis_server: RedisServer) -> None:
    """A ``wsup serve`` node killed with SIGKILL: its subscriptions go with its connection,
    and it leaves the live node set when its liveness key expires."""
    url = redis_server.url
    inspector = redis.Redis.from_url(url)
    expiries = inspector.pubsub()
    try:
        expiries.subscribe("__keyevent@0__:expired")
        assert expiries.get_message(timeout=TIMEOUT) is not None  # the confirmation
        async with cluster(url, nodes=1) as (a,), clients() as opened:
            args = ["--redis", url, "--redis-node-ttl", KILLED_TTL]
            with ServerProcess("tests.e2e.apps.cluster_app:app", *args) as remote:
                await anyio.to_thread.run_sync(remote.wait_started)
                alice = await Client.open(a, "alice")
                dave = await Client.open(remote.url("/node"), "dave")
                opened += [alice, dave]
                remote_id = dave.ready["node"]
                listed = await redis_of(a).nodes()
                assert listed[remote_id].pid == remote.pid
                await alice.send("user:dave", text="across processes")
                assert await dave.recv() == "across processes"
                assert inspector.pubsub_numsub("wsup:addr:user:dave") == [
                    (b"wsup:addr:user:dave", 1)
                ]
                remote.signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(remote.wait)
            key = f"wsup:node:{remote_id}".encode()

            def wait_for_expiry() -> None:
                while True:
                    event = expiries.get_message(timeout=TIMEOUT)
                    assert event is not None, "the node key never expired"
                    if event["data"] == key:
                        return

            await anyio.to_thread.run_sync(wait_for_expiry)
            assert remote_id not in await redis_of(a).nodes()
            assert a.runtime.node_id in await redis_of(a).nodes()
            assert inspector.pubsub_numsub("wsup:addr:user:dave") == [(b"wsup:addr:user:dave", 0)]
            before = sample(a, "wsup_dead_letters_total", reason="no_recipient")
            await alice.send("user:dave", text="nobody left")
            assert sample(a, "wsup_dead_letters_total", reason="no_recipient") == before + 1
    finally:
        expiries.close()
        inspector.close()


# --- faults ---------------------------------------------------------------------------------


async def test_losing_redis_keeps_local_delivery_and_fails_remote_sends_until_it_returns(
    redis_server: RedisServer,
) -> None:
    """Redis killed: not ready, local delivery goes on, remote sends fail fast and are
    counted; Redis back: ready again and every subscription restored."""
    async with cluster(redis_server.url) as (a, b), clients() as opened:
        alice = await Client.open(a, "alice")
        carol = await Client.open(a, "carol")
        bob = await Client.open(b, "bob")
        opened += [alice, carol, bob]
        await alice.send("user:bob", text="before")
        assert await bob.recv() == "before"
        assert await readyz(a) == 200

        await anyio.to_thread.run_sync(redis_server.kill)
        for node in (a, b):
            await redis_of(node).wait_for_state(up=False)
            assert await readyz(node) == 503
            assert sample(node, "wsup_backplane_up") == 0
        failed = sample(a, "wsup_backplane_messages_total", direction="failed")
        down = sample(a, "wsup_dead_letters_total", reason="backplane_down")

        # Local members still get messages; the remote part fails and is reported.
        reply = await alice.command("send", to="user:carol", text="local during the outage")
        assert reply["error"] == "backplane_unavailable"
        assert await carol.recv() == "local during the outage"
        reply = await alice.command("send", to="user:bob", text="lost during the outage")
        assert reply["error"] == "backplane_unavailable"
        assert "unreachable" in reply["detail"]
        assert sample(a, "wsup_backplane_messages_total", direction="failed") == failed + 2
        assert sample(a, "wsup_dead_letters_total", reason="backplane_down") == down + 2

        await anyio.to_thread.run_sync(redis_server.start)
        for node in (a, b):
            await redis_of(node).wait_for_state(up=True)
            assert await readyz(node) == 200
            assert sample(node, "wsup_backplane_up") == 1
            assert redis_of(node).statistics().reconnects == 1
        # Both nodes re-subscribed, and nothing sent during the outage was kept.
        await alice.send("user:bob", text="after")
        assert await bob.recv() == "after"
        await bob.send("user:alice", text="back to you")
        assert await alice.recv() == "back to you"


async def test_a_stalled_redis_fails_sends_after_the_publish_timeout(
    redis_server: RedisServer,
) -> None:
    """Redis paused: a send fails after ``publish_timeout`` while local delivery goes on."""
    async with (
        cluster(redis_server.url, publish_timeout=0.3, node_ttl=60.0) as (a, b),
        clients() as opened,
    ):
        alice = await Client.open(a, "alice")
        carol = await Client.open(a, "carol")
        bob = await Client.open(b, "bob")
        opened += [alice, carol, bob]
        redis_server.pause()
        try:
            reply = await alice.command("send", to="user:carol", text="while Redis is stalled")
            assert await carol.recv() == "while Redis is stalled"
        finally:
            redis_server.resume()
        assert reply["error"] == "backplane_unavailable"
        assert "no answer from Redis within 0.3 s" in reply["detail"]
        assert redis_of(a).up
        await alice.send("user:bob", text="Redis answers again")
        assert await bob.recv() == "Redis answers again"


async def test_an_optional_backplane_starts_without_redis_and_connects_later() -> None:
    """``required=False``: the node serves, not ready, until Redis appears on its port."""
    server = RedisServer(free_port())
    try:
        async with cluster(server.url, nodes=1, required=False) as (a,), clients() as opened:
            assert await readyz(a) == 503
            assert not redis_of(a).up
            alice = await Client.open(a, "alice")
            opened.append(alice)
            reply = await alice.command("send", to="user:alice", text="to myself")
            assert reply["error"] == "backplane_unavailable"
            assert await alice.recv() == "to myself"
            await anyio.to_thread.run_sync(server.start)
            await redis_of(a).wait_for_state(up=True)
            assert await readyz(a) == 200
            await redis_of(a).synced()
            await alice.send("user:alice", text="through Redis too")
            assert await alice.recv() == "through Redis too"
    finally:
        server.stop()


async def test_a_required_backplane_without_redis_fails_to_start() -> None:
    """The default ``required=True``: no Redis, no server, and the error names the URL."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - task groups wrap it
        async with cluster(url, nodes=1):
            pytest.fail("the server started without Redis")
    error = _find(caught.value, RedisUnavailable)
    assert error is not None, caught.value
    assert str(error).startswith(f"cannot connect to Redis at {url}: ")


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


class Watching(Actor):
    """Watches the addresses it is sent; puts every Down it gets on a stream."""

    def __init__(self, downs: MemoryObjectSendStream[Down]) -> None:
        self.downs = downs

    async def on_receive(self, message: Any) -> Any:
        if isinstance(message, Down):
            self.downs.send_nowait(message)
        else:
            self.context.watch(message)


async def test_a_watch_across_nodes_reports_the_end_and_the_loss_of_the_node(
    redis_server: RedisServer,
) -> None:
    """A watcher on one node learns that a connection actor on a ``wsup serve`` node ended
    (Down with its reason, through Redis), and that a second one is gone when its node is
    killed with SIGKILL (Down NODE_LOST once the node's key expires)."""
    url = redis_server.url
    sender, downs = anyio.create_memory_object_stream[Down](10)
    async with cluster(url, nodes=1, node_ttl=float(KILLED_TTL)) as (a,), clients() as opened:
        args = ["--redis", url, "--redis-node-ttl", KILLED_TTL]
        with ServerProcess("tests.e2e.apps.cluster_app:app", *args) as remote, sender, downs:
            await anyio.to_thread.run_sync(remote.wait_started)
            first = await Client.open(remote.url("/node"), "first")
            second = await Client.open(remote.url("/node"), "second")
            opened += [first, second]
            watcher = await a.app.spawn(lambda: Watching(sender))
            await watcher.tell(first.ready["conn"])
            await watcher.tell(second.ready["conn"])
            await watcher.tell(f"conn:{first.ready['node']}.999999")  # never existed

            with anyio.fail_after(TIMEOUT):
                nobody = await downs.receive()
            assert nobody == Down(f"conn:{first.ready['node']}.999999", DownReason.NO_ACTOR)

            await anyio.to_thread.run_sync(first.ws.close)
            with anyio.fail_after(TIMEOUT):
                ended = await downs.receive()
            assert ended.address == first.ready["conn"]
            assert ended.reason in (DownReason.STOPPED, DownReason.EXITED, DownReason.DRAINED)

            os.kill(remote.pid, signal.SIGKILL)
            with anyio.fail_after(TIMEOUT):
                lost = await downs.receive()
            assert lost == Down(second.ready["conn"], DownReason.NODE_LOST)
