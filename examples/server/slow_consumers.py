# examples/server/slow_consumers.py
"""What happens when a client reads slower than the server writes to it."""

from supervisor import App, Handler, SlowConsumerPolicy

app = App()


class Burst(Handler):
    """On "burst N", sends N numbered 16 KiB messages as fast as it can, then "done"."""

    async def on_message(self, message: str | bytes) -> None:
        count = int(message.split()[1])
        for number in range(count):
            # Once the connection is closing, send() raises ConnectionClosed, which
            # ends this hook quietly: the end of the connection, not a crash.
            await self.conn.send(f"{number:08d}".ljust(16 * 1024, "."))
        await self.conn.send("done")


# Prices, positions, game state: only the latest matters, drop what is stale.
app.add_route(
    "/ticker", Burst, outbound_limit=256 * 1024, slow_consumer=SlowConsumerPolicy.DROP_OLDEST
)
# A stream where every message matters: a client that falls behind must reconnect.
app.add_route(
    "/feed", Burst, outbound_limit=256 * 1024, slow_consumer=SlowConsumerPolicy.DISCONNECT
)
