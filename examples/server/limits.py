# examples/server/limits.py
"""Server-wide limits: message size, connection count, handshake time."""

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        max_size=64 * 1024,  # a bigger message closes the connection with 1009
        max_connections=10_000,  # one more handshake gets HTTP 503
        handshake_timeout=5.0,  # a client that has not finished its handshake gets HTTP 408
    )
)


@app.route("/upload")
class Upload(Handler):
    """Acknowledges each message with its size."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(f"got {len(message)} bytes")
