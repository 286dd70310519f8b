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
    from .observe._logging import configure_logging
    from .redis import ClusterNode, RedisBackplane, RedisBackplaneStatistics
    from .server._app import (
        Accept,
        App,
        Handler,
        HandshakeHook,
        HTTPResponse,
        Reject,
        Request,
        RouteOptions,
    )
    from .server._config import ServerConfig
    from .server._connection import Connection, ConnectionState, ConnectionStatistics
    from .server._keepalive import KeepaliveConfig
    from .server._limits import InboundPolicy, Rate
    from .server._outbound import SlowConsumerPolicy
    from .server._resume import Resume
    from .server._server import Server, serve
    from .tree._system import ActorSystem
    from .tree._tree import ChildSpec, Restart, SingletonSpec, Strategy, Supervisor, SupervisorSpec

# Where each public name is defined: the module is imported when the name is first used.
_SOURCES: dict[str, str] = {
    "Accept": ".server._app",
    "App": ".server._app",
    "HTTPResponse": ".server._app",
    "HandshakeHook": ".server._app",
    "Handler": ".server._app",
    "Reject": ".server._app",
    "Request": ".server._app",
    "RouteOptions": ".server._app",
    "ServerConfig": ".server._config",
    "Connection": ".server._connection",
    "ConnectionState": ".server._connection",
    "ConnectionStatistics": ".server._connection",
    "ConnectionClosed": "._exceptions",
    "ConnectionClosedError": "._exceptions",
    "ConnectionClosedOK": "._exceptions",
    "ConnectionError_": "._exceptions",
    "ListenError": "._exceptions",
    "OutboundFull": "._exceptions",
    "RedisUnavailable": "._exceptions",
    "StartupError": "._exceptions",
    "KeepaliveConfig": ".server._keepalive",
    "InboundPolicy": ".server._limits",
    "Rate": ".server._limits",
    "configure_logging": ".observe._logging",
    "SlowConsumerPolicy": ".server._outbound",
    "Resume": ".server._resume",
    "Server": ".server._server",
    "serve": ".server._server",
    "ActorSystem": ".tree._system",
    "ChildSpec": ".tree._tree",
    "Restart": ".tree._tree",
    "SingletonSpec": ".tree._tree",
    "Strategy": ".tree._tree",
    "Supervisor": ".tree._tree",
    "SupervisorSpec": ".tree._tree",
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
    "Resume",
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
