# examples/server/routing.py
"""Routing by path with parameters, handler constructor arguments and shared state."""

from dataclasses import dataclass, field

from supervisor import App, Handler


@dataclass
class Visits:
    """Shared by every handler as ``self.app.state``."""

    per_room: dict[str, int] = field(default_factory=dict)


app = App(state=Visits())


class Room(Handler):
    """Greets each visitor of ``/rooms/{room}`` with the room's visit count."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def on_connect(self) -> None:
        room = self.params["room"]  # URL-decoded: /rooms/tea%20room gives "tea room"
        visits: Visits = self.app.state
        visits.per_room[room] = visits.per_room.get(room, 0) + 1
        await self.conn.send(f"{self.greeting} {room}, visitor #{visits.per_room[room]}")


# add_route() is the non-decorator form; kwargs go to the handler's constructor.
app.add_route("/rooms/{room}", Room, kwargs={"greeting": "welcome to"})


@app.route("/files/{path:path}")
class File(Handler):
    """``{name:path}`` captures the rest of the path, slashes included."""

    async def on_connect(self) -> None:
        await self.conn.send(f"you asked for {self.params['path']}")
