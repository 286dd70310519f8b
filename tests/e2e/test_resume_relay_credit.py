"""Flow control across the relay: what a relayed client sends waits on the home node
no more than the relay's window, and the relay node stops reading the socket as a
direct connection would (see ``supervisor/server/_relay.py``, step 5).

Two nodes share the in-process hub of ``docs/extending.md`` or a real Redis. The
home actor's handler waits on a gate before it takes each numbered message, so
the home mailbox (4 messages, ``block``) stays full until the test opens it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog
from websockets.exceptions import ConnectionClosed

from actors import FakeClock, MailboxConfig
from examples.extending.two_nodes import Hub, HubBackplane
from supervisor import Server
from supervisor.server._relay import (
    CREDIT_QUERY_INTERVAL,
    OVERRUN_CODE,
    OVERRUN_REASON,
    RELAY_KEY,
    RelayDriver,
    RelayHandler,
    endpoint,
    window_for,
)
from tests.e2e.apps.resume_app import Member, make_app
from tests.e2e.test_resume import Client, connect_and_drop
from tests.e2e.test_resume_relay import PATH, closed_with, mortal_home, relayed, synced
from tests.helpers.metrics import sample
from tests.helpers.redis_server import SHARED_REDIS, needs_shared_redis, quick_backplane
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

CAPACITY = 4
"""The route's mailbox, on both nodes: the relay's window is as many."""
WINDOW = window_for(CAPACITY)


class Gated(Member):
    """A member that takes each numbered message (``m...``) only once the gate in
    ``app.state["gate"]`` is open, and records it in ``app.state["got"]``."""

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("m"):
            gate: anyio.Event | None = self.app.state.get("gate")
            if gate is not None:
                await gate.wait()
            self.app.state["got"].append(message[:5])
            return
        await super().on_message(message)


def gated_app() -> Any:
    app = make_app(Gated, mailbox=MailboxConfig(capacity=CAPACITY))
    app.state["got"] = []
    return app


Backplanes = Callable[[], Any]


def hub_backplanes() -> Backplanes:
    hub = Hub()
    return lambda: HubBackplane(hub)


def redis_backplanes(prefix: str) -> Backplanes:
    return lambda: quick_backplane(SHARED_REDIS, prefix=prefix)


@pytest.fixture(params=["hub", pytest.param("redis", marks=needs_shared_redis)])
def backplanes(request: pytest.FixtureRequest, prefix: str) -> Backplanes:
    """A factory of backplanes that join nodes: the hub's, or a real Redis's."""
    return hub_backplanes() if request.param == "hub" else redis_backplanes(prefix)


@asynccontextmanager
async def two_nodes(backplanes: Backplanes) -> AsyncIterator[tuple[Server, Server]]:
    """A home node and a relay node of the gated app."""
    async with AsyncExitStack() as stack:
        a, b = [
            await stack.enter_async_context(running_server(gated_app(), backplane=backplanes()))
            for _ in range(2)
        ]
        if not isinstance(a.runtime.backplane, HubBackplane):
            await synced(a, b)
        yield a, b


async def relay_of(a: Server, b: Server) -> tuple[Client, RelayDriver]:
    """A client of ``a``, dropped and back on ``b``, with ``a``'s gate closed; its relay
    driver on ``a``."""
    first, _ = await connect_and_drop(a, ws_url(a, PATH))
    a.app.state["gate"] = anyio.Event()
    again = await relayed(a, b, first.token)
    assert a.relays is not None
    (driver,) = a.relays._drivers.values()
    return again, driver


def stalled(b: Server, driver: RelayDriver) -> bool:
    """Whether ``b``'s relay waits for credit that its home side (``driver``) will not
    give before its actor takes more, and has stopped reading its socket."""
    assert b.relays is not None
    (handler,) = b.relays._relays.values()
    (relay,) = b.connections
    window = handler._window
    assert window is not None
    return (
        relay.statistics().reading_paused
        and waiting(handler)
        and window.acked == driver._ledger.told
        and window.full()
    )


def waiting(handler: RelayHandler) -> bool:
    return handler._credit_wake is not None


def flood(client: Client, count: int, size: int, sent: list[int]) -> None:
    """Send ``count`` numbered messages of ``size`` characters; count those sent."""
    pad = "x" * (size - 5)
    try:
        for n in range(count):
            client.ws.send(f"m{n:04d}{pad}")
            sent[0] += 1
    except ConnectionClosed:
        pass


async def test_a_relayed_flood_waits_within_the_window_and_stops_the_relay_reading(
    backplanes: Backplanes,
) -> None:
    """A relayed client floods a ``block`` route whose handler is stuck: the home
    node's inbox never holds more than the window, the relay node stops reading
    the socket (the client's sends back up, far from all sent), and once the
    handler goes on every message arrives once, in order."""
    count, size = 128, 256 * 1024  # 32 MiB: more than any socket buffers take
    async with two_nodes(backplanes) as (a, b):
        client, driver = await relay_of(a, b)
        (relay,) = b.connections
        sent = [0]
        sender = threading.Thread(target=flood, args=(client, count, size, sent), daemon=True)
        sender.start()
        await wait_until(lambda: stalled(b, driver) or driver.high_water > WINDOW)
        assert driver.high_water <= WINDOW
        # What the relay node read: the home mailbox, the message in the handler, the
        # window, the relay's mailbox, the message it holds, one read's worth.
        assert relay.statistics().messages_in <= 3 * CAPACITY + WINDOW + 4
        assert sent[0] < count
        a.app.state["gate"].set()
        await wait_until(lambda: len(a.app.state["got"]) == count, timeout=60)
        await in_thread(sender.join, 20)
        assert a.app.state["got"] == [f"m{n:04d}" for n in range(count)]
        assert driver.high_water <= WINDOW
        await in_thread(client.close)


@needs_shared_redis
async def test_a_home_node_lost_while_its_relay_waits_for_credit_closes_it_with_1012(
    prefix: str,
) -> None:
    """The relay waits for credit, its mailbox full (so the node's ``Down`` cannot
    reach it), when the home node dies without draining: it asks, nobody listens,
    and the client still gets 1012. On Redis, as the test without a flood in
    ``test_resume_relay.py``."""
    async with mortal_home(prefix, gated_app) as (a, b, kill):
        client, driver = await relay_of(a, b)
        sent = [0]
        sender = threading.Thread(target=flood, args=(client, 64, 16, sent), daemon=True)
        sender.start()
        await wait_until(lambda: stalled(b, driver))
        kill.cancel()  # no drain: the node is gone
        with anyio.fail_after(30):
            code, reason = await in_thread(closed_with, client)
        assert (code, reason) == (1012, "resume home node lost")
        await wait_until(lambda: not b.connections)
        await in_thread(sender.join, 20)


async def test_a_relay_that_ignores_its_window_ends_the_connection(
    backplanes: Backplanes,
) -> None:
    """A peer that sends past twice the window (a bug, or a node that ignores
    credit) meets the hard bound: the home connection closes with 1011 and a
    clear reason, logged and counted, and keeps nothing more of it."""
    async with two_nodes(backplanes) as (a, b):
        client, driver = await relay_of(a, b)
        claim = driver._claim
        with structlog.testing.capture_logs() as logs:
            for n in range(1, 4 * WINDOW):
                message = {RELAY_KEY: "in", "claim": claim, "n": n, "t": f"m{n:04d}"}
                await b.runtime.send(endpoint(a.runtime.node_id), message)
            code, reason = await in_thread(closed_with, client)
        assert (code, reason) == (OVERRUN_CODE, OVERRUN_REASON)
        overruns = [log for log in logs if log["event"] == "connection.relay_overrun"]
        assert len(overruns) == 1
        assert overruns[0]["window"] == WINDOW
        assert driver.high_water <= 2 * WINDOW
        assert not driver._inbox
        a.app.state["gate"].set()
        internal = {"reason": "internal_error", "initiator": "server"}
        await wait_until(lambda: sample(a, "wsup_connections_closed_total", **internal) == 1)


async def test_a_credit_lost_on_the_way_is_asked_for_again() -> None:
    """The backplane loses the home side's credits: the relay, having waited
    ``CREDIT_QUERY_INTERVAL`` (a fake clock on the relay node), asks, gets it, and
    goes on; every message arrives once, in order."""
    hub = Hub()
    clock = FakeClock()
    async with (
        running_server(gated_app(), backplane=HubBackplane(hub)) as a,
        running_server(gated_app(), backplane=HubBackplane(hub), clock=clock) as b,
    ):
        client, driver = await relay_of(a, b)
        a.app.state["gate"].set()
        assert b.relays is not None
        relays = b.relays
        (handler,) = relays._relays.values()
        lost: list[Any] = []
        losing = True

        def lossy(message: Any) -> None:
            if losing and message.get(RELAY_KEY) == "credit":
                lost.append(message)
                return
            relays._received(message)

        b.runtime.remove_receiver(relays.endpoint)
        b.runtime.add_receiver(relays.endpoint, lossy)
        count = 8 * WINDOW
        sent = [0]
        sender = threading.Thread(target=flood, args=(client, count, 16, sent), daemon=True)
        sender.start()
        await wait_until(lambda: waiting(handler) and len(a.app.state["got"]) == WINDOW)
        assert lost
        assert not driver._inbox
        losing = False
        await clock.step(CREDIT_QUERY_INTERVAL)
        await wait_until(lambda: len(a.app.state["got"]) == count)
        await in_thread(sender.join, 20)
        assert a.app.state["got"] == [f"m{n:04d}" for n in range(count)]
        await in_thread(client.close)


async def test_a_relay_waiting_for_a_home_side_that_relays_it_no_more_is_dropped() -> None:
    """The home side stopped relaying the claim and its word was lost on the way:
    the waiting relay asks, is told ``abort``, and drops its socket (the client may
    come back), instead of waiting for ever."""
    hub = Hub()
    clock = FakeClock()
    async with (
        running_server(gated_app(), backplane=HubBackplane(hub)) as a,
        running_server(gated_app(), backplane=HubBackplane(hub), clock=clock) as b,
    ):
        client, driver = await relay_of(a, b)
        sent = [0]
        sender = threading.Thread(target=flood, args=(client, 64, 16, sent), daemon=True)
        sender.start()
        await wait_until(lambda: stalled(b, driver))
        assert a.relays is not None
        a.relays._drivers.clear()  # as if its end had not reached the relay node
        await clock.step(CREDIT_QUERY_INTERVAL)
        assert await in_thread(client.ended)  # dropped: no close frame
        await wait_until(lambda: not b.connections)
        a.app.state["gate"].set()
        await in_thread(sender.join, 20)
