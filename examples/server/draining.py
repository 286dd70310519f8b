# examples/server/draining.py
"""Graceful shutdown: jobs already received finish and are answered before the close."""

import anyio

from supervisor import App, Handler, ServerConfig

app = App(
    config=ServerConfig(
        drain_timeout=30.0,  # after this, jobs still running are cancelled (wsup --drain-timeout)
        readiness_grace=5.0,  # /readyz says 503 this long before the listeners close
    )
)


@app.route("/jobs")
class Jobs(Handler):
    """Each message is a job: the number of seconds it takes."""

    async def on_message(self, message: str | bytes) -> None:
        seconds = float(message)
        await anyio.sleep(seconds)
        await self.conn.send(f"done in {seconds:g} s")
