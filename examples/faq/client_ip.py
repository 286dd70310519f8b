# examples/faq/client_ip.py
"""The client's IP address, and the real one behind a reverse proxy you trust."""

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        # X-Forwarded-For and Forwarded are believed only from these networks.
        trusted_proxies=["127.0.0.1", "10.0.0.0/8"],
    )
)


@app.route("/ip")
class Ip(Handler):
    """Tells the client what the server knows of its address."""

    async def on_connect(self) -> None:
        peer_host, _peer_port = self.conn.remote_address  # the TCP peer: maybe a proxy
        await self.conn.send(f"{self.conn.client_address} via {peer_host}")
