"""wsup's supervision tree, WebSocket server, metrics and command line.

Every public name is loaded on first use (PEP 562): ``from supervisor import
ActorSystem`` imports the supervision tree and ``actors`` only, not the server,
``websockets`` or ``prometheus_client``; ``from supervisor import Server``
loads the server. ``__all__`` lists the whole public surface.

Note: supervisord's package is also named ``supervisor``; the two cannot be
installed in one environment.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    from ._app import (
        Accept,
        App,
        Handler,
        HandshakeHook,
        HTTPResponse,
        Reject,
        Request,
        RouteOptions,
    )
    from ._config import ServerConfig
    from ._connection import Connection, ConnectionState, ConnectionStatistics
    from ._exceptions import (
        ConnectionClosed,
        ConnectionClosedError,
        ConnectionClosedOK,
        ConnectionError_,
        ListenError,
        OutboundFull,
        RedisUnavailable,
        StartupError,
    )
    from ._keepalive import KeepaliveConfig
    from ._limits import InboundPolicy, Rate
    from ._logging import configure_logging
    from ._outbound import SlowConsumerPolicy
    from ._server import Server, serve
    from ._system import ActorSystem
    from ._tree import ChildSpec, Restart, SingletonSpec, Strategy, Supervisor, SupervisorSpec
    from .redis import ClusterNode, RedisBackplane, RedisBackplaneStatistics

# Where each public name is defined: the module is imported when the name is first used.
_SOURCES: dict[str, str] = {
    "Accept": "._app",
    "App": "._app",
    "HTTPResponse": "._app",
    "HandshakeHook": "._app",
    "Handler": "._app",
    "Reject": "._app",
    "Request": "._app",
    "RouteOptions": "._app",
    "ServerConfig": "._config",
    "Connection": "._connection",
    "ConnectionState": "._connection",
    "ConnectionStatistics": "._connection",
    "ConnectionClosed": "._exceptions",
    "ConnectionClosedError": "._exceptions",
    "ConnectionClosedOK": "._exceptions",
    "ConnectionError_": "._exceptions",
    "ListenError": "._exceptions",
    "OutboundFull": "._exceptions",
    "RedisUnavailable": "._exceptions",
    "StartupError": "._exceptions",
    "KeepaliveConfig": "._keepalive",
    "InboundPolicy": "._limits",
    "Rate": "._limits",
    "configure_logging": "._logging",
    "SlowConsumerPolicy": "._outbound",
    "Server": "._server",
    "serve": "._server",
    "ActorSystem": "._system",
    "ChildSpec": "._tree",
    "Restart": "._tree",
    "SingletonSpec": "._tree",
    "Strategy": "._tree",
    "Supervisor": "._tree",
    "SupervisorSpec": "._tree",
    "ClusterNode": ".redis",
    "RedisBackplane": ".redis",
    "RedisBackplaneStatistics": ".redis",
}

__all__ = [
    "Accept",
    "ActorSystem",
    "App",
    "ChildSpec",
    "ClusterNode",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionError_",
    "ConnectionState",
    "ConnectionStatistics",
    "HTTPResponse",
    "HandshakeHook",
    "Handler",
    "InboundPolicy",
    "KeepaliveConfig",
    "ListenError",
    "OutboundFull",
    "RedisBackplane",
    "RedisBackplaneStatistics",
    "Rate",
    "RedisUnavailable",
    "Reject",
    "Request",
    "Restart",
    "RouteOptions",
    "ServerConfig",
    "SingletonSpec",
    "Server",
    "SlowConsumerPolicy",
    "StartupError",
    "Strategy",
    "Supervisor",
    "SupervisorSpec",
    "configure_logging",
    "serve",
]


if not typing.TYPE_CHECKING:  # type checkers see the imports above, and flag unknown names

    def __getattr__(name: str) -> object:
        """Import the module that defines ``name`` on first use, and keep the name here."""
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
