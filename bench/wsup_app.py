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
* ``attacks``: ``/echo`` with the settings ``python -m bench.attacks`` tries:
  pings every 5 s (5 s to answer, like the websockets server it is compared
  with), a 10 s message deadline, ``max_connections=1000``, and an inbound
  rate of 1,000 messages a second per connection (``delay``).
  ``attacks_per_address`` is the same with at most 100 connections per client
  address.
"""

from __future__ import annotations

from dataclasses import replace

from examples.echo import Echo
from examples.echo import app as echo_app
from supervisor import App, Handler, KeepaliveConfig, Rate, ServerConfig, SlowConsumerPolicy
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

attacks = App(
    config=ServerConfig(
        keepalive=KeepaliveConfig(ping_interval=5.0, ping_timeout=5.0, message_timeout=10.0),
        max_connections=1000,
    )
)
attacks.add_route("/echo", Echo, inbound_rate=Rate(1000, burst=1000))

attacks_per_address = App(config=replace(attacks.config, max_connections_per_address=100))
attacks_per_address.add_route("/echo", Echo, inbound_rate=Rate(1000, burst=1000))
