# examples/server/function.py
"""A websockets-style handler: one coroutine per connection, with its own receive loop."""

from supervisor import App, Connection

app = App()


@app.route("/count")
async def count(conn: Connection) -> None:
    """Number every message; the connection closes (1000) when this returns."""
    received = 0
    async for message in conn:  # ends when the client closes the connection
        received += 1
        await conn.send(f"#{received}: {message!r}")
        if message == "bye":
            return
