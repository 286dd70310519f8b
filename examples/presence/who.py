# examples/presence/who.py
"""Who is in the room: the members at once, then each join and leave, live.

Run: wsup serve examples.presence.who:app   (add --redis URL on several nodes)
Then: python -m websockets ws://127.0.0.1:8765/room/lobby?user=ada
"""

import json
from typing import Any

from supervisor import App, Handler, Reject, Request

app = App()
app.presence_events("room:*")  # only rooms pay for events


def named(request: Request) -> Reject | None:
    """Refuse the handshake without ``?user=NAME``."""
    return None if request.query_param("user") else Reject(400, "missing ?user=NAME\n")


@app.route("/room/{room}", hook=named)
class Member(Handler):
    async def on_connect(self) -> None:
        room = f"room:{self.params['room']}"
        # Join first, then read: a change after the read arrives as an event.
        self.context.join(room, meta={"user": self.conn.request.query_param("user")})
        present = await self.context.runtime.presence(room)
        users = sorted(meta["user"] for meta in present.values())
        await self.conn.send(json.dumps({"type": "members", "users": users}))

    async def on_receive(self, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == "presence":
            if message["member"] == self.context.address:
                return  # our own join: already in the list
            user = (message["meta"] or {}).get("user")
            await self.conn.send(json.dumps({"type": message["event"], "user": user}))
        else:
            await super().on_receive(message)
