# examples/faq/listen.py
"""Listen addresses of ``serve(app)``: several hosts, IPv4 and IPv6 (``wsup serve``: ``--host``)."""

from supervisor import App, Handler, ServerConfig

# The default is 127.0.0.1 only. "0.0.0.0" is every IPv4 interface; "localhost",
# "" or "::" listen on every address family the machine has. --host options (or
# WSUP_HOST) on the wsup command line replace these hosts.
app = App(config=ServerConfig(hosts=("127.0.0.1", "::1"), port=8765))


@app.route("/where")
class Where(Handler):
    """Tells the client which address family it came in on."""

    async def on_connect(self) -> None:
        host, _port = self.conn.remote_address
        await self.conn.send("IPv6" if ":" in host else "IPv4")
