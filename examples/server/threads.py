# examples/server/threads.py
"""Plain ``def`` hooks run in a worker thread, so blocking calls stall nobody else."""

import hashlib
import time

import anyio.from_thread

from supervisor import App, Handler

app = App()


@app.route("/digest")
class Digest(Handler):
    """Answers each message with its SHA-256, computed by slow, blocking code."""

    # The base hook is ``async def``; a plain ``def`` is allowed too, which
    # type checkers report as an incompatible override.
    def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        data = message.encode() if isinstance(message, str) else message
        time.sleep(0.1)  # stands for any blocking call: a database driver, a file, requests
        digest = hashlib.sha256(data).hexdigest()
        # Connection methods belong to the event loop: call them through anyio.from_thread.
        anyio.from_thread.run(self.conn.send, digest)
