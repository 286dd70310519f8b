"""Presence events across nodes, and the chat's live member list, tested from outside.

Each test runs one node in-process (asyncio with uvloop, and trio) and the
others as ``wsup serve`` child processes, all on a private ``redis-server``
with a 5 s node TTL, and talks to them with the ``websockets`` sync client in
a worker thread. A node is killed with SIGKILL: no goodbye reaches Redis, so
its members can only leave once its liveness key expires.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from supervisor.redis import RedisBackplane
from tests.e2e.apps.presence_app import app as presence_app
from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.redis_server import REDIS_SERVER, RedisMonitor, RedisServer
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

TIMEOUT = 20.0
"""Seconds to wait for one message (a deadlock guard, not a measurement)."""
TTL = "5"
"""The nodes' ``--redis-node-ttl``: how long a node that stops refreshing its liveness key
stays alive to the others. A killed node's members leave within 1.5 times this; shorter,
and a live node that a busy machine stalls that long is taken for dead (its members
leave, and the lists go wrong)."""


def recv(ws: ClientConnection) -> Any:
    """The next message, which must be JSON text."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    return json.loads(message)


def wait_for(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (a bounded wait for something another process does)."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def node(url: str, target: str) -> ServerProcess:
    """A ``wsup serve`` child node on the same Redis."""
    return ServerProcess(target, "--redis", url, "--redis-node-ttl", TTL)


# --- presence events ----------------------------------------------------------------------


def member(stack: ExitStack, port_url: str, user: str, group: str) -> tuple[ClientConnection, str]:
    """Connect a member of ``group``; return it and its own address, once it is ready
    (subscribed in Redis). Presence events that arrived before ``ready`` are dropped."""
    ws = stack.enter_context(connect(f"{port_url}?user={user}&group={group}", open_timeout=TIMEOUT))
    while "ready" not in (message := recv(ws)):
        assert message["type"] == "presence", message
    return ws, str(message["ready"])


def events(ws: ClientConnection, count: int) -> list[tuple[str, str, Any]]:
    """The next ``count`` messages, which must be presence events of ``room:x``."""
    got = []
    for _ in range(count):
        message = recv(ws)
        assert set(message) == {"type", "address", "event", "member", "meta"}, message
        assert (message["type"], message["address"]) == ("presence", "room:x"), message
        got.append((message["event"], message["member"], message["meta"]))
    return got


async def test_joins_and_leaves_reach_every_node_and_a_killed_nodes_leave_comes_once(
    redis_server: RedisServer,
) -> None:
    """Members on three nodes see each join and leave once; when one node is SIGKILLed,
    each of its members leaves once for everyone, though two nodes could report it."""
    url = redis_server.url
    target = "tests.e2e.apps.presence_app:app"
    inspector = redis.Redis.from_url(url)
    with ExitStack() as stack:
        stack.callback(inspector.close)
        doomed = stack.enter_context(node(url, target))
        other = stack.enter_context(node(url, target))
        backplane = RedisBackplane(url, node_ttl=float(TTL))
        async with running_server(presence_app, backplane=backplane) as here:
            await in_thread(doomed.wait_started)
            await in_thread(other.wait_started)

            def scenario() -> None:
                with ExitStack() as clients:
                    x, x_id = member(clients, ws_url(here, "/u"), "x", "room:x")
                    y, y_id = member(clients, other.url("/u"), "y", "room:x")
                    assert events(x, 1) == [("join", y_id, {"user": "y"})]
                    b1, b1_id = member(clients, doomed.url("/u"), "b1", "room:x")
                    b2, b2_id = member(clients, doomed.url("/u"), "b2", "room:x")
                    for ws in (x, y):
                        assert events(ws, 2) == [
                            ("join", b1_id, {"user": "b1"}),
                            ("join", b2_id, {"user": "b2"}),
                        ]
                    # A member that leaves the normal way (its connection closes).
                    b2.close()
                    assert events(b1, 1) == [("join", b2_id, {"user": "b2"})]
                    for ws in (x, y, b1):
                        assert events(ws, 1) == [("leave", b2_id, {"user": "b2"})]

                    # Its node wrote the leave to Redis too (a node killed before that
                    # round trip would leave b2 there, and b2 would leave a second time).
                    wait_for(
                        lambda: b2_id.encode() not in inspector.hkeys("wsup:presence:room:x"),
                        "b2's entry is gone",
                    )
                    doomed.signal(signal.SIGKILL)
                    doomed.wait(TIMEOUT)
                    for ws in (x, y):
                        assert events(ws, 1) == [("leave", b1_id, {"user": "b1"})]
                    # Both survivors swept the dead node's entries; one reported each.
                    wait_for(
                        lambda: (
                            set(inspector.hkeys("wsup:presence:room:x"))
                            == {x_id.encode(), y_id.encode()}
                        ),
                        "the dead node's entries are gone",
                    )
                    # What comes next is a new join, not a second leave of b1.
                    _, z_id = member(clients, ws_url(here, "/u"), "z", "room:x")
                    for ws in (x, y):
                        assert events(ws, 1) == [("join", z_id, {"user": "z"})]

            await in_thread(scenario)


# --- the chat's member list ---------------------------------------------------------------


def chat(base: str, user: str, *, presence: bool = True) -> ClientConnection:
    """Join room ``lobby`` as ``user``, with ``&presence=1`` unless told not to."""
    query = f"?user={user}" + ("&presence=1" if presence else "")
    return connect(f"{base}/chat/lobby{query}", open_timeout=TIMEOUT)


def members_list(ws: ClientConnection) -> list[str]:
    """The next message, which must be the chat's presence list of ``lobby``."""
    message = recv(ws)
    assert set(message) == {"type", "room", "members"}, message
    assert (message["type"], message["room"]) == ("presence", "lobby"), message
    return list(message["members"])


async def test_the_chat_lists_who_is_in_the_room_live_on_every_node(
    redis_server: RedisServer,
) -> None:
    """``&presence=1`` gets the room's users at once, then each change, from both
    nodes; a SIGKILLed node's users leave the list; without it nothing changes."""
    from examples import chat as chat_example

    url = redis_server.url
    inspector = redis.Redis.from_url(url)
    with ExitStack() as stack:
        stack.callback(inspector.close)
        doomed = stack.enter_context(node(url, "examples.chat:app"))
        backplane = RedisBackplane(url, node_ttl=float(TTL))
        async with running_server(chat_example.app, backplane=backplane) as here:
            await in_thread(doomed.wait_started)
            base = ws_url(here, "")
            there = doomed.url("")

            def in_redis(count: int) -> Callable[[], bool]:
                return lambda: (
                    inspector.hlen("wsup:presence:room:lobby") == count
                    and inspector.pubsub_numsub("wsup:addr:room:lobby")[0][1] == 2
                )

            def scenario() -> None:
                with ExitStack() as clients:
                    ada = clients.enter_context(chat(base, "ada"))
                    assert members_list(ada) == ["ada"]
                    plain = clients.enter_context(chat(base, "carol", presence=False))
                    bob = clients.enter_context(chat(there, "bob"))
                    # bob's node read ada (and carol) from Redis, or hears of them now.
                    while (names := members_list(bob)) != ["ada", "bob", "carol"]:
                        assert set(names) <= {"ada", "bob", "carol"}, names
                    while (names := members_list(ada)) != ["ada", "bob", "carol"]:
                        assert set(names) <= {"ada", "bob", "carol"}, names
                    wait_for(in_redis(3), "three members in Redis, both nodes subscribed")
                    # A second tab of bob's changes nothing in the list; closing one
                    # of them neither.
                    with chat(there, "bob") as tab:
                        assert members_list(tab) == ["ada", "bob", "carol"]
                    dave = clients.enter_context(chat(base, "dave"))
                    assert members_list(dave) == ["ada", "bob", "carol", "dave"]
                    for ws in (ada, bob):
                        assert members_list(ws) == ["ada", "bob", "carol", "dave"]
                    dave.close()
                    for ws in (ada, bob):
                        assert members_list(ws) == ["ada", "bob", "carol"]

                    doomed.signal(signal.SIGKILL)
                    doomed.wait(TIMEOUT)
                    assert members_list(ada) == ["ada", "carol"]
                    # The SPEC's protocol is unchanged for a client that did not ask.
                    plain.send(json.dumps({"type": "say", "text": "hi"}))
                    said = recv(plain)
                    assert {k: said[k] for k in ("type", "room", "from", "text")} == {
                        "type": "said",
                        "room": "lobby",
                        "from": "carol",
                        "text": "hi",
                    }
                    assert recv(ada)["type"] == "said"

            await in_thread(scenario)


async def test_a_presence_query_reads_redis_after_its_node_subscribed_to_the_address(
    redis_server: RedisServer,
) -> None:
    """A member joins a room, then asks who is there: Redis applies its node's
    SUBSCRIBE to the room before the read, so whoever joins on another node after the
    read reaches it as an event (read first, and that join could be neither read nor
    heard)."""
    from examples import chat as chat_example

    def subscribed(command: tuple[str, ...]) -> bool:
        return command[0] == "SUBSCRIBE" and "wsup:addr:room:lobby" in command

    def read(command: tuple[str, ...]) -> bool:
        return command[0] == "EVAL" and "wsup:presence:room:lobby" in command

    with RedisMonitor(redis_server.port) as monitor:
        backplane = RedisBackplane(redis_server.url, node_ttl=float(TTL))
        async with running_server(chat_example.app, backplane=backplane) as here:

            def scenario() -> None:
                with chat(ws_url(here, ""), "ada") as ada:
                    assert members_list(ada) == ["ada"]

            await in_thread(scenario)
        commands = monitor.wait_for(
            lambda seen: any(map(subscribed, seen)) and any(map(read, seen)),
            "the room subscribed and its presence read",
        )
    first_read = next(i for i, command in enumerate(commands) if read(command))
    assert any(subscribed(command) for command in commands[:first_read]), commands
