# examples/faq/blocking.py
"""Blocking code: a plain ``def`` hook runs in a worker thread and stalls nobody else."""

import time

import anyio.from_thread

from supervisor import App, Handler

app = App()


@app.route("/report")
class Report(Handler):
    """Builds a report with blocking code: a database driver, ``requests``, a big file."""

    # The base hook is ``async def``; a plain ``def`` is allowed too, which
    # type checkers report as an incompatible override.
    def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        time.sleep(1)  # blocks this worker thread only
        # Connection methods belong to the event loop: call them through anyio.from_thread.
        anyio.from_thread.run(self.conn.send, f"report {message!s} ready")


@app.route("/ping")
class Ping(Handler):
    """Answers at once, even while reports are being built."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send("pong")


@app.route("/mistake")
class Mistake(Handler):
    """Don't: a blocking call in an ``async def`` hook stops every connection meanwhile."""

    async def on_message(self, message: str | bytes) -> None:
        time.sleep(1)  # noqa: ASYNC251 - wsup logs loop.stalled, naming this actor and hook
        await self.conn.send("finally")
