# examples/hardening/admission.py
"""Admission control for a public endpoint: how many clients, how fast, from whom."""

from examples.echo import Echo
from supervisor import App, Rate, ServerConfig

app = App(
    config=ServerConfig(
        max_connections=20_000,  # open: 503 past it, and /readyz says "at capacity"
        max_handshakes=256,  # in progress: past it, new connections wait in the backlog
        accept_rate=Rate(2_000, burst=500),  # sockets accepted a second, then the backlog
        handshake_rate=Rate(1_000, burst=2_000),  # upgrades a second: 503 + Retry-After
        max_connections_per_address=100,  # open from one address (mind NAT: see below)
        handshake_rate_per_address=Rate(5, burst=20),  # a client reconnecting in a loop
        trusted_proxies=("10.0.0.0/8",),  # per-address limits see the forwarded address
        readiness_loop_lag=0.5,  # /readyz 503 while the event loop lags half a second
    )
)
app.add_route("/echo", Echo)
