"""A test app for the history tests: rooms whose messages are numbered and recoverable.

Protocol on ``ws://HOST/room/{room}[?since=EPOCH:OFFSET][&listen=0]``:

* On connect the actor joins ``room:ROOM`` — through ``recover`` when ``since``
  is given — waits until the backplane applied its subscriptions, and sends
  ``{"recovery": RESULT, "position": P}`` first of all (``RESULT`` is ``null``
  without ``since``; ``P`` is ``EPOCH:OFFSET`` or ``null``), then the recovered
  records. With ``listen=0`` it joins nothing (a publisher only).
* Each client text message is published to the room as it is; nothing is replied.
* Each record of the room reaches the client as
  ``{"epoch": E, "offset": N, "message": M}``.

Rooms keep :data:`SIZE` messages for 300 s, except ``small:*`` rooms, which
keep 3 (``/small/{room}``).
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from actors import Position, Record
from supervisor import App, Handler

__all__ = ["SIZE", "make_app"]

SIZE = 1000
SYNC_TIMEOUT = 10.0
"""Seconds a new connection waits for its subscriptions to be applied."""


class Member(Handler):
    """A member of one room (or a publisher to it)."""

    prefix = "room"

    async def on_connect(self) -> None:
        """Join or recover, wait for the backplane, say how the recovery went."""
        self.address = f"{self.prefix}:{self.params['room']}"
        request = self.conn.request
        since = request.query_param("since")
        hello: dict[str, Any] = {"recovery": None, "position": None}
        records: tuple[Record, ...] = ()
        if since:
            recovery = await self.context.recover(self.address, Position.parse(since))
            hello = {
                "recovery": recovery.result.value,
                "position": str(recovery.position) if recovery.position else None,
            }
            records = recovery.records
        elif request.query_param("listen") != "0":
            self.context.join(self.address)
        synced = getattr(self.context.runtime.backplane, "synced", None)
        if synced is not None:
            with anyio.move_on_after(SYNC_TIMEOUT):
                await synced()
        await self.conn.send(json.dumps(hello))
        for record in records:
            await self.on_receive(record)

    async def on_message(self, message: str | bytes) -> None:
        """Publish the client's message to the room."""
        await self.context.publish(self.address, message)

    async def on_receive(self, message: Any) -> None:
        """Forward a record with its position."""
        assert isinstance(message, Record), message
        await self.conn.send(
            json.dumps(
                {"epoch": message.epoch, "offset": message.offset, "message": message.message}
            )
        )


class SmallMember(Member):
    """A member of a room that keeps only 3 messages."""

    prefix = "small"


def make_app() -> App:
    """Build the history test app (an App is served by one server at a time)."""
    app = App()
    app.history("small:*", size=3, ttl=300.0)
    app.history("room:*", size=SIZE, ttl=300.0)
    app.add_route("/room/{room}", Member)
    app.add_route("/small/{room}", SmallMember)
    return app
