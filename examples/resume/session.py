# examples/resume/session.py
"""A session that outlives a network blip: same actor, same state, nothing missed meanwhile.

Serve it with ``wsup serve examples.resume.session:app``. Connect to
``ws://127.0.0.1:8765/session?user=ada``: the first message carries a token.
After a drop, come back within 30 s to ``/session?user=ada&resume=TOKEN``, on
this node or (nodes joined by ``--redis``) on another one. Anyone may post to
everyone's session through ``/post``.
"""

import json

from supervisor import Accept, App, Handler, Reject, Request, Resume

app = App()


def identify(request: Request) -> Accept | Reject:
    """Say who the client is: a resume must come from the same user (a real app checks
    a cookie or a signed ticket here)."""
    user = request.query_param("user")
    if not user:
        return Reject(400, "missing ?user=NAME\n")
    return Accept(values={"user": user})


@app.route("/session", hook=identify, resume=Resume(grace=30))
class Session(Handler):
    """Counts what its client sends, and passes on every post."""

    async def on_connect(self) -> None:  # once per session, not once per socket
        self.sent = 0
        self.context.join("posts")

    async def on_message(self, message: str | bytes) -> None:
        self.sent += 1
        await self.conn.send(json.dumps({"type": "count", "sent": self.sent}))

    async def on_resume(self) -> None:  # after what waited, before anything newer
        await self.conn.send(json.dumps({"type": "welcome_back", "sent": self.sent}))


@app.route("/post")
class Poster(Handler):
    """Posts what its client sends to every session."""

    async def on_message(self, message: str | bytes) -> None:
        await self.context.publish("posts", message)
