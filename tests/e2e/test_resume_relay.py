"""Resuming on another node: the claim and the relay, end to end; and a reader reset
under load, on one node and on two.

One to three nodes share a real Redis (each test under a key prefix of its own);
clients are ``websockets`` sync clients in worker threads, and a client that
drops resets its TCP connection (SO_LINGER 0), as in ``test_resume.py``. The
app is ``tests/e2e/apps/resume_app.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from websockets.exceptions import ConnectionClosed

from actors import FakeClock
from supervisor import App, Server, SlowConsumerPolicy
from supervisor.metrics import Metrics
from supervisor.redis import RedisBackplane
from tests.e2e.apps.resume_app import GRACE, Returning, make_app
from tests.e2e.test_resume import TIMEOUT, Client, connect_and_drop, detached, resumes
from tests.helpers.metrics import sample
from tests.helpers.raw import read_head
from tests.helpers.redis_server import SHARED_REDIS, needs_shared_redis, quick_backplane
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, needs_shared_redis]

PATH = "/room/lobby?user=ada"


async def synced(*servers: Server) -> None:
    """Wait until every subscription of ``servers`` is in Redis (groups, endpoints)."""
    for server in servers:
        backplane = server.runtime.backplane
        assert isinstance(backplane, RedisBackplane)
        with anyio.fail_after(20):
            await backplane.synced()


@asynccontextmanager
async def nodes(prefix: str, count: int = 2, **options: Any) -> AsyncIterator[list[Server]]:
    """``count`` nodes of the resume app on one Redis, subscriptions synced."""
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                running_server(
                    make_app(**options), backplane=quick_backplane(SHARED_REDIS, prefix=prefix)
                )
            )
            for _ in range(count)
        ]
        await synced(*servers)
        yield servers


@asynccontextmanager
async def mortal_home(
    prefix: str, make: Callable[[], App] = make_app
) -> AsyncIterator[tuple[Server, Server, anyio.CancelScope]]:
    """Nodes ``a`` and ``b`` of ``make``'s app on one Redis, synced; ``a`` lives 3 s in
    the backplane's node list unrefreshed, and cancelling the scope given stops it
    without a drain (its process gone), while ``b`` and the test go on."""
    async with (
        running_server(make(), backplane=quick_backplane(SHARED_REDIS, prefix=prefix)) as b,
        anyio.create_task_group() as tg,
    ):
        app = make()
        a = Server(
            app,
            dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0),
            metrics=Metrics(),
            backplane=quick_backplane(SHARED_REDIS, prefix=prefix, node_ttl=3.0),
        )
        kill = anyio.CancelScope()

        async def serve_a(*, task_status: anyio.abc.TaskStatus[Server]) -> None:
            with kill:
                await a.serve(task_status=task_status)

        await tg.start(serve_a)
        try:
            await synced(a, b)
            yield a, b, kill
        finally:
            kill.cancel()


async def relayed(home: Server, relay: Server, token: str) -> Client:
    """Come back on ``relay`` with ``token``; the client, once its relay runs."""
    client = await in_thread(Client, f"{ws_url(relay, PATH)}&resume={token}")
    assert client.hello["resumed"] is True, client.hello
    return client


async def test_a_client_back_on_another_node_gets_what_it_missed_then_live_traffic(
    prefix: str,
) -> None:
    """The token's node keeps the actor: the client, back on the other node, gets the
    announcement, every message that waited, in order and once, then live traffic
    both ways (its messages reach the same actor, with its state)."""
    async with nodes(prefix) as (a, b):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        await synced(a)  # the detached actor's group
        for n in range(5):
            await a.app.publish("room:lobby", f"m{n}")
        again = await relayed(a, b, first.token)
        assert again.hello == {
            "type": "wsup.resume",
            "token": first.token,
            "grace": GRACE,
            "resumed": True,
        }
        assert [await in_thread(again.recv) for _ in range(5)] == [f"m{n}" for n in range(5)]
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        assert await in_thread(again.ask, "three") == {"echo": "three", "seen": 3, "conn": address}
        await b.app.publish("room:lobby", "live from b")
        assert await in_thread(again.recv) == "live from b"
        await a.app.publish("room:lobby", "live from a")
        assert await in_thread(again.recv) == "live from a"
        assert resumes(b, "relayed") == 1
        assert resumes(b, "other_node") == 0
        assert detached(a) == 0
        assert a.app.state["closed"] == []
        await in_thread(again.close)
        await wait_until(lambda: bool(a.app.state["closed"]))
        assert a.app.state["closed"] == [(address, 1000, "")]
        await wait_until(lambda: not b.connections and not a.connections)


async def test_binary_messages_cross_the_relay_both_ways(prefix: str) -> None:
    """Binary frames stay binary and byte-exact, from the client and to it."""
    async with nodes(prefix) as (a, b):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        again = await relayed(a, b, first.token)
        data = bytes(range(256))
        await in_thread(again.ws.send, data)
        answer = json.loads(await in_thread(again.recv))
        assert answer == {"echo": {"hex": data.hex()}, "seen": 2, "conn": address}
        await synced(a)
        await a.app.publish("room:lobby", data)
        assert await in_thread(again.recv) == data
        await in_thread(again.close)


async def test_a_client_that_drops_while_relayed_can_resume_again(prefix: str) -> None:
    """A drop of the relayed socket detaches the home actor again (its grace window
    starts over): what is sent meanwhile waits there, and the client gets it on
    its next resume, on the home node this time."""
    async with nodes(prefix) as (a, b):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        again = await relayed(a, b, first.token)
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.drop)
        await eventually(lambda: detached(a) == 1)
        await wait_until(lambda: not b.connections)
        for n in range(3):
            await a.app.publish("room:lobby", f"away {n}")
        home = await in_thread(Client, f"{ws_url(a, PATH)}&resume={first.token}")
        assert home.hello["resumed"] is True
        assert [await in_thread(home.recv) for _ in range(3)] == [f"away {n}" for n in range(3)]
        assert await in_thread(home.ask, "four") == {"echo": "four", "seen": 3, "conn": address}
        assert a.app.state["closed"] == []
        assert resumes(a, "resumed") == 1
        assert resumes(b, "relayed") == 1
        await in_thread(home.close)


async def test_a_relayed_client_resumes_on_a_third_node_after_a_drop(prefix: str) -> None:
    """Relayed through one node, dropped, back through another: still the same actor,
    and nothing sent meanwhile is lost."""
    async with nodes(prefix, 3) as (a, b, c):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        via_b = await relayed(a, b, first.token)
        await in_thread(via_b.drop)
        await eventually(lambda: detached(a) == 1)
        await synced(a)
        await c.app.publish("room:lobby", "while away")
        via_c = await relayed(a, c, first.token)
        assert await in_thread(via_c.recv) == "while away"
        assert await in_thread(via_c.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(via_c.close)


async def test_the_home_node_stopping_closes_the_relay_with_its_drain(prefix: str) -> None:
    """The home node shutting down drains the actor: the relayed client gets what
    was queued, then the drain's close (1001)."""
    async with AsyncExitStack() as stack:
        backplane = quick_backplane(SHARED_REDIS, prefix=prefix)
        b = await stack.enter_async_context(
            running_server(make_app(), backplane=quick_backplane(SHARED_REDIS, prefix=prefix))
        )
        async with running_server(make_app(), backplane=backplane) as a:
            await synced(a, b)
            first, _ = await connect_and_drop(a, ws_url(a, PATH))
            again = await relayed(a, b, first.token)
            await a.app.publish("room:lobby", "last")
            assert await in_thread(again.recv) == "last"
        with anyio.fail_after(20):
            code, reason = await in_thread(closed_with, again)
        assert (code, reason) == (1001, "server shutting down")
        await wait_until(lambda: not b.connections)


async def test_a_lost_home_node_closes_the_relay_with_1012(prefix: str) -> None:
    """A home node that stops without draining (its process gone) is noticed when the
    backplane stops listing it: the relay closes with 1012, its documented code."""
    async with mortal_home(prefix) as (a, b, kill):
        first, _ = await connect_and_drop(a, ws_url(a, PATH))
        again = await relayed(a, b, first.token)
        kill.cancel()  # no drain: the node is gone
        with anyio.fail_after(30):
            code, reason = await in_thread(closed_with, again)
        assert (code, reason) == (1012, "resume home node lost")
        await wait_until(lambda: not b.connections)


async def test_concurrent_claims_leave_exactly_one_client_attached(prefix: str) -> None:
    """Two clients come back with the same token on two other nodes at once: the
    home node takes the claims one at a time, the later taking over (as on one
    node); in the end exactly one socket is attached, and the other is dropped."""
    async with nodes(prefix, 3) as (a, b, c):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        came_back: dict[str, Client | None] = {}

        async def come_back(name: str, server: Server) -> None:
            try:
                came_back[name] = await in_thread(
                    Client, f"{ws_url(server, PATH)}&resume={first.token}"
                )
            except ConnectionClosed:  # dropped before its announcement: taken over
                came_back[name] = None

        async with anyio.create_task_group() as tg:
            tg.start_soon(come_back, "b", b)
            tg.start_soon(come_back, "c", c)
        await eventually(lambda: len(b.connections) + len(c.connections) == 1)
        name = "b" if b.connections else "c"
        winner, loser = came_back[name], came_back["c" if name == "b" else "b"]
        assert winner is not None
        assert winner.hello["resumed"] is True
        if loser is not None:
            assert await in_thread(loser.ended)  # dropped without a close frame
        assert (await in_thread(winner.ask, "two"))["conn"] == address
        await a.app.publish("room:lobby", "for the winner")
        assert await in_thread(winner.recv) == "for the winner"
        assert len(a.connections) == 1
        assert a.app.state["closed"] == []
        await in_thread(winner.close)


async def test_a_token_with_another_identity_is_refused_across_nodes(prefix: str) -> None:
    """The home node checks the hooks' values: bob cannot take ada's connection through
    another node (``mismatch``, a new connection there), and ada still can."""
    async with nodes(prefix) as (a, b):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        for other in ("/room/lobby?user=bob", "/room/other?user=ada"):
            thief = await in_thread(Client, f"{ws_url(b, other)}&resume={first.token}")
            assert thief.hello["resumed"] is False
            assert thief.hello["refused"] == "mismatch"
            assert (await in_thread(thief.ask, "x"))["conn"] != address
            await in_thread(thief.close)
        assert resumes(b, "mismatch") == 2
        assert detached(a) == 1
        again = await relayed(a, b, first.token)
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.close)


async def test_a_token_of_a_node_nobody_runs_is_refused_as_other_node(prefix: str) -> None:
    """A token that names a node the backplane does not know: refused ``other_node``,
    a new connection; as is a token of a node gone since."""
    async with nodes(prefix, 1) as (a,):
        client = await in_thread(Client, f"{ws_url(a, PATH)}&resume=abcdefgh.nosuchnode")
        assert client.hello["resumed"] is False
        assert client.hello["refused"] == "other_node"
        assert (await in_thread(client.ask, "x"))["seen"] == 1
        assert resumes(a, "other_node") == 1
        await in_thread(client.close)
        backplane = quick_backplane(SHARED_REDIS, prefix=prefix)
        async with running_server(make_app(), backplane=backplane) as b:
            first, _ = await connect_and_drop(b, ws_url(b, PATH))
        # The token's node is gone.
        late = await in_thread(Client, f"{ws_url(a, PATH)}&resume={first.token}")
        assert late.hello["refused"] == "other_node"
        assert resumes(a, "other_node") == 2
        await in_thread(late.close)


async def test_a_relayed_client_that_reads_nothing_meets_the_routes_slow_consumer_policy(
    prefix: str,
) -> None:
    """The relay node holds what its socket cannot take under the route's outbound
    limit: under ``disconnect``, a relayed client that stops reading is closed there
    (1013), and the home actor ends with the same code."""
    options: dict[str, Any] = {
        "outbound_limit": 256 * 1024,
        "slow_consumer": SlowConsumerPolicy.DISCONNECT,
    }
    async with nodes(prefix, **options) as (a, b):
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        await synced(a)
        host, port = b.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            # A small receive buffer, and nothing read after the 101: the server's
            # outbound buffer is what fills.
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            key = base64.b64encode(os.urandom(16)).decode()
            await stream.send(
                f"GET {PATH}&resume={first.token} HTTP/1.1\r\nHost: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await read_head(stream)
            assert head.startswith(b"HTTP/1.1 101"), head
            await eventually(lambda: resumes(b, "relayed") == 1)
            (home,) = a.connections
            chunk = "x" * 32 * 1024
            with anyio.fail_after(120):
                while not a.app.state["closed"]:
                    await a.app.publish("room:lobby", chunk)
                    # At the pace the home node relays: its own buffer never fills.
                    await wait_until(lambda: home.buffered_bytes < 64 * 1024)
        assert a.app.state["closed"] == [(address, 1013, "slow consumer")]
        slow = {"reason": "slow_consumer", "initiator": "server"}
        assert sample(b, "wsup_connections_closed_total", **slow) == 1


def closed_with(client: Client) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    frame = None
    try:
        while True:
            client.ws.recv(20)
    except ConnectionClosed as exc:
        frame = exc.rcvd
    assert frame is not None, "dropped without a close frame"
    return frame.code, frame.reason


async def test_on_resume_runs_on_the_home_node_for_a_relayed_client(prefix: str) -> None:
    """``on_resume`` runs for a resume through another node too, after what waited."""
    async with nodes(prefix, handler=Returning) as (a, b):
        first, _ = await connect_and_drop(a, ws_url(a, PATH))
        await synced(a)
        await b.app.publish("room:lobby", "waited")
        again = await relayed(a, b, first.token)
        assert await in_thread(again.recv) == "waited"
        assert json.loads(await in_thread(again.recv)) == {"welcome_back": 1}
        await in_thread(again.close)


async def test_a_drop_while_relayed_starts_the_grace_window_over(prefix: str) -> None:
    """The home node's grace window (a fake clock there) starts over at each drop: a
    client relayed just before its window ended, then dropped, has a whole window
    again; after it, the actor ends with ``resume_expired``."""
    clock = FakeClock()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            running_server(
                make_app(), backplane=quick_backplane(SHARED_REDIS, prefix=prefix), clock=clock
            )
        )
        b = await stack.enter_async_context(
            running_server(make_app(), backplane=quick_backplane(SHARED_REDIS, prefix=prefix))
        )
        await synced(a, b)
        first, address = await connect_and_drop(a, ws_url(a, PATH))
        await clock.step(0)
        await clock.step(GRACE - 1)
        again = await relayed(a, b, first.token)
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.drop)
        await eventually(lambda: detached(a) == 1)
        await clock.step(0)  # the new window's timer is set (its task has run)
        await clock.step(GRACE - 1)
        assert a.app.state["closed"] == []
        await clock.step(1)
        await wait_until(lambda: bool(a.app.state["closed"]))
        assert a.app.state["closed"] == [(address, 1006, "resume window expired")]
        assert resumes(a, "expired") == 1


# --- a reader reset under load ----------------------------------------------------------------


class Published:
    """How many of the numbered messages ``0, 1, 2...`` the publisher has begun to send."""

    def __init__(self) -> None:
        self.count = 0


async def paced(server: Server, total: int, rate: float, published: Published) -> None:
    """Publish ``"0"`` to ``str(total - 1)`` to ``room:busy`` at ``rate`` a second, ten at a
    time, counting each in ``published`` as its send begins (a member may get it
    before the send returns)."""
    start = anyio.current_time()
    for first in range(0, total, 10):
        await anyio.sleep_until(start + first / rate)
        for n in range(first, min(first + 10, total)):
            published.count = n + 1
            await server.app.publish("room:busy", str(n))


def flapping_reader(
    servers: list[Server], client: Client, total: int, published: Published, seconds: float
) -> tuple[list[int], int, list[tuple[int, int]]]:
    """Read ``/room/busy`` through ``client`` (connected to the first node) until the last
    message, resetting the TCP connection every ``seconds`` and coming back with the
    token to the next node each time (to the first one again after the last).

    Before it comes back, the reader waits until the home node (the first) detached
    the connection, and notes how many messages had begun to be published by then:
    those published later were sent while it was detached, or after it came back.
    Every message must arrive once, in order; the only gap allowed is right after a
    resume, of messages published before the connection detached (what the server
    may have written to the socket that broke). Returns the numbers read, how many
    times the reader came back, and the gaps as ``(first missing, first not missing)``.
    """
    home = servers[0]
    urls = [ws_url(server, "/room/busy?user=ada") for server in servers]
    token = client.token
    got: list[int] = []
    gaps: list[tuple[int, int]] = []
    returns = 0
    published_when_detached = 0
    just_back = False
    due = time.monotonic() + seconds
    while not got or got[-1] != total - 1:
        message = client.recv()
        assert isinstance(message, str), message
        n = int(message)
        expected = got[-1] + 1 if got else 0
        if n != expected:
            assert just_back, f"{n} after {expected - 1}, not at a reset"
            assert n > expected, f"{n} after {expected - 1}: twice or out of order"
            assert n <= published_when_detached, (
                f"{expected}..{n - 1} lost; only {published_when_detached} had begun to "
                "be published when the connection detached"
            )
            gaps.append((expected, n))
        got.append(n)
        just_back = False
        if time.monotonic() >= due and n < total - 1:
            client.drop()
            returns += 1
            give_up = time.monotonic() + TIMEOUT
            while anyio.from_thread.run_sync(detached, home) != 1:
                assert time.monotonic() < give_up, "the connection never detached"
                time.sleep(0.005)
            published_when_detached = published.count
            client = Client(f"{urls[returns % len(urls)]}&resume={token}")
            assert client.hello["resumed"] is True, client.hello
            assert client.token == token
            just_back = True
            due = time.monotonic() + seconds
    client.close()
    return got, returns, gaps


@pytest.mark.parametrize("count", [1, 2])
async def test_a_reader_reset_every_few_seconds_under_1000_messages_a_second_resumes_in_order(
    prefix: str, count: int
) -> None:
    """A publisher sends 1,000 numbered messages a second for 6 s to a room while the
    reader's TCP connection is reset every 1.5 s and comes back with its token: to the
    same node, or to each of two in turn (relayed every other time). It keeps one
    actor, and reads every message once and in order, but for what a broken socket
    may lose (see :func:`flapping_reader`): everything sent while it was detached
    arrives."""
    rate, seconds = 1000, 6
    total = rate * seconds
    published = Published()
    async with nodes(prefix, count) as servers:
        a = servers[0]
        client = await in_thread(Client, ws_url(a, "/room/busy?user=ada"))
        await synced(a)  # the reader's group
        async with anyio.create_task_group() as tg:
            tg.start_soon(paced, a, total, rate, published)
            got, returns, gaps = await in_thread(
                flapping_reader, servers, client, total, published, 1.5
            )
        await wait_until(lambda: bool(a.app.state["closed"]))
        closed = a.app.state["closed"]
        relayed_ = resumes(servers[-1], "relayed") if count == 2 else 0.0
        resumed = resumes(a, "resumed")
    assert returns >= 2
    assert got[-1] == total - 1
    assert len(got) == total - sum(end - start for start, end in gaps)
    # Back to the second node every other time (1st, 3rd...), relayed; else home.
    assert (resumed, relayed_) == (
        (returns, 0) if count == 1 else (returns // 2, returns - returns // 2)
    )
    assert [code for _, code, _ in closed] == [1000]  # one actor, all along
