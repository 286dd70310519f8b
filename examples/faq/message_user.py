# examples/faq/message_user.py
"""One user on every device: connections register as ``user:NAME``; send to that name."""

from supervisor import Accept, App, Handler, Reject, Request

# Stands for your session store.
SESSIONS = {"t-ada": "ada", "t-bob": "bob"}

app = App()


@app.handshake
def identify(request: Request) -> Accept | Reject:
    """Find the user before the upgrade; a connection without one is refused."""
    user = SESSIONS.get(request.query_param("token") or "")
    if user is None:
        return Reject(401, "unknown or missing ?token\n")
    return Accept(values={"user": user})


@app.route("/notifications")
class Notifications(Handler):
    """Receives what is sent to its user; the name goes away when the connection does."""

    async def on_connect(self) -> None:
        self.context.register(f"user:{self.values['user']}")


async def message_user(user_id: str, message: str) -> None:
    """Reach each of the user's connections.

    Nobody connected is not an error: the message becomes a dead letter
    (counted in ``wsup_dead_letters_total{reason="no_recipient"}``).
    """
    await app.send(f"user:{user_id}", message)
