# examples/faq/health_check.py
"""Health checks are built in: /healthz, /readyz and /metrics on the WebSocket port."""

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        # On SIGTERM, /readyz answers 503 this long before the listeners close,
        # so a load balancer stops sending new clients first.
        readiness_grace=5.0,
    )
)


@app.route("/echo")
class Echo(Handler):
    """The application's own WebSocket route."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
