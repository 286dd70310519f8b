# examples/faq/message_all.py
"""Everyone: every connection is in the ``all`` group; ``broadcast`` reaches them all."""

from actors import BackplaneUnavailable
from supervisor import App, Handler

app = App()


@app.route("/live")
class Live(Handler):
    """Nothing to record or clean up: wsup knows every connection and forgets closed ones."""

    async def on_message(self, message: str | bytes) -> None:
        try:
            await self.context.broadcast(f"someone said {message!s}")
        except BackplaneUnavailable:
            # With --redis while Redis is down: this process's clients got it, no other did.
            # Uncaught, it would crash the handler, and a few crashes close the connection.
            await self.conn.send("not sent to the other servers: try again later")


async def message_all(message: str) -> None:
    """Reach every connection, from any task of the server process (a service, a timer)."""
    await app.broadcast(message)


def message_all_from_a_thread(message: str) -> None:
    """The same from synchronous code in another thread (a web view, a worker)."""
    app.broadcast_threadsafe(message)
