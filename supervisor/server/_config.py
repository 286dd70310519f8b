"""Server settings, with their defaults and their checks."""

from __future__ import annotations

import math
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._keepalive import KeepaliveConfig
from ._limits import Rate
from ._proxy import Networks

__all__ = ["SERVER_HEADERS", "ServerConfig", "ServerHeader"]

ServerHeader = Literal["version", "name", "none"]
"""What the ``Server`` header of every answer says: ``wsup/1.2.3``, ``wsup``, or
no header at all."""
SERVER_HEADERS: tuple[ServerHeader, ...] = ("version", "name", "none")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the server needs besides the app's routes.

    Attributes:
        hosts: addresses to listen on; ``localhost`` or ``""``/``"::"`` listen on
            every family the machine has (dual-stack).
        port: the TCP port (0 picks a free one; read it from ``server.ports``).
        ssl: serve TLS with this context.
        reuse_port: set ``SO_REUSEPORT`` (several processes on one port).
        backlog: the listen backlog.
        max_connections: more concurrent connections get HTTP 503.
        max_handshakes: sockets on the server port whose handshake is in progress
            (accepted, request not yet answered), counted apart from
            ``max_connections``; one more gets HTTP 503 at once, its request
            unread (``None``: no bound).
        max_connections_per_address: WebSocket connections one client address
            may hold open; one more gets HTTP 503 (``None``: no cap). The
            address is the one ``trusted_proxies`` forward, else the peer's.
        accept_rate: sockets accepted per second on the server port (all its
            addresses, per process); one more gets HTTP 503 at once, its
            request unread (``None``: no rate).
        handshake_rate: WebSocket upgrade requests per second, per process; one
            more gets HTTP 503 (``None``: no rate).
        handshake_rate_per_address: WebSocket upgrade requests per second from
            one client address; one more gets HTTP 503 (``None``: no rate).
        max_size: the largest message accepted, in bytes; bigger closes with 1009.
        max_fragments: the most frames one message may arrive in (empty
            continuation frames count); more closes with 1009.
        compression: negotiate permessage-deflate when the client offers it.
        handshake_timeout: seconds to complete the opening handshake (TLS included).
        close_timeout: seconds to wait for the peer's close frame.
        keepalive: ping interval and timeout, idle timeout.
        origins: allowed ``Origin`` values (``None``: any; include ``None`` in
            the list to allow clients that send no Origin).
        trusted_proxies: networks whose ``X-Forwarded-For``/``Forwarded`` are believed.
        drain_timeout: seconds a graceful shutdown waits before cancelling.
        readiness_grace: seconds between ``/readyz`` turning 503 and the
            listeners closing, for load balancers to notice.
        drain_window: seconds over which a graceful shutdown spreads the
            closing of connections, in shuffled batches, so that clients do not
            all reconnect at once (clamped to ``drain_timeout``; 0: all at once).
        drain_batch_size: connections closed per batch of a paced drain; a
            server with at most this many connections closes them all at once.
        loop_lag_threshold: seconds of event-loop stall worth a WARNING.
        readiness_loop_lag: ``/readyz`` answers 503 while the event loop's lag
            over the last second passed this many seconds (``None``: never).
        metrics_port: also serve ``/metrics``, ``/healthz`` and ``/readyz`` on this
            port (``None``: only on the main one).
        ops_port_only: serve ``/metrics``, ``/healthz`` and ``/readyz`` only on
            ``metrics_port`` (or ``api_port``): the main port answers them 404 like
            any unknown path. Needs one of those ports.
        ops_allow: the client networks (``"10.0.0.0/8"``, ``"127.0.0.1/32"``) that
            may read ``/metrics``, ``/healthz`` and ``/readyz``, on every port;
            others get 403 (``None``: any address). Matched against the client
            address: the TCP peer, or what a trusted proxy forwarded.
        server_header: the ``Server`` header of every answer, the 101 included:
            ``"version"`` (``wsup/1.2.3``), ``"name"`` (``wsup``) or ``"none"``.
        readiness_fd_fraction: ``/readyz`` answers 503 while the process holds at
            least this fraction of its descriptor limit (soft ``RLIMIT_NOFILE``), so
            a load balancer sends new clients elsewhere before ``accept()`` fails
            (``None``: never; needs Linux 6.2 or later to count cheaply).
        api_key: turns the server API on (``/api/send``, ``/api/broadcast``,
            ``/api/presence``): requests must carry ``Authorization: Bearer <key>``
            (``None``: the API is off and ``/api/`` answers 404). Never logged.
        api_port: serve the API on this port instead of under ``/api/`` on the main
            one (for an internal network); it also answers the operational endpoints.
        api_max_body: the largest API request body, in bytes; a bigger one gets 413.
        max_header_bytes: the largest request head (request line and header
            lines), in bytes; a bigger one gets 431 (a request line over it or over
            8 KiB gets 414, a header line over 8 KiB gets 431).
        max_headers: the most header fields a request may have; more get 431.
        max_http_requests: the most plain HTTP requests (server API, HTTP routes,
            operational endpoints) one connection may send with keep-alive; the
            answer to the last says ``Connection: close``. 1: one per connection.
        gc_tuning: tune Python's garbage collector for serving, process-wide:
            when the server starts accepting, one full collection, then
            ``gc.freeze()`` of everything alive and higher collection
            thresholds (10,000, 4, 25), undone when serving ends. ``None``
            (the default): on under ``wsup serve``, which owns its process, off
            when the server is embedded (``serve()``, ``Server``, the ASGI
            adapter), where the process is the host program's. See
            docs/performance.md, "The garbage collector".
    """

    hosts: Sequence[str] = ("127.0.0.1",)
    port: int = 8765
    ssl: ssl.SSLContext | None = None
    reuse_port: bool = False
    backlog: int = 1024
    max_connections: int = 100_000
    max_handshakes: int | None = 2048
    max_connections_per_address: int | None = None
    accept_rate: Rate | None = None
    handshake_rate: Rate | None = None
    handshake_rate_per_address: Rate | None = None
    max_size: int = 1 << 20
    max_fragments: int = 1024
    compression: bool = False
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    origins: Sequence[str | None] | None = None
    trusted_proxies: Sequence[str] = ()
    drain_timeout: float = 30.0
    readiness_grace: float = 0.0
    drain_window: float = 10.0
    drain_batch_size: int = 1000
    loop_lag_threshold: float = 0.25
    readiness_loop_lag: float | None = None
    metrics_port: int | None = None
    ops_port_only: bool = False
    ops_allow: Sequence[str] | None = None
    server_header: ServerHeader = "name"
    readiness_fd_fraction: float | None = 0.9
    api_key: str | None = field(default=None, repr=False)
    api_port: int | None = None
    api_max_body: int = 1 << 20
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_http_requests: int = 1000
    gc_tuning: bool | None = None

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("need at least one host to listen on")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None:
            if not 0 <= self.metrics_port <= 65535:
                raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
            if self.metrics_port == self.port != 0:
                raise ValueError(f"metrics_port must differ from port ({self.port})")
        if self.ops_port_only and self.metrics_port is None and self.api_port is None:
            raise ValueError(
                "ops_port_only needs metrics_port (or api_port): "
                "/healthz, /readyz and /metrics would be served nowhere"
            )
        # Parsed here, so that a typo stops the server at start-up.
        allow = self.ops_allow
        if allow is not None and not Networks(allow, "ops_allow network").networks:
            raise ValueError("ops_allow must name at least one network (None: any address)")
        if self.server_header not in SERVER_HEADERS:
            raise ValueError(
                f"server_header must be one of {', '.join(SERVER_HEADERS)}, "
                f"got {self.server_header!r}"
            )
        if self.api_key is not None and (
            not self.api_key or not all(33 <= ord(c) <= 126 for c in self.api_key)
        ):
            # It travels in an HTTP header: visible ASCII only, no spaces.
            raise ValueError("the API key must be non-empty visible ASCII, without spaces")
        if self.api_port is not None:
            if not 0 <= self.api_port <= 65535:
                raise ValueError(f"api_port must be in 0..65535, got {self.api_port}")
            if self.api_port in (self.port, self.metrics_port) and self.api_port != 0:
                raise ValueError(
                    f"api_port must differ from port and metrics_port ({self.api_port})"
                )
            if self.api_key is None:
                raise ValueError("api_port needs an API key (WSUP_API_KEY or --api-key-file)")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be >= 1024 bytes")
        if self.max_headers < 1:
            raise ValueError("max_headers must be >= 1")
        if self.max_http_requests < 1:
            raise ValueError("max_http_requests must be >= 1")
        if self.api_max_body < 1:
            raise ValueError("api_max_body must be >= 1 byte")
        for name in ("handshake_timeout", "close_timeout", "drain_timeout"):
            # "not > 0" also refuses NaN, which every comparison would let through.
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")
        if self.max_size < 1:
            raise ValueError("max_size must be >= 1 byte")
        if self.max_fragments < 1:
            raise ValueError("max_fragments must be >= 1")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        for name in ("max_handshakes", "max_connections_per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.readiness_loop_lag is not None and not self.readiness_loop_lag > 0:
            raise ValueError("readiness_loop_lag must be > 0 seconds or None")
        if self.readiness_grace < 0:
            raise ValueError("readiness_grace must be >= 0")
        if not 0 <= self.drain_window < math.inf:
            raise ValueError("drain_window must be >= 0 seconds")
        if self.drain_batch_size < 1:
            raise ValueError("drain_batch_size must be >= 1")
        if self.readiness_fd_fraction is not None and not 0 < self.readiness_fd_fraction <= 1:
            raise ValueError("readiness_fd_fraction must be in (0, 1] or None")
