# examples/faq/closing.py
"""Closing a connection: from its handler with a code and a reason, or from anywhere."""

from dataclasses import dataclass
from typing import Any

from supervisor import App, Handler

app = App()


@dataclass(frozen=True)
class Kick:
    """A message asking a connection to close itself."""

    reason: str


@app.route("/session")
class Session(Handler):
    """Echoes; ``logout`` closes normally, ``quit`` stops the actor; a Kick closes with 4001."""

    async def on_connect(self) -> None:
        self.context.register(f"user:{self.conn.request.query_param('user')}")

    async def on_message(self, message: str | bytes) -> None:
        if message == "logout":
            await self.conn.send("bye")  # queued messages go out before the close frame
            await self.conn.close(1000, "logged out")
        elif message == "quit":
            self.context.stop()  # the actor ends after this message: close code 1000
        else:
            await self.conn.send(message)

    async def on_receive(self, message: Any) -> None:
        if isinstance(message, Kick):
            await self.conn.close(4001, message.reason)  # 4000-4999: yours to define
        else:
            await super().on_receive(message)


async def kick(user: str, reason: str) -> None:
    """Close every connection of ``user``, from anywhere in the server process."""
    await app.send(f"user:{user}", Kick(reason))
