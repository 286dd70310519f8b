# examples/server/proxies.py
"""The real client address behind a reverse proxy (nginx, HAProxy, a cloud load balancer)."""

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        # X-Forwarded-For and Forwarded are believed only when the TCP peer is in here.
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
    )
)


@app.route("/whoami")
class WhoAmI(Handler):
    """Tells the client which address the server thinks it has."""

    async def on_connect(self) -> None:
        peer_host, _peer_port = self.conn.remote_address  # the socket's peer: the proxy
        await self.conn.send(f"{self.conn.client_address} via {peer_host}")
