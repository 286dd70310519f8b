# examples/faq/premature_close.py
"""Background work runs beside the connection, which stays open when a hook returns."""

from typing import Any

import anyio

from actors import Actor
from supervisor import App, Handler

app = App()


class Job(Actor):
    """One slow job: does the work, tells the connection, stops."""

    async def on_receive(self, message: Any) -> None:
        reply_to, seconds = message
        await anyio.sleep(seconds)  # stands for the real work
        # A send, not a reference to the connection: if the client has left
        # meanwhile, the result becomes a dead letter instead of an exception.
        await self.context.send(reply_to, f"job of {seconds:g} s done")
        self.context.stop()


@app.route("/jobs")
class Jobs(Handler):
    """Each message is a job length in seconds; the reply comes when the job is done."""

    async def on_connect(self) -> None:
        await self.conn.send("send me a number of seconds")
        # Returning from on_connect does not end the connection: the client or
        # the app closes it, never the end of a hook.

    async def on_message(self, message: str | bytes) -> None:
        seconds = float(message)
        await self.conn.send(f"working on a job of {seconds:g} s")
        # The job is an actor of its own, under the app's supervisor: this hook
        # returns at once and the connection goes on with its next message.
        job = await self.app.spawn(Job)
        await job.tell((self.context.address, seconds))
