"""Run an ASGI app under hypercorn from Python, draining wsup's connections on SIGTERM.

Usage: ``python -m tests.e2e.apps.hypercorn_drain APP ADAPTER PORT``, where
``APP`` is the ``module:attr`` to serve and ``ADAPTER`` the ``module:attr`` of
its :class:`~supervisor.asgi.ASGIApp`. This is the recipe of ``docs/asgi.md``
("Shutdown and drain"): hypercorn's shutdown trigger calls
``ASGIApp.shutdown()`` first, so each connection closes with 1001 after its
mailbox, before hypercorn closes the sockets.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from supervisor.asgi import ASGIApp


def load(target: str) -> Any:
    """The object ``module:attr`` names."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


async def main(app: Any, adapter: ASGIApp, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGTERM or SIGINT; drain wsup first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def drain_then_stop() -> None:
        await stop.wait()
        await adapter.shutdown()  # wsup's drain: 1001 after the mailboxes

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    await serve(app, config, shutdown_trigger=drain_then_stop)


if __name__ == "__main__":
    asyncio.run(main(load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])))
