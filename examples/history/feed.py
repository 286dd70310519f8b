# examples/history/feed.py
"""A feed a client can leave and come back to without missing a post.

Serve it with ``wsup serve examples.history.feed:app`` and connect to
``ws://127.0.0.1:8765/feed/news``; to come back, add ``?since=EPOCH:OFFSET``,
the position of the last post received.
"""

import json
from typing import Any

from actors import Position, Record
from supervisor import App, Handler, Reject, Request

app = App()
# Every message sent to a feed:* address is numbered and kept: the last 500, for 10 minutes.
app.history("feed:*", size=500, ttl=600)


def check_since(request: Request) -> Reject | None:
    """Refuse a ``since`` that is not ``EPOCH:OFFSET`` (HTTP 400, saying why)."""
    since = request.query_param("since")
    if since:
        try:
            Position.parse(since)
        except ValueError as exc:
            return Reject(400, f"{exc}\n")
    return None


@app.route("/feed/{name}", hook=check_since)
class Reader(Handler):
    """Posts what its client sends to the feed, and shows the feed's posts."""

    async def on_connect(self) -> None:
        self.feed = f"feed:{self.params['name']}"
        since = self.conn.request.query_param("since")
        if not since:
            self.context.join(self.feed)
            return
        # Joins the feed first, then reads what came after `since`.
        recovery = await self.context.recover(self.feed, Position.parse(since))
        if not recovery:
            # Too old, trimmed, or a new epoch: the client should reload what it shows.
            await self.conn.send(json.dumps({"type": "gap", "reason": recovery.result}))
        for record in recovery.records:  # the missed posts, then any that came meanwhile
            await self.on_receive(record)

    async def on_message(self, message: str | bytes) -> None:
        await self.context.publish(self.feed, message)

    async def on_receive(self, message: Any) -> None:
        if isinstance(message, Record):  # what a feed:* address carries
            post = {"type": "post", "position": str(message.position), "text": message.message}
            await self.conn.send(json.dumps(post))
