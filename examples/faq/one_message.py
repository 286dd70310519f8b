# examples/faq/one_message.py
"""Every message reaches ``on_message``: no receive loop to write, none to exit by mistake."""

from supervisor import App, Connection, Handler

app = App()


@app.route("/shout")
class Shout(Handler):
    """Answers every text message in capitals, for as long as the client stays."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message.upper() if isinstance(message, str) else message)


@app.route("/shout-loop")
async def shout_loop(conn: Connection) -> None:
    """The websockets style works too; returning from it closes the connection (1000)."""
    async for message in conn:  # ends when the client closes the connection
        await conn.send(message.upper() if isinstance(message, str) else message)
