"""Peer server: aiohttp's ``web.WebSocketResponse`` on uvloop.

aiohttp has no synchronous send, so ``/fanout`` loops over the subscribers and
awaits ``send_bytes``/``send_str`` on each: that await returns without
yielding unless the connection's write buffer is over its limit, which makes it
aiohttp's fast path. SIGTERM runs aiohttp's graceful shutdown; the
``on_shutdown`` hook closes every WebSocket with 1001, as aiohttp's
documentation recommends.

Usage: ``python bench/servers/aiohttp_server.py --port 9002 --compression off``
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import lagprobe
import uvloop
from aiohttp import WSCloseCode, WSMsgType, web

ALL: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("all", set)
FANOUT: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("fanout", set)
SETTINGS: web.AppKey[argparse.Namespace] = web.AppKey("settings", argparse.Namespace)


async def _open(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(
        compress=settings.compression == "on",
        heartbeat=settings.ping_interval,
    )
    await ws.prepare(request)
    request.app[ALL].add(ws)
    return ws


async def echo(request: web.Request) -> web.WebSocketResponse:
    """Send every message back with its type unchanged."""
    ws = await _open(request)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
    finally:
        request.app[ALL].discard(ws)
    return ws


async def fanout(request: web.Request) -> web.WebSocketResponse:
    """Subscribe the connection; broadcast whatever it sends to every subscriber."""
    ws = await _open(request)
    subscribers = request.app[FANOUT]
    subscribers.add(ws)
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            # Iterate over a copy: a send can fail and a handler remove itself meanwhile.
            for peer in tuple(subscribers):
                if peer.closed:
                    continue
                try:
                    if msg.type is WSMsgType.TEXT:
                        await peer.send_str(msg.data)
                    else:
                        await peer.send_bytes(msg.data)
                except ConnectionError:
                    subscribers.discard(peer)
    finally:
        subscribers.discard(ws)
        request.app[ALL].discard(ws)
    return ws


async def close_all(app: web.Application) -> None:
    """Close every open WebSocket with 1001 when the server shuts down."""
    everyone = app[ALL]
    connections = list(everyone)
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY) for ws in connections),
        return_exceptions=True,
    )


async def announce(app: web.Application) -> None:
    """Print the settings once the server is about to listen."""
    settings = app[SETTINGS]
    print(
        f"aiohttp {version('aiohttp')} on uvloop {version('uvloop')}: "
        f"listening on {settings.host}:{settings.port}, compression={settings.compression}, "
        f"ping_interval={settings.ping_interval}s, graceful shutdown on SIGTERM",
        file=sys.stderr,
        flush=True,
    )


async def lag_probe(app: web.Application) -> AsyncIterator[None]:
    """Run the event-loop lag probe for the application's lifetime (``--lag-file``)."""
    probe = lagprobe.start(app[SETTINGS].lag_file)
    yield
    if probe is not None:
        probe.cancel()


def make_app(settings: argparse.Namespace) -> web.Application:
    """Build the application with ``/echo`` and ``/fanout``."""
    app = web.Application()
    app[SETTINGS] = settings
    app[ALL] = set()
    app[FANOUT] = set()
    app.router.add_get("/echo", echo)
    app.router.add_get("/fanout", fanout)
    app.on_startup.append(announce)
    app.on_shutdown.append(close_all)
    app.cleanup_ctx.append(lag_probe)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line shared by every peer server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--compression", choices=("on", "off"), default="off")
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--lag-file", type=Path, help="record the event loop's lag here")
    return parser.parse_args(argv)


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard limit: one descriptor per connection."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise_fd_limit()
    args = parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        make_app(args),
        host=args.host,
        port=args.port,
        backlog=1024,
        access_log=None,
        print=None,
        shutdown_timeout=30,
    )
