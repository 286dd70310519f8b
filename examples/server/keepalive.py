# examples/server/keepalive.py
"""Keepalive pings find dead peers; an idle timeout closes connections that say nothing."""

from supervisor import App, Handler, KeepaliveConfig, ServerConfig

app = App(
    config=ServerConfig(
        keepalive=KeepaliveConfig(
            ping_interval=20.0,  # ping after 20 s without any frame from the client
            ping_timeout=20.0,  # no pong 20 s later: the peer is gone, close with 1011
            idle_timeout=300.0,  # 5 minutes without a message: close with 1001
            message_timeout=60.0,  # a message unfinished 60 s after it began: close with 1008
        )
    )
)


@app.route("/echo")
class Echo(Handler):
    """Sends every message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
