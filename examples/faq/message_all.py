# examples/faq/message_all.py
"""Everyone: every connection is in the ``all`` group; ``broadcast`` reaches them all."""

from supervisor import App, Handler

app = App()


@app.route("/live")
class Live(Handler):
    """Nothing to record or clean up: wsup knows every connection and forgets closed ones."""

    async def on_message(self, message: str | bytes) -> None:
        await self.context.broadcast(f"someone said {message!s}")


async def message_all(message: str) -> None:
    """Reach every connection, from any task of the server process (a service, a timer)."""
    await app.broadcast(message)


def message_all_from_a_thread(message: str) -> None:
    """The same from synchronous code in another thread (a web view, a worker)."""
    app.broadcast_threadsafe(message)
