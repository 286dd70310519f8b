"""Peer server: picows (Cython WebSocket framing over asyncio transports) on uvloop.

picows is callback-based: ``on_ws_frame`` runs for every frame and
``WSTransport.send`` writes without waiting, so ``/fanout`` is a plain loop
over the subscribers' transports. picows implements no permessage-deflate, so
``--compression on`` is refused with exit status 2, and it has no graceful
shutdown: SIGTERM ends the process and the kernel closes the sockets.

Usage: ``python bench/servers/picows_server.py --port 9003 --compression off``
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from importlib.metadata import version
from pathlib import Path

import lagprobe
import uvloop
from picows import (
    WSAutoPingStrategy,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)
FANOUT: set[WSTransport] = set()


def _answer_close(transport: WSTransport, frame: WSFrame) -> None:
    transport.send_close(frame.get_close_code(), frame.get_close_message())
    transport.disconnect()


class Echo(WSListener):
    """Send every frame back unchanged, so fragmented messages keep their type."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Echo data frames; answer a close frame and disconnect."""
        if frame.msg_type in DATA_TYPES:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            _answer_close(transport, frame)


class Fanout(WSListener):
    """Subscribe on connect; broadcast every data frame to every subscriber."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Subscribe the connection."""
        FANOUT.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Unsubscribe the connection."""
        FANOUT.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Broadcast data frames; answer a close frame and disconnect."""
        if frame.msg_type in DATA_TYPES:
            # The frame's buffer is reused after this callback: copy it once, send it N times.
            payload = frame.get_payload_as_bytes()
            for peer in FANOUT:
                peer.send(frame.msg_type, payload, frame.fin)
        elif frame.msg_type == WSMsgType.CLOSE:
            _answer_close(transport, frame)


def route(request: WSUpgradeRequest) -> WSListener | None:
    """Pick the listener by path; ``None`` makes picows answer 404."""
    path = request.path.split(b"?", 1)[0]
    if path == b"/echo":
        return Echo()
    if path == b"/fanout":
        return Fanout()
    return None


async def main(args: argparse.Namespace) -> None:
    """Serve until the process is terminated."""
    server = await ws_create_server(
        route,
        args.host,
        args.port,
        enable_auto_ping=True,
        auto_ping_idle_timeout=args.ping_interval,
        auto_ping_reply_timeout=args.ping_interval,
        auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
        backlog=1024,
    )
    print(
        f"picows {version('picows')} on uvloop {version('uvloop')}: "
        f"listening on {args.host}:{args.port}, compression=off (unsupported), "
        f"ping_interval={args.ping_interval}s, no graceful shutdown",
        file=sys.stderr,
        flush=True,
    )
    probe = lagprobe.start(args.lag_file)
    async with server:
        await server.serve_forever()
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
    arguments = parse_args()
    if arguments.compression == "on":
        print("picows does not implement permessage-deflate", file=sys.stderr)
        sys.exit(2)
    raise_fd_limit()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main(arguments))
