# examples/faq/stop_server.py
"""Stopping: SIGTERM or Ctrl-C drains the server; nothing to write for it.

Run ``wsup serve examples.faq.stop_server:app`` or ``python -m examples.faq.stop_server``.
"""

import anyio

from supervisor import App, Handler, ServerConfig, serve

app = App(config=ServerConfig(drain_timeout=30.0))  # for serve(); wsup takes --drain-timeout


@app.route("/jobs")
class Jobs(Handler):
    """Each message is a job length in seconds; a job under way when SIGTERM comes finishes."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(f"started {message!s}")
        await anyio.sleep(float(message))  # stands for the real work
        await self.conn.send(f"finished {message!s}")


async def main() -> None:
    """Serve until SIGTERM or SIGINT, drain (every connection closes with 1001), return."""
    await serve(app)


if __name__ == "__main__":
    anyio.run(main)
