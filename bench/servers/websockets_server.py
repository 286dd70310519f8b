"""Peer server: the ``websockets`` library's own asyncio server on uvloop.

This is the baseline every ratio in the benchmark table is computed against.
``/fanout`` uses :func:`websockets.asyncio.server.broadcast`, the library's
documented fast path (it writes to every connection without waiting). SIGTERM
triggers the library's graceful shutdown (``Server.close()``), which closes
every open connection with 1001.

Usage: ``python bench/servers/websockets_server.py --port 9001 --compression off``
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
from importlib.metadata import version
from pathlib import Path

import lagprobe
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

FANOUT: set[ServerConnection] = set()


async def echo(ws: ServerConnection) -> None:
    """Send every message back with its type unchanged."""
    async for message in ws:
        await ws.send(message)


async def fanout(ws: ServerConnection) -> None:
    """Subscribe the connection; broadcast whatever it sends to every subscriber."""
    FANOUT.add(ws)
    try:
        async for message in ws:
            broadcast(FANOUT, message)
    finally:
        FANOUT.discard(ws)


async def handler(ws: ServerConnection) -> None:
    """Route by path; unknown paths are closed with 1008 (policy violation)."""
    path = ws.request.path.split("?", 1)[0] if ws.request is not None else ""
    try:
        if path == "/echo":
            await echo(ws)
        elif path == "/fanout":
            await fanout(ws)
        else:
            await ws.close(1008, "unknown path")
    except ConnectionClosed:
        # Load generators drop connections without a close handshake when a run
        # ends; logging a traceback for each would only slow the teardown.
        pass


async def main(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    server = await serve(
        handler,
        args.host,
        args.port,
        compression="deflate" if args.compression == "on" else None,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_interval,
        backlog=1024,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.close)
    print(
        f"websockets {version('websockets')} on uvloop {version('uvloop')}: "
        f"listening on {args.host}:{args.port}, compression={args.compression}, "
        f"ping_interval={args.ping_interval}s, graceful shutdown on SIGTERM",
        file=sys.stderr,
        flush=True,
    )
    probe = lagprobe.start(args.lag_file)
    await server.wait_closed()
    if probe is not None:
        probe.cancel()


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
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(parse_args()))
