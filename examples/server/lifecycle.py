# examples/server/lifecycle.py
"""A handler class with all four hooks: a tiny lobby.

Serve it with ``wsup serve examples.server.lifecycle:app`` and connect to
ws://127.0.0.1:8765/lobby?name=ada from two clients.
"""

from dataclasses import dataclass
from typing import Any

from supervisor import App, Handler

app = App()


@dataclass(frozen=True)
class Said:
    """What lobby members tell each other: who did what."""

    who: str
    what: str


@app.route("/lobby")
class Lobby(Handler):
    """Everyone in the lobby sees who comes, what they say and when they go."""

    async def on_connect(self) -> None:
        # The handshake is done: the connection is open and can be written to.
        self.name = self.conn.request.query_param("name") or self.context.address
        self.context.join("lobby")  # from now on, publish("lobby", ...) reaches this actor
        await self.app.publish("lobby", Said(self.name, "joined"))

    async def on_message(self, message: str | bytes) -> None:
        # A message from this actor's own client.
        if isinstance(message, bytes):
            await self.conn.close(1003, "text messages only")
            return
        await self.app.publish("lobby", Said(self.name, f"said {message}"))

    async def on_receive(self, message: Any) -> None:
        # A message from another actor (every publish above, this client's included).
        if isinstance(message, Said):
            await self.conn.send(f"{message.who} {message.what}")

    async def on_close(self, code: int, reason: str) -> None:
        # The connection is closing: this client cannot be written to any more.
        self.context.leave("lobby")
        await self.app.publish("lobby", Said(self.name, f"left ({code})"))
