"""History and recovery end to end: real sockets, real clients, real Redis.

The nodes serve ``tests/e2e/apps/history_app.py`` in this process, each with
its own :class:`RedisBackplane`. Most tests share the machine's Redis on
127.0.0.1:6379 under a key prefix of their own (deleted afterwards); the test
that loses Redis's data runs its own ``redis-server`` and restarts it. Clients
are ``websockets`` sync clients in worker threads; a client that "drops" resets
its TCP connection (SO_LINGER 0), as a phone changing cell would, so the server
sees no close frame.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import anyio
import pytest
from websockets.sync.client import ClientConnection, connect

from supervisor import Server
from supervisor.redis import RedisBackplane
from tests.e2e.apps.history_app import make_app
from tests.helpers.redis_server import (
    REDIS_SERVER,
    SHARED_REDIS,
    RedisServer,
    needs_shared_redis,
    quick_backplane,
)
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

TIMEOUT = 20.0
"""Seconds a client waits for one message (a deadlock guard, not a measurement)."""


@asynccontextmanager
async def cluster(url: str, nodes: int = 2, **options: Any) -> AsyncIterator[list[Server]]:
    """Run ``nodes`` nodes of the history app on the Redis at ``url``."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                running_server(make_app(), backplane=quick_backplane(url, **options))
            )
            for _ in range(nodes)
        ]


# --- clients ------------------------------------------------------------------------------


class Member:
    """A client of one room; blocking, for worker threads."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(
            url, open_timeout=TIMEOUT, ping_interval=None
        ).__enter__()
        self.hello: dict[str, Any] = json.loads(self.ws.recv(TIMEOUT))

    def record(self) -> dict[str, Any]:
        """Return the next record: ``{"epoch", "offset", "message"}``."""
        record: dict[str, Any] = json.loads(self.ws.recv(TIMEOUT))
        assert set(record) == {"epoch", "offset", "message"}, record
        return record

    def say(self, *texts: str) -> None:
        """Publish each text to the room."""
        for text in texts:
            self.ws.send(text)

    def drop(self) -> None:
        """Reset the TCP connection: no close frame, as when a network goes away."""
        self.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.close_socket()  # with a zero linger time: an RST
        self.ws.recv_events_thread.join(TIMEOUT)

    def close(self) -> None:
        """Close cleanly."""
        self.ws.close()


@contextmanager
def member(url: str) -> Iterator[Member]:
    """A :class:`Member` closed on exit."""
    opened = Member(url)
    try:
        yield opened
    finally:
        opened.close()


def position(record: dict[str, Any]) -> str:
    """The ``EPOCH:OFFSET`` of a record."""
    return f"{record['epoch']}:{record['offset']}"


# --- numbering across the cluster -----------------------------------------------------------------


@needs_shared_redis
async def test_offsets_are_one_sequence_per_address_across_nodes(prefix: str) -> None:
    """Two nodes publish to one room at once: every member, on either node, sees the same
    records numbered 1, 2, 3... with no gap, each publisher's messages in its own order."""
    count = 150
    async with cluster(SHARED_REDIS, prefix=prefix) as (a, b):

        def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            with (
                member(ws_url(a, "/room/lobby")) as on_a,
                member(ws_url(b, "/room/lobby")) as on_b,
                member(ws_url(a, "/room/lobby?listen=0")) as pub_a,
                member(ws_url(b, "/room/lobby?listen=0")) as pub_b,
            ):
                pub_a.say(*(f"a{n}" for n in range(count)))
                pub_b.say(*(f"b{n}" for n in range(count)))
                return (
                    [on_a.record() for _ in range(2 * count)],
                    [on_b.record() for _ in range(2 * count)],
                )

        seen_a, seen_b = await in_thread(scenario)
    assert seen_a == seen_b
    assert [r["offset"] for r in seen_a] == list(range(1, 2 * count + 1))
    assert len({r["epoch"] for r in seen_a}) == 1
    for source in "ab":
        mine = [r["message"] for r in seen_a if r["message"].startswith(source)]
        assert mine == [f"{source}{n}" for n in range(count)]
    metrics = a.metrics.registry
    assert metrics.get_sample_value("wsup_history_appends_total") == count
    # Its own records came back through Redis too, but only b's came from another node.
    assert metrics.get_sample_value("wsup_backplane_messages_total", {"direction": "received"}) == (
        count
    )


# --- recovery ------------------------------------------------------------------------------------


def every_few_messages() -> Callable[[int], bool]:
    """Drop after 1 message, then 8, 15, 22, ...: at ever different places."""
    burst = 1

    def due(read: int) -> bool:
        nonlocal burst
        if read < burst:
            return False
        burst = burst % 53 + 7
        return True

    return due


def every_few_seconds(seconds: float) -> Callable[[int], bool]:
    """Drop once ``seconds`` have passed on the connection."""
    deadline = time.monotonic() + seconds

    def due(read: int) -> bool:
        nonlocal deadline
        if time.monotonic() < deadline:
            return False
        deadline = time.monotonic() + seconds
        return True

    return due


def flapping_reader(
    urls: list[str], total: int, first: Member, due: Callable[[int], bool]
) -> tuple[list[str], int]:
    """Read ``total`` messages from a room, dropping the connection whenever ``due(read)``
    says so (``read``: the messages read on that connection) and coming back, on the
    next node each time, with the last position seen.

    Returns what was read, in order, and how many times it came back.
    """
    got: list[str] = []
    current = first
    returns = read = 0
    while True:
        record = current.record()
        got.append(record["message"])
        read += 1
        if len(got) == total:
            current.close()
            return got, returns
        if due(read):
            current.drop()
            returns += 1
            read = 0
            current = Member(f"{urls[returns % len(urls)]}?since={position(record)}")
            assert current.hello["recovery"] == "recovered", current.hello


def paced(publisher: Member, total: int, rate: float) -> None:
    """Publish the messages ``0`` to ``total - 1`` at ``rate`` a second, ten at a time."""
    start = time.monotonic()
    for first in range(0, total, 10):
        ahead = start + first / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        publisher.say(*map(str, range(first, min(first + 10, total))))


def read_while_publishing(
    servers: list[Server], total: int, due: Callable[[int], bool], say: Callable[[Member], None]
) -> tuple[list[str], int]:
    """A reader of ``/room/busy`` on the first node flaps over every node (see
    :func:`flapping_reader`) while a publisher on the first node runs ``say``."""
    urls = [ws_url(server, "/room/busy") for server in servers]
    reader = Member(urls[0])
    with (
        member(f"{urls[0]}?listen=0") as publisher,
        anyio.from_thread.start_blocking_portal() as portal,
    ):
        sending = portal.start_task_soon(partial(anyio.to_thread.run_sync, say, publisher))
        got, returns = flapping_reader(urls, total, reader, due)
        sending.result(TIMEOUT)
    return got, returns


def recoveries(servers: list[Server]) -> float:
    """The successful recoveries of every node."""
    return sum(
        server.metrics.registry.get_sample_value(
            "wsup_history_recoveries_total", {"result": "recovered"}
        )
        or 0.0
        for server in servers
    )


@needs_shared_redis
async def test_a_client_that_keeps_dropping_loses_nothing_and_gets_nothing_twice(
    prefix: str,
) -> None:
    """A publisher sends 1,500 numbered messages while a reader's TCP connection is reset
    every few messages and it comes back on the other node with ``since``: it reads every
    message exactly once, in order."""
    total = 1500
    async with cluster(SHARED_REDIS, prefix=prefix) as nodes:
        got, returns = await in_thread(
            read_while_publishing,
            nodes,
            total,
            every_few_messages(),
            lambda publisher: publisher.say(*map(str, range(total))),
        )
        recovered = recoveries(nodes)
    assert got == [str(n) for n in range(total)]
    assert returns > 20
    assert recovered == returns


@needs_shared_redis
@pytest.mark.parametrize("nodes", [1, 2])
async def test_a_reader_reset_every_few_seconds_under_1000_messages_a_second_misses_nothing(
    prefix: str, nodes: int
) -> None:
    """A publisher sends 1,000 numbered messages a second for 6 s while the reader's TCP
    connection is reset every 1.5 s and comes back with ``since`` (to the same node, or
    to the other one): it reads every message exactly once, in order."""
    rate, seconds = 1000, 6
    total = rate * seconds
    async with cluster(SHARED_REDIS, nodes=nodes, prefix=prefix) as servers:
        got, returns = await in_thread(
            read_while_publishing,
            servers,
            total,
            every_few_seconds(1.5),
            lambda publisher: paced(publisher, total, rate),
        )
        recovered = recoveries(servers)
    assert len(got) == total
    assert got == [str(n) for n in range(total)]
    assert returns >= 2
    assert recovered == returns


@needs_shared_redis
async def test_a_position_the_history_no_longer_holds_is_refused(prefix: str) -> None:
    """A room keeps 3 messages: from offset 2 of 5 the client gets 3, 4 and 5; from
    offset 1, "trimmed" and nothing; from an offset never given, "invalid"."""
    async with cluster(SHARED_REDIS, nodes=1, prefix=prefix) as (a,):

        def scenario() -> list[Any]:
            with member(ws_url(a, "/small/s")) as listener:
                listener.say(*(f"m{n}" for n in range(1, 6)))
                records = [listener.record() for _ in range(5)]
            epoch = records[0]["epoch"]
            outcomes: list[Any] = []
            for offset in (2, 1, 9):
                with member(ws_url(a, f"/small/s?since={epoch}:{offset}")) as back:
                    outcomes.append(back.hello)
                    if back.hello["recovery"] == "recovered":
                        outcomes.append([back.record()["message"] for _ in range(3)])
            return [epoch, *outcomes]

        epoch, *outcomes = await in_thread(scenario)
    assert outcomes == [
        {"recovery": "recovered", "position": f"{epoch}:5"},
        ["m3", "m4", "m5"],
        {"recovery": "trimmed", "position": f"{epoch}:5"},
        {"recovery": "invalid", "position": f"{epoch}:5"},
    ]


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_losing_its_data_starts_a_new_epoch_and_recovery_says_so(
    redis_server: RedisServer,
) -> None:
    """Redis restarted empty: a client's old position is refused (``epoch_changed``), and
    the next message starts a new epoch at offset 1 on every node."""
    async with cluster(redis_server.url) as (a, b):

        def before() -> dict[str, Any]:
            with member(ws_url(a, "/room/r")) as listener:
                listener.say("before")
                return listener.record()

        old = await in_thread(before)
        redis_server.kill()
        for node in (a, b):
            bp = node.runtime.backplane
            assert isinstance(bp, RedisBackplane)
            await bp.wait_for_state(up=False)
        await in_thread(redis_server.start)
        for node in (a, b):
            bp = node.runtime.backplane
            assert isinstance(bp, RedisBackplane)
            await bp.wait_for_state(up=True)

        def after() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            with (
                member(ws_url(b, f"/room/r?since={position(old)}")) as back,
                member(ws_url(a, "/room/r?listen=0")) as publisher,
            ):
                publisher.say("after")
                return back.hello, back.record(), old

        hello, new, _ = await in_thread(after)
    assert old["offset"] == 1
    assert hello == {"recovery": "epoch_changed", "position": None}
    assert new["offset"] == 1
    assert new["epoch"] != old["epoch"]
    assert new["message"] == "after"
