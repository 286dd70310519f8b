# examples/server/closing.py
"""Closing a connection from the server, with a close code and a reason."""

import structlog

from supervisor import App, Handler

app = App()
log = structlog.get_logger()


@app.route("/session")
class Session(Handler):
    """Echoes messages; "logout" and "kick" close the connection."""

    async def on_message(self, message: str | bytes) -> None:
        if message == "logout":
            # A normal close. Messages queued before it are delivered first.
            await self.conn.send("goodbye")
            await self.conn.close(1000, "logged out")
        elif message == "kick":
            # 4000-4999 are free for applications to give their own meaning.
            await self.conn.close(4001, "kicked by an operator")
        else:
            await self.conn.send(message)

    async def on_close(self, code: int, reason: str) -> None:
        # Called once, however the connection ended, with the code sent or received.
        log.info("session.ended", code=code, reason=reason)
