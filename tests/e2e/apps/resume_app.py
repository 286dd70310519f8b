"""A test app for resumable connections.

Protocol on ``ws://HOST/room/{room}?user=NAME[&resume=TOKEN]`` (``user`` is
required: HTTP 400 without it; the hook accepts with ``values={"user": NAME}``):

* The first message is the server's ``wsup.resume`` announcement.
* The actor joins ``room:ROOM``; what is published there reaches the client as
  it is (the default ``on_receive``: the fan-out path that skips the mailbox).
* Each client message is answered ``{"echo": M, "seen": N, "conn": ADDRESS}``,
  ``N`` counting the messages this actor received (its state); a binary
  message is echoed as ``{"hex": HEX}``.
* ``Returning`` members also send ``{"welcome_back": N}`` from ``on_resume``.
* ``on_close`` appends ``(address, code, reason)`` to ``app.state["closed"]``.

``make_app(**options)`` passes ``options`` to the route (``outbound_limit``,
``slow_consumer``, ``resume``...); the grace window is 30 s unless given.
"""

from __future__ import annotations

import json
from typing import Any

from supervisor import Accept, App, Handler, Reject, Request, Resume

__all__ = ["GRACE", "Returning", "make_app"]

GRACE = 30.0


def identify(request: Request) -> Accept | Reject:
    """Accept a ``user``, whose name is the identity a resume must match."""
    user = request.query_param("user")
    if not user:
        return Reject(400, "missing ?user=NAME\n")
    return Accept(values={"user": user})


class Member(Handler):
    """A member of one room that echoes with a count of what it received."""

    async def on_connect(self) -> None:
        self.seen = 0
        self.context.join(f"room:{self.params['room']}")

    async def on_message(self, message: str | bytes) -> None:
        self.seen += 1
        echo = message if isinstance(message, str) else {"hex": message.hex()}
        answer = {"echo": echo, "seen": self.seen, "conn": self.conn.address}
        await self.conn.send(json.dumps(answer))

    async def on_close(self, code: int, reason: str) -> None:
        self.app.state["closed"].append((self.conn.address, code, reason))


class Returning(Member):
    """A member that tells its client, once it resumed, how much it had seen."""

    async def on_resume(self) -> None:
        await self.conn.send(json.dumps({"welcome_back": self.seen}))


def make_app(handler: type[Member] = Member, **options: Any) -> App:
    """The app, with ``handler`` for its members and ``options`` for its route."""
    app = App(state={"closed": []})
    options.setdefault("resume", Resume(grace=GRACE))
    app.add_route("/room/{room}", handler, hook=identify, **options)
    return app
