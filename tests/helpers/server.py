"""Run a wsup server in-process on a free loopback port, for tests."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from actors import Backplane, Clock
from supervisor import App, Server
from supervisor.metrics import Metrics


@asynccontextmanager
async def running_server(
    app: App, *, backplane: Backplane | None = None, clock: Clock | None = None, **config: Any
) -> AsyncIterator[Server]:
    """Serve ``app`` on 127.0.0.1 with a free port; drain and stop on exit.

    Keyword arguments override fields of ``app.config`` (``ServerConfig``);
    ``backplane`` is the cross-node transport (default: in-process); ``clock``
    the time source (default: the real one).
    The server gets a private metrics registry. ``server.url(path)`` builds
    the ``ws://`` URL of a path.
    """
    settings = dataclasses.replace(app.config, **{"hosts": ("127.0.0.1",), "port": 0, **config})
    server = Server(app, settings, metrics=Metrics(), backplane=backplane, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            yield server
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await server.shutdown(drain_timeout=5)
            tg.cancel_scope.cancel()


def ws_url(server: Server, path: str) -> str:
    """Return the ``ws://`` URL of ``path`` on ``server``'s first listener."""
    host, port = server.ports[0]
    return f"ws://{host}:{port}{path}"


def http_url(server: Server, path: str) -> str:
    """Return the ``http://`` URL of ``path`` on ``server``'s first listener."""
    host, port = server.ports[0]
    return f"http://{host}:{port}{path}"
