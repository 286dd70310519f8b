# examples/faq/firehose.py
"""A handler that sends as fast as it can, into a bounded buffer, without starving anyone."""

from supervisor import App, ConnectionClosed, Handler, SlowConsumerPolicy

app = App()


class Firehose(Handler):
    """Streams numbered messages from the moment the client connects until it leaves."""

    async def on_connect(self) -> None:
        number = 0
        try:
            while True:
                # No asyncio.sleep(0) needed: send() regularly lets other tasks run,
                # and a client that reads slower than this meets the route's
                # slow-consumer policy instead of growing the server's memory.
                await self.conn.send(f"firehose {number}")
                number += 1
        except ConnectionClosed:
            pass  # the client left


app.add_route(
    "/firehose",
    Firehose,
    outbound_limit=64 * 1024,  # bytes waiting for this client, at most
    slow_consumer=SlowConsumerPolicy.DROP_OLDEST,  # stale numbers go first
)


@app.route("/ping")
class Ping(Handler):
    """Answers at once, however hard the firehose runs."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send("pong")
