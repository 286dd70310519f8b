# examples/delivery/inbox.py
"""Direct messages that tell the sender what happened, and that a reader can come back for.

Serve it with ``wsup serve examples.delivery.inbox:app`` (add ``--redis URL``
for a cluster). Connect as ``ws://127.0.0.1:8765/inbox/bob`` and send
``ada:hello`` to message ada; to come back after a drop, add
``?since=EPOCH:OFFSET``, the position of the last message received.
"""

import json
from typing import Any

from actors import BackplaneUnavailable, Position, Record
from supervisor import App, Handler, Reject, Request

app = App()
# Every message to an inbox is numbered and kept: the last 100, for an hour.
app.history("inbox:*", size=100, ttl=3600)


def check_since(request: Request) -> Reject | None:
    """Refuse a ``since`` that is not ``EPOCH:OFFSET`` (HTTP 400, saying why)."""
    since = request.query_param("since")
    if since:
        try:
            Position.parse(since)
        except ValueError as exc:
            return Reject(400, f"{exc}\n")
    return None


@app.route("/inbox/{user}", hook=check_since)
class Inbox(Handler):
    """A user's inbox: shows what others send to it, and sends ``TO:TEXT`` to others."""

    async def on_connect(self) -> None:
        self.inbox = f"inbox:{self.params['user']}"
        since = self.conn.request.query_param("since")
        if not since:
            self.context.join(self.inbox)
            return
        recovery = await self.context.recover(self.inbox, Position.parse(since))
        if not recovery:  # trimmed, expired, a new epoch, or Redis down: say so
            await self.conn.send(json.dumps({"type": "gap", "reason": recovery.result}))
        for record in recovery.records:  # what was missed, then what came meanwhile
            await self.on_receive(record)

    async def on_message(self, message: str | bytes) -> None:
        to, colon, text = str(message).partition(":")
        if not (to and colon):
            await self.conn.send(json.dumps({"type": "error", "error": "send TO:TEXT"}))
            return
        dm = {"from": self.params["user"], "text": text}
        try:
            delivery = await self.context.send(f"inbox:{to}", dm)
        except BackplaneUnavailable:
            # Redis is down: nobody got it and it is not kept. Only the sender knows.
            await self.conn.send(json.dumps({"type": "not_sent", "to": to}))
            return
        # Kept either way; "online" says whether a connection had it at once.
        await self.conn.send(json.dumps({"type": "sent", "to": to, "online": bool(delivery)}))

    async def on_receive(self, message: Any) -> None:
        if isinstance(message, Record):  # numbered: the reader can come back for it
            dm = {"type": "dm", "position": str(message.position), **message.message}
            await self.conn.send(json.dumps(dm))
        else:  # not numbered (published from outside the cluster): passed on as it is
            await super().on_receive(message)
