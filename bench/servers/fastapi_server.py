"""Peer server: FastAPI's own WebSocket endpoints under uvicorn (uvloop, websockets-sansio).

The baseline for wsup's ASGI adapter: the same ASGI server, with the echo
written the way FastAPI's documentation writes it (``receive``, then ``send``
in a loop) and ``/fanout`` as a set of sockets awaited one after the other.
On SIGTERM uvicorn closes every WebSocket with 1012 (service restart), not
1001, and exits.

Usage: ``python bench/servers/fastapi_server.py --port 9005 --compression off``
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

import lagprobe
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

#: Where the event-loop lag probe writes (``--lag-file``); ``None``: no probe.
LAG_FILE: Path | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the event-loop lag probe while the application runs."""
    probe = lagprobe.start(LAG_FILE)
    yield
    if probe is not None:
        probe.cancel()


app = FastAPI(lifespan=lifespan)
subscribers: set[WebSocket] = set()


@app.websocket("/echo")
async def echo(ws: WebSocket) -> None:
    """Send every message back with its type unchanged."""
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


@app.websocket("/fanout")
async def fanout(ws: WebSocket) -> None:
    """Subscribe the connection; broadcast whatever it sends to every subscriber."""
    await ws.accept()
    subscribers.add(ws)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                out = {"type": "websocket.send", "text": message["text"]}
            else:
                out = {"type": "websocket.send", "bytes": message["bytes"]}
            for subscriber in list(subscribers):
                try:
                    await subscriber.send(out)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    subscribers.discard(subscriber)
    finally:
        subscribers.discard(ws)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line shared by every peer server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--compression", choices=("on", "off"), default="off")
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument("--lag-file", type=Path, help="record the event loop's lag here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args = parse_args()
    LAG_FILE = args.lag_file
    print(
        f"fastapi {version('fastapi')} on uvicorn {version('uvicorn')} (uvloop): "
        f"listening on {args.host}:{args.port}, compression={args.compression}, "
        f"ping_interval={args.ping_interval}s, SIGTERM closes with 1012",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio",
        ws_per_message_deflate=args.compression == "on",
        ws_ping_interval=args.ping_interval,
        ws_ping_timeout=args.ping_interval,
        backlog=1024,
        log_level="warning",
    )
