# examples/server/quickstart.py
"""Quick start: an echo server, and a client that talks to it.

Serve it:    wsup serve examples.server.quickstart:app
Talk to it:  python -m examples.server.quickstart
"""

import sys

from websockets.sync.client import connect

from supervisor import App, Handler

app = App()


@app.route("/echo")
class Echo(Handler):
    """Sends every message straight back, with the same type."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def main(url: str = "ws://127.0.0.1:8765/echo") -> None:
    """Send a text and a binary message, and print what comes back."""
    with connect(url) as websocket:
        websocket.send("hello")
        print(websocket.recv())  # hello
        websocket.send(b"\x00\x01")
        print(websocket.recv())  # b'\x00\x01'


if __name__ == "__main__":
    main(*sys.argv[1:])
