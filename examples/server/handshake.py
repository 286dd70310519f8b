# examples/server/handshake.py
"""Handshake hooks: authenticate before the upgrade, pick a subprotocol, or refuse."""

from supervisor import Accept, App, Handler, Reject, Request

# Stands for a real session store or token check.
TOKENS = {"s3cret": "ada", "hunter2": "bob"}
SUBPROTOCOLS = ("chat.v2", "chat.v1")  # in order of preference

app = App()


@app.handshake
def authenticate(request: Request) -> Accept | Reject:
    """Every route: find the user from a bearer token, a cookie or ``?token=``."""
    token = request.cookies.get("session") or request.query_param("token")
    authorization = request.header("Authorization")
    if authorization is not None and authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ")
    user = TOKENS.get(token or "")
    if user is None:
        return Reject(401, "unknown or missing token\n", headers=[("WWW-Authenticate", "Bearer")])
    # headers go into the 101 response; values reach the handler as self.values.
    return Accept(headers=[("X-User", user)], values={"user": user})


async def negotiate(request: Request) -> Accept | Reject:
    """The /chat route only: insist on a subprotocol this server speaks."""
    for subprotocol in SUBPROTOCOLS:
        if subprotocol in request.subprotocols:
            return Accept(subprotocol=subprotocol)
    return Reject(400, f"offer one of these subprotocols: {', '.join(SUBPROTOCOLS)}\n")


@app.route("/chat", hook=negotiate)
class Chat(Handler):
    """Greets the authenticated user."""

    async def on_connect(self) -> None:
        user = self.values["user"]
        address = self.conn.client_address
        await self.conn.send(f"hello {user} from {address}, speaking {self.conn.subprotocol}")
