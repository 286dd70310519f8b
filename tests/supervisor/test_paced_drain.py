"""Paced drain: connections close in shuffled batches spread over ``drain_window``.

The server runs on a ``FakeClock``: the batches are placed by fake time, so the
tests assert on the fake times at which connections closed, never on how long
anything took. Clients are websockets' sync client in worker threads.
"""

from __future__ import annotations

import anyio
import pytest
import structlog
from websockets.sync.client import ClientConnection

from actors import FakeClock
from supervisor import App, Handler, Server
from supervisor.server._drain import plan, split
from tests.helpers.clients import open_ws, recv_until_closed
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread, wait_until

pytestmark = pytest.mark.anyio

DRAIN_CLOSE = (1001, "server shutting down")


def recording_app(clock: FakeClock, closed: list[tuple[float, int, str]]) -> App:
    """An app whose handlers record the fake time, code and reason of their close."""
    app = App()

    @app.route("/watch")
    class Watch(Handler):
        """Records when and how its connection closed."""

        async def on_close(self, code: int, reason: str) -> None:
            """Record the fake time, code and reason."""
            closed.append((clock.now(), code, reason))

    return app


async def connect_all(server: Server, count: int) -> list[ClientConnection]:
    """Open ``count`` clients and wait until the server holds them all."""
    clients = [await in_thread(open_ws, ws_url(server, "/watch")) for _ in range(count)]
    await wait_until(lambda: len(server.connections) == count)
    return clients


def test_plan_spreads_batches_over_the_window() -> None:
    """Batches of at most batch_size, evenly spaced; one batch when they fit or pacing is off."""
    assert plan(6, window=9.0, batch_size=2, timeout=30.0) == (3, 3.0)
    assert plan(7, window=8.0, batch_size=2, timeout=30.0) == (4, 2.0)
    assert plan(20_000, window=10.0, batch_size=1000, timeout=30.0) == (20, 0.5)
    # Clamped to the drain timeout.
    assert plan(6, window=100.0, batch_size=2, timeout=6.0) == (3, 2.0)
    # One batch: everything fits in it, pacing is off, or nothing is open.
    assert plan(1000, window=10.0, batch_size=1000, timeout=30.0) == (1, 0.0)
    assert plan(5000, window=0.0, batch_size=10, timeout=30.0) == (1, 0.0)
    assert plan(0, window=10.0, batch_size=10, timeout=30.0) == (1, 0.0)


def test_split_makes_groups_whose_sizes_differ_by_at_most_one() -> None:
    """Every item lands in exactly one group, in order; sizes are as even as can be."""
    items = list(range(7))
    groups = split(items, 3)
    assert groups == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([], 1) == [[]]


async def test_connections_close_in_batches_across_the_window() -> None:
    """Six connections, batches of two over 9 s: two close at 0, 3 and 6 s of fake time,
    each with 1001; the batch lines and the summary are logged."""
    clock = FakeClock()
    closed: list[tuple[float, int, str]] = []
    app = recording_app(clock, closed)
    async with running_server(
        app, clock=clock, drain_window=9.0, drain_batch_size=2, drain_timeout=30.0
    ) as server:
        clients = await connect_all(server, 6)
        received: list[tuple[int | None, str]] = []
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                tg.start_soon(read_all, clients, received)
                for expected in (2, 4, 6):
                    if expected > 2:
                        await clock.step(3.0)
                    await eventually(
                        lambda n=expected: len(closed) == n and len(server.connections) == 6 - n  # type: ignore[misc]
                    )
                    # Fake time stands still: nothing of a later batch can close.
                    await anyio.wait_all_tasks_blocked()
                    assert len(closed) == expected
        assert sorted(t for t, _, _ in closed) == [0.0, 0.0, 3.0, 3.0, 6.0, 6.0]
        assert {(code, reason) for _, code, reason in closed} == {DRAIN_CLOSE}
        assert received == [DRAIN_CLOSE] * 6
        assert not server.connections
    batches = [e for e in logs if e["event"] == "server.drain_batch"]
    assert [(e["batch"], e["batches"], e["connections"], e["open"]) for e in batches] == [
        (1, 3, 2, 6),
        (2, 3, 2, 4),
        (3, 3, 2, 2),
    ]
    assert [e["elapsed"] for e in batches] == [0.0, 3.0, 6.0]
    (completed,) = [e for e in logs if e["event"] == "server.drain_completed"]
    assert (completed["connections"], completed["batches"], completed["cancelled"]) == (6, 3, 0)
    assert completed["duration"] == 6.0


async def test_the_window_is_clamped_to_the_drain_timeout() -> None:
    """A 100 s window with a 6 s drain timeout: three batches at 0, 2 and 4 s, all
    closed with 1001, and the drain is over by the deadline."""
    clock = FakeClock()
    closed: list[tuple[float, int, str]] = []
    app = recording_app(clock, closed)
    async with running_server(
        app, clock=clock, drain_window=100.0, drain_batch_size=2, drain_timeout=6.0
    ) as server:
        clients = await connect_all(server, 6)
        received: list[tuple[int | None, str]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown)
            tg.start_soon(read_all, clients, received)
            for expected in (2, 4, 6):
                if expected > 2:
                    await clock.step(2.0)
                await eventually(lambda n=expected: len(closed) == n)  # type: ignore[misc]
        assert clock.now() <= 6.0
        assert sorted(t for t, _, _ in closed) == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]
        assert received == [DRAIN_CLOSE] * 6


async def test_connections_not_closed_by_the_deadline_are_cut() -> None:
    """Handlers that never finish hold the drain until drain_timeout; then their
    connections are aborted and counted: the paced batches do not extend the deadline."""
    clock = FakeClock()
    never = anyio.Event()
    app = App()

    @app.route("/stuck")
    class Stuck(Handler):
        """Blocks on its first message until the drain deadline cuts it."""

        async def on_message(self, message: str | bytes) -> None:
            """Wait for an event nobody sets."""
            await self.conn.send("blocked")
            await never.wait()

    async with running_server(
        app, clock=clock, drain_window=4.0, drain_batch_size=1, drain_timeout=5.0
    ) as server:
        clients = [await in_thread(open_ws, ws_url(server, "/stuck")) for _ in range(2)]
        for ws in clients:
            await in_thread(ws.send, "block")
            assert await in_thread(ws.recv, 20) == "blocked"
        received: list[tuple[int | None, str]] = []
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                tg.start_soon(read_all, clients, received)
                await anyio.wait_all_tasks_blocked()
                await clock.step(2.0)  # the second batch
                await clock.step(3.0)  # the drain deadline
        assert clock.now() == 5.0
        assert not server.connections
        # Cut without a close frame: the clients see 1006.
        assert received == [(None, "")] * 2
    (completed,) = [e for e in logs if e["event"] == "server.drain_completed"]
    assert (completed["connections"], completed["batches"]) == (2, 2)
    assert completed["cancelled"] == 2
    assert completed["duration"] == 5.0


async def test_a_drain_window_of_zero_closes_everything_at_once() -> None:
    """drain_window=0: one batch, however many connections."""
    clock = FakeClock()
    closed: list[tuple[float, int, str]] = []
    app = recording_app(clock, closed)
    async with running_server(app, clock=clock, drain_window=0.0, drain_batch_size=1) as server:
        clients = await connect_all(server, 4)
        received: list[tuple[int | None, str]] = []
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.shutdown)
                tg.start_soon(read_all, clients, received)
        assert [t for t, _, _ in closed] == [0.0] * 4
        assert received == [DRAIN_CLOSE] * 4
    assert [e["batches"] for e in logs if e["event"] == "server.drain_batch"] == [1]


async def read_all(clients: list[ClientConnection], received: list[tuple[int | None, str]]) -> None:
    """Read each client until the server closes it; append the code and reason it got."""

    async def one(ws: ClientConnection) -> None:
        _, code, reason = await in_thread(recv_until_closed, ws)
        received.append((code, reason))
        ws.close()

    async with anyio.create_task_group() as tg:
        for ws in clients:
            tg.start_soon(one, ws)
