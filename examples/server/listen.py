# examples/server/listen.py
"""Listening on several addresses: IPv4 and IPv6 loopback here."""

from supervisor import App, Handler, ServerConfig

app = App(config=ServerConfig(hosts=("127.0.0.1", "::1"), port=8765))


@app.route("/where")
class Where(Handler):
    """Tells the client which address family it came in on."""

    async def on_connect(self) -> None:
        host, _port = self.conn.remote_address
        await self.conn.send("IPv6" if ":" in host else "IPv4")
