# examples/faq/read_headers.py
"""Request headers: in the handshake hook, to refuse early; on the connection, for its life."""

from supervisor import App, Handler, Reject, Request

app = App()


@app.handshake
def require_token(request: Request) -> Reject | None:
    """Refuse the upgrade with 401 unless the Authorization header is right."""
    if request.header("Authorization") != "Bearer s3cret":  # stands for a real check
        return Reject(401, "bad or missing token\n", headers=[("WWW-Authenticate", "Bearer")])
    return None  # accept


@app.route("/whoami")
class WhoAmI(Handler):
    """Reads headers and cookies of the request that opened the connection."""

    async def on_connect(self) -> None:
        request = self.conn.request
        agent = request.header("User-Agent", "unknown")  # names are case-insensitive
        theme = request.cookies.get("theme", "light")
        await self.conn.send(f"{agent}, theme {theme}")
