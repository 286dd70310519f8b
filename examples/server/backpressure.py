# examples/server/backpressure.py
"""A bounded mailbox under ``block``: a slow handler slows its client down, losing nothing."""

import anyio

from actors import MailboxConfig, OverflowPolicy
from supervisor import App, Handler


class Storage:
    """Stands for a slow database; shared by every connection as ``app.state``."""

    def __init__(self) -> None:
        self.rows: list[str | bytes] = []

    async def insert(self, row: str | bytes) -> None:
        await anyio.sleep(0.01)
        self.rows.append(row)


app = App(state=Storage())


@app.route("/ingest", mailbox=MailboxConfig(capacity=8, policy=OverflowPolicy.BLOCK))
class Ingest(Handler):
    """Stores every message, one at a time, in order."""

    async def on_message(self, message: str | bytes) -> None:
        # While this runs, at most 8 more messages wait in the mailbox; then wsup
        # stops reading the socket and TCP makes the client wait.
        await self.app.state.insert(message)
