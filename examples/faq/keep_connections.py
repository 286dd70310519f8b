# examples/faq/keep_connections.py
"""Stop accepting new connections but keep serving the open ones.

Under ``wsup serve examples.faq.keep_connections:app``, ``kill -USR1 PID`` closes the
listeners (the port is free for the next version) while open connections go on;
a later ``kill -TERM PID`` drains them (close code 1001) and exits.
"""

from supervisor import App, Handler, Server

app = App()


@app.route("/session")
class Session(Handler):
    """A long-lived connection that must not be cut by a deploy."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def hand_over(server: Server) -> None:
    """What SIGUSR1 does, from your own code: close the listeners, keep the connections."""
    server.stop_accepting()
