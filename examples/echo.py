"""Echo: every message comes back with the same type (text stays text, binary stays binary).

Run it with ``wsup serve examples.echo:app`` and connect to ws://127.0.0.1:8765/echo.
"""

from supervisor import App, Handler

app = App()


@app.route("/echo")
class Echo(Handler):
    """Sends each message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
