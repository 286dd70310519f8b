# examples/server/lifespan.py
"""Open a resource before the first connection is accepted and close it after the last."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from supervisor import App, Handler


class Database:
    """Stands for a real connection pool."""

    connected = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def greeting(self) -> str:
        return "hello from the database" if self.connected else "closed"


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    app.state = Database()
    await app.state.connect()  # a failure here stops the start: nothing is served
    try:
        yield  # the server serves meanwhile
    finally:
        await app.state.close()  # every connection is closed by now


app = App(lifespan=lifespan)


@app.route("/greet")
class Greet(Handler):
    async def on_connect(self) -> None:
        await self.conn.send(await self.app.state.greeting())
