# examples/server/restarts.py
"""A handler that crashes is restarted on the same socket, up to a limit."""

from actors import Intensity
from supervisor import App, Handler

app = App()


# At most 2 restarts in 60 seconds; the third crash closes the connection with 1011.
@app.route("/fragile", intensity=Intensity(max_restarts=2, within=60.0))
class Fragile(Handler):
    """Echoes messages; "crash" raises, as a bug would."""

    async def on_connect(self) -> None:
        # Runs when the connection opens and again after each restart (same socket).
        await self.conn.send(f"ready, restarts so far: {self.context.restarts}")

    async def on_message(self, message: str | bytes) -> None:
        if message == "crash":
            raise RuntimeError("simulated bug")
        await self.conn.send(message)
