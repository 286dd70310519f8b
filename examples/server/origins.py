# examples/server/origins.py
"""Only pages from known origins may open a connection (and clients that send none)."""

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        origins=[
            "https://chat.example.com",
            "https://*.chat.example.com",  # any subdomain, not chat.example.com itself
            None,  # clients that send no Origin header: scripts, not browsers
        ]
    )
)


@app.route("/feed")
class Feed(Handler):
    """Says hello; the Origin check happened before this handler ever ran."""

    async def on_connect(self) -> None:
        await self.conn.send("welcome")
