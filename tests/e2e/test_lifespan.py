"""The app's start and stop: ``on_startup``, ``lifespan`` and ``on_shutdown``, in order.

``on_startup`` hooks run after the services started and before the first
connection; the ``lifespan`` context is entered next and exited after the last
connection closed; ``on_shutdown`` hooks run last. A hook or a lifespan that
fails to start stops the server with :class:`StartupError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from websockets.sync.client import connect

from supervisor import App, Handler, Server, ServerConfig, StartupError, serve
from supervisor.metrics import Metrics
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class _Report(Handler):
    """Sends what the app's state says, then records that it served."""

    async def on_connect(self) -> None:
        self.app.state.append("served")
        await self.conn.send(self.app.state[-2])


def _recorder(events: list[str]) -> App:
    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        events.append("lifespan entered")
        try:
            yield
        finally:
            events.append("lifespan exited")

    app = App(state=events, lifespan=lifespan)
    app.add_route("/report", _Report)

    async def started(app: App) -> None:
        events.append("on_startup")

    def stopped(app: App) -> None:
        events.append("on_shutdown")

    app.on_startup.append(started)
    app.on_shutdown.append(stopped)
    return app


def _first_message(url: str) -> str | bytes:
    with connect(url, proxy=None, open_timeout=10) as ws:
        return ws.recv(timeout=10)


async def test_startup_lifespan_and_shutdown_run_in_order_around_serving() -> None:
    """on_startup, then the lifespan's entry, then connections; its exit, then on_shutdown."""
    events: list[str] = []
    server = Server(_recorder(events), _config(), metrics=Metrics())
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        assert await in_thread(_first_message, ws_url(server, "/report")) == "lifespan entered"
        await server.shutdown(drain_timeout=5)
    # The task group waited for serve() to return: every step has run.
    assert events == [
        "on_startup",
        "lifespan entered",
        "served",
        "lifespan exited",
        "on_shutdown",
    ]


def _config() -> ServerConfig:
    return dataclasses.replace(ServerConfig(), hosts=("127.0.0.1",), port=0)


async def test_a_lifespan_that_fails_to_enter_stops_the_start() -> None:
    """Entering the lifespan raises: serve() raises StartupError("lifespan") with the cause."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        raise ConnectionRefusedError("no database")
        yield  # pragma: no cover - never reached

    app = App(lifespan=lifespan)
    with anyio.fail_after(30), pytest.raises(StartupError) as caught:
        await serve(app, _config(), handle_signals=False)
    assert caught.value.step == "lifespan"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert app.server is None


async def test_an_on_startup_hook_that_raises_stops_the_start() -> None:
    """A failing on_startup hook: serve() raises StartupError naming the hook."""

    def open_database(app: App) -> None:
        raise ConnectionRefusedError("no database")

    app = App()
    app.on_startup.append(open_database)
    with anyio.fail_after(30), pytest.raises(StartupError) as caught:
        await serve(app, _config(), handle_signals=False)
    assert "open_database" in caught.value.step
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_the_guide_s_lifespan_example_serves_from_its_resource() -> None:
    """examples/server/lifespan.py: handlers use what the lifespan opened; it is closed after."""
    from examples.server import lifespan

    app = lifespan.app
    async with running_server(app) as server:
        assert await in_thread(_first_message, ws_url(server, "/greet")) == (
            "hello from the database"
        )
    assert app.state.connected is False
