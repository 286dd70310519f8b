"""Chat rooms with direct messages — the SPEC's reference app.

Run it with ``wsup serve examples.chat:app`` (or ``make demo``) and open
http://127.0.0.1:8765/ in two browser windows.

Protocol, on ``ws://HOST/chat/{room}?user=NAME[&since=EPOCH:OFFSET]`` (no
``user`` → HTTP 400; a ``since`` that is not ``EPOCH:OFFSET`` → HTTP 400):

* ``{"type": "say", "text": T}`` reaches every connection in the room, the
  sender included, as ``{"type": "said", "room": R, "from": NAME, "text": T,
  "epoch": E, "offset": N}``: each room keeps a history of its last 1,000
  messages of the last 5 minutes, and ``N`` numbers them within epoch ``E``;
* with ``since=E:N`` (the position of the last ``said`` a client saw), the
  connection first receives, in order, every ``said`` of the room after it,
  then the live ones; if the history no longer has them (too old, or a new
  epoch because the server restarted or Redis lost its data), it first receives
  ``{"type": "recovery_failed", "room": R}``, then the live ones;
* ``{"type": "dm", "to": NAME2, "text": T}`` reaches every connection of
  NAME2, in any room and on any node, as ``{"type": "dm", "from": NAME, "text": T}``;
* anything else gets ``{"type": "error", "error": "..."}`` and the connection stays open;
* with ``&presence=1`` the connection also receives who is in the room, live:
  ``{"type": "presence", "room": R, "members": [NAME, ...]}`` (sorted, each user
  once however many tabs it has open) right after it joins and again whenever
  that list changes, on any node (a node that dies loses its users within about
  1.5 times ``--redis-node-ttl``). Without it, nothing about presence is sent.

Each connection answers to ``user:NAME`` (a user may have several tabs open)
and is a member of ``room:R``; wsup removes both when the connection ends.

In a cluster (``wsup serve --redis URL``), room histories live in Redis, shared
by every node. A ``dm`` sent while Redis is unreachable still reaches the
connections of this node, and the sender gets an ``error`` saying the other
nodes could not be reached; a ``say`` reaches nobody (it could not get its
offset) and the sender gets an ``error``. Nothing is retried.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors import BackplaneUnavailable, Position, Record
from supervisor import App, Handler, HTTPResponse, Reject, Request

MAX_NAME = 32

app = App()
app.history("room:*", size=1000, ttl=300)
app.presence_events("room:*")


def check_user(request: Request) -> Reject | None:
    """Reject the handshake unless ``?user=NAME`` is present and sensible."""
    user = request.query_param("user")
    if not user:
        return Reject(400, "missing ?user=NAME\n")
    if len(user) > MAX_NAME or not user.isprintable():
        return Reject(400, f"user must be 1-{MAX_NAME} printable characters\n")
    since = request.query_param("since")
    if since:
        try:
            Position.parse(since)
        except ValueError as exc:
            return Reject(400, f"since: {exc}\n")
    return None


@app.route("/chat/{room}", hook=check_user)
class ChatConnection(Handler):
    """One chat participant."""

    #: With ``?presence=1``: who is in the room, member address -> user name.
    present: dict[str, str] | None = None

    async def on_connect(self) -> None:
        self.user = self.conn.request.query_param("user") or ""
        self.room = self.params["room"]
        self.context.register(f"user:{self.user}")
        since = self.conn.request.query_param("since")
        meta = {"user": self.user}
        if not since or self.context.restarts:
            # (A restart runs on_connect again: what was recovered is sent already.)
            self.context.join(f"room:{self.room}", meta=meta)
            await self.send_presence()
            return
        # Joins the room, then reads what this client missed.
        recovery = await self.context.recover(f"room:{self.room}", Position.parse(since), meta=meta)
        if not recovery:
            await self.conn.send(json.dumps({"type": "recovery_failed", "room": self.room}))
        for record in recovery.records:
            await self.on_receive(record)
        await self.send_presence()

    async def send_presence(self) -> None:
        """With ``?presence=1``: read who is in the room (on every node) and send it.

        Join and leave events that arrive meanwhile wait in the mailbox until
        this hook returns, then update the list (see :meth:`on_presence`).
        """
        if self.conn.request.query_param("presence") != "1":
            return
        try:
            found = await self.context.runtime.presence(f"room:{self.room}")
        except BackplaneUnavailable:
            found = {self.context.address: {"user": self.user}}
            await self.error("the room's members on other nodes are unknown: cluster unavailable")
        self.present = {
            member: str(meta.get("user")) if isinstance(meta, dict) else "?"
            for member, meta in found.items()
        }
        await self.conn.send(json.dumps(self.presence_list()))

    def presence_list(self) -> dict[str, Any]:
        """The ``presence`` message: each user in the room once, sorted."""
        names = sorted(set((self.present or {}).values()))
        return {"type": "presence", "room": self.room, "members": names}

    async def on_presence(self, event: dict[str, Any]) -> None:
        """Update the list with a join or leave; send it if it changed."""
        if self.present is None:
            return  # this client did not ask for presence
        before = self.presence_list()
        member, meta = str(event.get("member")), event.get("meta")
        if event.get("event") == "join":
            self.present[member] = str(meta.get("user")) if isinstance(meta, dict) else "?"
        else:
            self.present.pop(member, None)
        after = self.presence_list()
        if after != before:
            await self.conn.send(json.dumps(after))

    async def on_receive(self, message: Any) -> None:
        """Forward what other connections sent; a room's ``said`` gets its position."""
        if isinstance(message, Record) and isinstance(message.message, dict):
            said = {**message.message, "epoch": message.epoch, "offset": message.offset}
            await self.conn.send(json.dumps(said))
        elif isinstance(message, dict) and message.get("type") == "presence":
            await self.on_presence(message)
        else:
            await super().on_receive(message)

    async def on_message(self, message: str | bytes) -> None:
        try:
            event: Any = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            await self.error("invalid JSON")
            return
        kind = event.get("type") if isinstance(event, dict) else None
        text = event.get("text") if isinstance(event, dict) else None
        if kind not in ("say", "dm"):
            await self.error(f"unknown type {kind!r}: use 'say' or 'dm'")
        elif not isinstance(text, str):
            await self.error("'text' must be a string")
        elif kind == "say":
            said = {"type": "said", "room": self.room, "from": self.user, "text": text}
            await self.deliver(f"room:{self.room}", said, f"room {self.room}")
        else:
            to = event.get("to")
            if not isinstance(to, str) or not to:
                await self.error("'to' must be a user name")
                return
            runtime = self.context.runtime
            address = f"user:{to}"
            if not runtime.backplane.remote and not runtime.members(address):
                await self.error(f"{to} is not connected")
                return
            await self.deliver(address, {"type": "dm", "from": self.user, "text": text}, to)

    async def deliver(self, address: str, event: dict[str, Any], recipient: str) -> None:
        """Send ``event`` to every member of ``address``, on every node.

        When the cluster backplane is down, the members on this node still get
        a ``dm`` and the others cannot; a room message reaches nobody, since
        its history (in Redis) cannot give it an offset. The sender is told,
        and its connection stays open (an exception here would crash the
        handler, and a few crashes would close the connection with 1011).
        """
        try:
            if address.startswith("room:"):
                await self.context.send(address, event)  # a Record: on_receive adds its position
            else:
                await self.context.send(address, json.dumps(event))
        except BackplaneUnavailable:
            if address.startswith("room:"):
                await self.error(f"not sent to {recipient}: cluster unavailable, try again later")
            else:
                await self.error(
                    f"{recipient} could not be reached on other nodes (cluster unavailable): "
                    "try again later"
                )

    async def error(self, text: str) -> None:
        """Tell this client what was wrong with its message."""
        await self.conn.send(json.dumps({"type": "error", "error": text}))


_PAGE = (Path(__file__).with_name("chat.html")).read_text(encoding="utf-8")


@app.http("/")
def page(request: Request) -> HTTPResponse:
    """The chat page: pick a name and a room, chat, send direct messages."""
    return HTTPResponse(_PAGE, content_type="text/html; charset=utf-8")
