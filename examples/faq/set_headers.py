# examples/faq/set_headers.py
"""Response headers: extra headers from a hook, subprotocols per route, compression."""

import secrets

from supervisor import Accept, App, Handler, Request, ServerConfig

# compression=True answers a client's permessage-deflate offer (Sec-WebSocket-Extensions).
app = App(config=ServerConfig(compression=True))


def tag(request: Request) -> Accept:
    """Add a header to the 101 response."""
    return Accept(headers=[("X-Request-Id", secrets.token_hex(8))])


class Api(Handler):
    """Tells the client which subprotocol was agreed."""

    async def on_connect(self) -> None:
        await self.conn.send(f"speaking {self.conn.subprotocol}")


# Sec-WebSocket-Protocol: the first of these, in this order, that the client offers.
# A client that offers none of them gets HTTP 400.
app.add_route("/api", Api, subprotocols=("api.v2", "api.v1"), hook=tag)
