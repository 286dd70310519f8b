"""The servers the harness knows how to start, and what each can do.

A server is one :class:`ServerSpec`: a function that turns a :class:`Launch`
(port, app, compression, keepalive) into a command line, plus the facts the
harness needs to decide which scenarios apply (can it switch compression, does
it drain on SIGTERM). Adding a server to the comparison is adding one entry to
:data:`SERVERS`; nothing else in the harness names a server, except that
ratios are computed against :data:`BASELINE`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

#: Directory that holds the peer server scripts.
SERVERS_DIR = Path(__file__).resolve().parent / "servers"

#: Every ratio in the report is relative to this server.
BASELINE = "websockets"

#: The wsup application for each (app, compression) a scenario asks for. wsup's
#: compression is a setting of the app (``ServerConfig(compression=True)``), not
#: of the command line, so it takes an app of its own. ``bench.wsup_app`` holds
#: the apps that ``examples`` does not: ``fanout`` implements ``/fanout`` as
#: described in ``bench/servers/__init__.py``, and ``echo_deflate`` is
#: ``examples.echo`` with permessage-deflate enabled.
WSUP_APPS: dict[tuple[str, bool], str] = {
    ("echo", False): "examples.echo:app",
    ("echo", True): "bench.wsup_app:echo_deflate",
    ("fanout", False): "bench.wsup_app:fanout",
}

AppKind = Literal["echo", "fanout"]


class LoopLag(Enum):
    """How the harness learns how late a server's event loop ran (the storm scenario)."""

    METRICS = "metrics"
    """wsup's ``wsup_event_loop_lag_seconds`` histogram, scraped from ``/metrics``."""
    PROBE = "probe"
    """The peer script's ``--lag-file`` probe (``bench/servers/lagprobe.py``)."""
    NONE = "none"
    """Not measured: the column stays empty."""


class Compression(Enum):
    """How a server's permessage-deflate support can be driven from the harness."""

    SWITCHABLE = "switchable"
    """The server takes ``--compression on|off``."""
    UNSUPPORTED = "unsupported"
    """The server cannot compress; compression scenarios are not applicable."""
    SERVER_DEFAULT = "server default"
    """The server has no switch; it negotiates whatever it does by default."""


@dataclass(frozen=True)
class Launch:
    """Everything a server command line depends on.

    Attributes:
        port: TCP port on 127.0.0.1 to listen on.
        app: which application the scenario needs (``/echo`` or ``/fanout``).
        compression: whether permessage-deflate should be enabled.
        ping_interval: keepalive ping interval in seconds.
        extra_args: appended to the command line as they are (``--server-args``,
            a scenario's server settings).
        lag_file: where a server whose :attr:`ServerSpec.loop_lag` is
            :attr:`LoopLag.PROBE` records its event loop's lag (``None``: no probe).
    """

    port: int
    app: AppKind
    compression: bool
    ping_interval: float
    extra_args: tuple[str, ...] = ()
    lag_file: Path | None = None


@dataclass(frozen=True)
class ServerSpec:
    """A server under test.

    Attributes:
        name: short name used on the command line and in the report.
        description: one line for the report (library, loop, notable settings).
        command: builds the command line (without CPU pinning) for a launch.
        compression: how permessage-deflate can be driven.
        drains: whether SIGTERM closes every connection with a close frame
            before exiting; the drain scenario is not applicable otherwise.
        loop_lag: how its event-loop lag is measured.
    """

    name: str
    description: str
    command: Callable[[Launch], list[str]]
    compression: Compression
    drains: bool
    loop_lag: LoopLag = LoopLag.NONE


def _peer(script: str) -> Callable[[Launch], list[str]]:
    def command(launch: Launch) -> list[str]:
        return [
            sys.executable,
            str(SERVERS_DIR / script),
            "--port",
            str(launch.port),
            "--compression",
            "on" if launch.compression else "off",
            "--ping-interval",
            str(launch.ping_interval),
            *(("--lag-file", str(launch.lag_file)) if launch.lag_file is not None else ()),
            *launch.extra_args,
        ]

    return command


def wsup_serve_command(app: str, port: int) -> list[str]:
    """``wsup serve APP`` on 127.0.0.1:``port`` with this interpreter, warnings only."""
    return [
        sys.executable,
        "-m",
        "supervisor",
        "serve",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def _wsup(launch: Launch) -> list[str]:
    # Keepalive is wsup's default: a ping after 20 s of silence, like the peers'.
    return [
        *wsup_serve_command(WSUP_APPS[launch.app, launch.compression], launch.port),
        *launch.extra_args,
    ]


def _wsup_asgi(launch: Launch) -> list[str]:
    # The ASGI server owns compression and keepalive: uvicorn's switches.
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"bench.wsup_app:asgi_{launch.app}",
        "--host",
        "127.0.0.1",
        "--port",
        str(launch.port),
        "--loop",
        "uvloop",
        "--ws",
        "websockets-sansio",
        "--ws-per-message-deflate",
        "true" if launch.compression else "false",
        "--ws-ping-interval",
        str(launch.ping_interval),
        "--ws-ping-timeout",
        str(launch.ping_interval),
        "--backlog",
        "1024",
        "--log-level",
        "warning",
        *launch.extra_args,
    ]


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        name="websockets",
        description="websockets asyncio server (websockets.asyncio.server.serve) on uvloop",
        command=_peer("websockets_server.py"),
        compression=Compression.SWITCHABLE,
        drains=True,
        loop_lag=LoopLag.PROBE,
    ),
    ServerSpec(
        name="aiohttp",
        description="aiohttp web.WebSocketResponse on uvloop",
        command=_peer("aiohttp_server.py"),
        compression=Compression.SWITCHABLE,
        drains=True,
        loop_lag=LoopLag.PROBE,
    ),
    ServerSpec(
        name="picows",
        description="picows ws_create_server on uvloop (no permessage-deflate, no drain)",
        command=_peer("picows_server.py"),
        compression=Compression.UNSUPPORTED,
        drains=False,
        loop_lag=LoopLag.PROBE,
    ),
    ServerSpec(
        name="wsup",
        description="wsup (python -m supervisor serve) on uvloop, default settings",
        command=_wsup,
        compression=Compression.SWITCHABLE,
        drains=True,
        loop_lag=LoopLag.METRICS,
    ),
    ServerSpec(
        name="wsup-asgi",
        description="wsup's routes through supervisor.asgi.ASGIApp under uvicorn (uvloop)",
        command=_wsup_asgi,
        compression=Compression.SWITCHABLE,
        drains=True,
        loop_lag=LoopLag.METRICS,
    ),
    ServerSpec(
        name="fastapi",
        description="FastAPI's own WebSocket endpoints under uvicorn (uvloop; SIGTERM: 1012)",
        command=_peer("fastapi_server.py"),
        compression=Compression.SWITCHABLE,
        drains=False,
        loop_lag=LoopLag.PROBE,
    ),
)


def select(names: list[str] | None) -> list[ServerSpec]:
    """The servers named (all of them when ``names`` is empty), in registry order.

    Raises:
        ValueError: a name is not in the registry.
    """
    if not names:
        return list(SERVERS)
    known = {spec.name: spec for spec in SERVERS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [spec for spec in SERVERS if spec.name in names]
