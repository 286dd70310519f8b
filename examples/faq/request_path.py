# examples/faq/request_path.py
"""Routing by path: one handler per route, parameters decoded, unknown paths refused."""

from supervisor import App, Handler

app = App()


@app.route("/blue")
class Blue(Handler):
    """Only connections to /blue."""

    async def on_connect(self) -> None:
        await self.conn.send("blue")


@app.route("/green")
class Green(Handler):
    """Only connections to /green."""

    async def on_connect(self) -> None:
        await self.conn.send("green")


@app.route("/rooms/{room}")
class Room(Handler):
    """Any room: the parameter arrives URL-decoded; the raw path is there too."""

    async def on_connect(self) -> None:
        await self.conn.send(f"room {self.params['room']} at {self.conn.request.path}")
