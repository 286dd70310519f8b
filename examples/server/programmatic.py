# examples/server/programmatic.py
"""Running wsup from your own program instead of the ``wsup`` command.

python -m examples.server.programmatic
"""

from collections.abc import Awaitable, Callable

import anyio

from supervisor import App, Handler, Server, ServerConfig, configure_logging, serve

app = App()


@app.route("/echo")
class Echo(Handler):
    """Sends every message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


async def main() -> None:
    """What ``wsup serve`` does: serve until SIGTERM or SIGINT, then drain."""
    configure_logging("console")
    await serve(app, ServerConfig(hosts=("127.0.0.1",), port=8765))


async def serve_while(work: Callable[[str], Awaitable[None]]) -> None:
    """Serve on a free port while ``work(url)`` runs, then drain and stop."""
    server = Server(app, ServerConfig(port=0))  # port 0: the system picks a free one
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)  # returns once the server is listening
        host, port = server.ports[0]
        await work(f"ws://{host}:{port}/echo")
        await server.shutdown()  # drains, then server.serve() returns


if __name__ == "__main__":
    anyio.run(main)  # or anyio.run(main, backend="trio")
