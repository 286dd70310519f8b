"""wsup's supervision tree, WebSocket server, metrics and command line.

Note: supervisord's package is also named ``supervisor``; the two cannot be
installed in one environment.
"""

from ._app import Accept, App, Handler, HandshakeHook, HTTPResponse, Reject, Request, RouteOptions
from ._config import ServerConfig
from ._connection import Connection, ConnectionState, ConnectionStatistics
from ._exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionError_,
    ListenError,
    OutboundFull,
    StartupError,
)
from ._keepalive import KeepaliveConfig
from ._logging import configure_logging
from ._outbound import SlowConsumerPolicy
from ._server import Server, serve
from ._system import ActorSystem
from ._tree import ChildSpec, Restart, SingletonSpec, Strategy, Supervisor, SupervisorSpec
from .redis import ClusterNode, RedisBackplane, RedisBackplaneStatistics, RedisUnavailable

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
    "KeepaliveConfig",
    "ListenError",
    "OutboundFull",
    "RedisBackplane",
    "RedisBackplaneStatistics",
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
