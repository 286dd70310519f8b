# examples/hardening/limited_chat.py
"""A public endpoint with every limit set: sizes, counts, rates, buffers."""

from supervisor import (
    App,
    Handler,
    InboundPolicy,
    KeepaliveConfig,
    Rate,
    ServerConfig,
    SlowConsumerPolicy,
)

app = App(
    config=ServerConfig(
        max_size=16 * 1024,  # one message: 16 KiB at most (1009 past it)
        max_fragments=64,  # in at most 64 frames (1009 past it)
        max_connections=20_000,  # 503 past it; /readyz says "at capacity"
        max_header_bytes=16 * 1024,  # request heads: 16 KiB at most (431 past it)
        max_headers=50,  # and 50 header fields (431 past it)
        handshake_timeout=5.0,  # 408 for a client that does not finish its request
        readiness_fd_fraction=0.8,  # /readyz 503 at 80 % of the descriptor limit
        metrics_port=9100,  # /healthz, /readyz, /metrics on an internal port,
        ops_port_only=True,  # not on the public one (404 there),
        ops_allow=("10.0.0.0/8", "127.0.0.1/32"),  # and only to these networks (403)
        server_header="name",  # Server: wsup, without the version (the default)
        keepalive=KeepaliveConfig(message_timeout=30.0),  # 1008 for a message unfinished after 30 s
    )
)


@app.route(
    "/room",
    inbound_rate=Rate(20, burst=40),  # 20 messages a second, bursts of 40
    inbound_byte_rate=Rate(64 * 1024),  # and 64 KiB a second
    inbound_policy=InboundPolicy.DELAY,  # over it: stop reading that client
    outbound_limit=256 * 1024,  # what the server may queue for a client
    slow_consumer=SlowConsumerPolicy.DISCONNECT,  # past it: close with 1013
)
class Room(Handler):
    """Echoes what it is sent: the limits are the point here, not the behaviour."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
