"""wsup apps for the benchmark harness (``bench/registry.py``).

* ``fanout``: ``/fanout``; every connection joins the group ``bench``; a message
  from any connection is published to the group (the sender included).
* ``echo_deflate``: the echo example with permessage-deflate enabled.
* ``asgi_echo``, ``asgi_fanout``: the echo example and ``fanout`` served through
  :class:`supervisor.asgi.ASGIApp`, for uvicorn (the ``wsup-asgi`` server).
* ``soak``: the echo handler under each slow-consumer policy, for ``python -m
  bench.soak``: ``/echo`` (the defaults), ``/echo-drop`` (``drop_oldest``),
  ``/echo-block`` (``block``) and ``/echo-disconnect`` (``disconnect``), the last
  three with a 64 KiB outbound limit so that clients that never read reach it soon.
"""

from __future__ import annotations

from examples.echo import Echo
from examples.echo import app as echo_app
from supervisor import App, Handler, ServerConfig, SlowConsumerPolicy
from supervisor.asgi import ASGIApp


class Subscriber(Handler):
    """Joins the fan-out group; republishes whatever its client sends."""

    async def on_connect(self) -> None:
        self.context.join("bench")

    async def on_message(self, message: str | bytes) -> None:
        await self.context.publish("bench", message)


fanout = App()
fanout.add_route("/fanout", Subscriber)

asgi_echo = ASGIApp(echo_app)
asgi_fanout = ASGIApp(fanout)

echo_deflate = App(config=ServerConfig(compression=True))
echo_deflate.add_route("/echo", Echo)

soak = App()
soak.add_route("/echo", Echo)
for _path, _policy in (
    ("/echo-drop", SlowConsumerPolicy.DROP_OLDEST),
    ("/echo-block", SlowConsumerPolicy.BLOCK),
    ("/echo-disconnect", SlowConsumerPolicy.DISCONNECT),
):
    soak.add_route(_path, Echo, outbound_limit=64 << 10, slow_consumer=_policy)
