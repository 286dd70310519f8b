"""wsup apps for the benchmark harness (``bench/registry.py``).

* ``fanout``: ``/fanout``; every connection joins the group ``bench``; a message
  from any connection is published to the group (the sender included).
* ``echo_deflate``: the echo example with permessage-deflate enabled.
"""

from __future__ import annotations

from examples.echo import Echo
from supervisor import App, Handler, ServerConfig


class Subscriber(Handler):
    """Joins the fan-out group; republishes whatever its client sends."""

    async def on_connect(self) -> None:
        self.context.join("bench")

    async def on_message(self, message: str | bytes) -> None:
        await self.context.publish("bench", message)


fanout = App()
fanout.add_route("/fanout", Subscriber)

echo_deflate = App(config=ServerConfig(compression=True))
echo_deflate.add_route("/echo", Echo)
