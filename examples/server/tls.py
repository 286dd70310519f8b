# examples/server/tls.py
"""Serving wss:// with a certificate and its private key (PEM files).

TLS_CERTFILE=cert.pem TLS_KEYFILE=key.pem wsup serve examples.server.tls:app
"""

import os
import ssl

from supervisor import App, Handler, ServerConfig


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server-side context with Python's secure defaults."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


app = App(
    config=ServerConfig(
        ssl=tls_context(os.environ["TLS_CERTFILE"], os.environ["TLS_KEYFILE"]),
    )
)


@app.route("/echo")
class Echo(Handler):
    """Sends every message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)
