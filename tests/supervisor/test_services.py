"""Services and subtrees an app declares: restart types, intensity, critical failures."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from websockets.sync.client import connect

from actors import Actor, Backoff, CriticalFailure, Delivery, FakeClock, Intensity
from supervisor import App, Handler, Restart, Server, ServerConfig, Strategy, SupervisorSpec
from supervisor.metrics import Metrics
from supervisor.tree._tree import ChildSpec
from tests.helpers.clients import http_get
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread, wait_until

pytestmark = pytest.mark.anyio

NOW = Backoff(minimum=0.0, maximum=0.0)


class Fragile(Actor):
    """Crashes on ``"boom"``; answers anything else with its restart count."""

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        return self.context.restarts


class Echo(Handler):
    """Echoes each message."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def ready_status(server: Server) -> int:
    """GET /readyz on ``server``; return the status."""
    return http_get(server.ports[0][1], "/readyz")[0]


async def crash(server: Server, name: str, times: int) -> None:
    """Crash the service called ``name`` ``times`` times, waiting for each restart."""
    for n in range(times):
        await server.app.send(name, "boom")
        if n < times - 1:
            await wait_until(lambda n=n: _restarts(server, name) > n)  # type: ignore[misc]


def _restarts(server: Server, name: str) -> int:
    members = server.runtime.members(name)
    return members[0]._cell.restarts if members else -1


async def test_a_service_past_its_intensity_stops_visibly_and_the_server_stays_ready() -> None:
    """A non-critical service that gives up is counted in wsup_supervisor_escalations_total;
    the server keeps serving and stays ready."""
    app = App()
    app.add_route("/echo", Echo)
    app.service(Fragile, names=("fragile",), intensity=Intensity(1, 60.0), backoff=NOW)
    async with running_server(app) as server:
        await crash(server, "fragile", 2)
        await wait_until(lambda: not server.runtime.members("fragile"))
        assert sample(server, "wsup_supervisor_escalations_total") == 1
        assert await in_thread(ready_status, server) == 200

        def echo() -> str | bytes:
            with connect(ws_url(server, "/echo"), proxy=None) as ws:
                ws.send("still here")
                return ws.recv(timeout=5)

        assert await in_thread(echo) == "still here"


async def test_a_critical_service_past_its_intensity_drains_and_fails_the_server() -> None:
    """A critical service that gives up turns /readyz 503, drains open connections with 1001,
    and makes serve() raise CriticalFailure once it has stopped."""
    app = App()
    app.add_route("/echo", Echo)
    app.service(Fragile, names=("feed",), intensity=Intensity(1, 60.0), backoff=NOW, critical=True)
    # The drain waits out a readiness grace on a fake clock: /readyz can be read in it.
    clock = FakeClock()
    config = ServerConfig(hosts=("127.0.0.1",), port=0, readiness_grace=5.0)
    server = Server(app, config, metrics=Metrics(), clock=clock)
    failures: list[BaseException] = []

    async def run(*, task_status: anyio.abc.TaskStatus[Server]) -> None:
        try:
            await server.serve(task_status=task_status)
        except CriticalFailure as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        ws = await in_thread(lambda: connect(ws_url(server, "/echo"), proxy=None).__enter__())
        await crash(server, "feed", 2)
        await wait_until(lambda: server.failure is not None)
        assert server.readiness() == (False, "critical 'Fragile' failed")
        status, body = await in_thread(http_get, server.ports[0][1], "/readyz")
        assert (status, body) == (503, "critical 'Fragile' failed\n")
        clock.advance(5.0)

        def close_code() -> int | None:
            from websockets.exceptions import ConnectionClosed

            try:
                ws.recv(timeout=10)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
            return None

        assert await in_thread(close_code) == 1001
        ws.close()
    assert len(failures) == 1
    assert isinstance(failures[0], CriticalFailure)
    assert failures[0].child == "Fragile"
    assert sample(server, "wsup_supervisor_escalations_total") == 1


async def test_subtrees_declared_in_the_app_run_under_the_root() -> None:
    """app.supervise() starts a subtree with its own strategy: one_for_all restarts both."""
    starts: list[str] = []

    class Member(Fragile):
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_start(self) -> None:
            starts.append(self.name)

    app = App()
    tree = SupervisorSpec(
        [
            ChildSpec(lambda: Member("a"), id="a", names=("a",), backoff=NOW),
            ChildSpec(lambda: Member("b"), id="b", names=("b",), backoff=NOW),
        ],
        strategy=Strategy.ONE_FOR_ALL,
        intensity=Intensity(5, 10.0),
        id="pair",
        restart=Restart.PERMANENT,
    )
    assert app.supervise(tree) is tree
    async with running_server(app) as server:
        assert starts == ["a", "b"]
        await server.app.send("a", "boom")
        await wait_until(lambda: len(starts) == 4)
        assert starts == ["a", "b", "a", "b"]  # both again, in start order
        assert await server.app.ask("b", "restarts?") == 0


async def test_app_sends_and_their_thread_safe_twins_say_what_they_reached() -> None:
    """app.send/publish/broadcast and the *_threadsafe twins return a Delivery: how many
    local actors took the message (two connections of one user count twice)."""
    app = App()
    app.add_route("/echo", Echo)

    async with running_server(app) as server:

        def two_connections() -> list[Any]:
            return [connect(ws_url(server, "/echo"), proxy=None).__enter__() for _ in range(2)]

        sockets = await in_thread(two_connections)
        try:
            await wait_until(lambda: len(server.connections) == 2)
            for conn in server.connections:
                conn_ref = server.runtime.lookup(conn.address)
                assert conn_ref is not None
                server.runtime.add_member("user:ann", conn_ref._cell)
            assert await app.send("user:ann", "hi") == Delivery(2, False)
            assert await app.send("user:nobody", "hi") == Delivery(0, False)
            assert await app.publish("room:empty", "hi") == Delivery(0, False)
            assert await app.broadcast("all") == Delivery(2, False)
            assert await in_thread(app.send_threadsafe, "user:ann", "t") == Delivery(2, False)
            assert await in_thread(app.publish_threadsafe, "room:x", "t") == Delivery(0, False)
            assert await in_thread(app.broadcast_threadsafe, "t") == Delivery(2, False)
            assert sample(server, "wsup_dead_letters_total", reason="no_recipient") == 1
            assert sample(server, "wsup_empty_group_publishes_total") == 2
        finally:
            for ws in sockets:
                await in_thread(ws.close)
