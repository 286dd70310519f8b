"""A price ticker: one feed for the whole cluster, a room per symbol.

Run it with ``wsup serve examples.ticker:app`` (or, as a cluster, with
``--workers 2 --redis redis://127.0.0.1:6379/0``) and connect to
ws://127.0.0.1:8765/ticker/BTC.

* ``/ticker/{symbol}`` for BTC, ETH and SOL; any other symbol is closed with 4004.
* Every 100 ms the ``PriceFeed`` service publishes ``{"symbol": "BTC", "price":
  60000.12, "seq": 17}`` to each symbol's room. ``seq`` grows by one per tick
  across the cluster: it is a counter in the backplane (Redis ``INCR``), so a
  restarted or newly elected feed goes on from where the last one stopped.
* The feed is a *singleton*: it runs once in the cluster, on the node that holds
  its lease; when that node dies another takes over within the lease time.
* The feed is *critical*: it may be restarted 3 times in 5 s. A client that
  sends the text ``crash-feed`` makes it raise once; one crash more inside the
  window and the process turns unready (``/readyz`` 503), drains its
  connections and exits with status 3, for its process manager to restart.
"""

from __future__ import annotations

import json
import math
from typing import Any

from actors import Actor, Backoff, Intensity
from supervisor import App, Handler, ServerConfig

SYMBOLS = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0}
"""The symbols served, with a base price each."""
TICK = 0.1
"""Seconds between two prices."""

# A readiness grace: /readyz answers 503 for a moment before the listeners close,
# so load balancers (and curious humans) see the node leave.
app = App(config=ServerConfig(readiness_grace=1.0))


class PriceFeed(Actor):
    """Publishes every symbol's price each tick; ``"crash"`` makes it raise once."""

    async def on_start(self) -> None:
        # A timer, not a sleeping loop: it is cancelled when the feed crashes, so a
        # restarted feed never runs two loops, and a queued tick never outlives a crash.
        self.context.timers.send_interval("tick", "tick", TICK)

    async def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("a client asked the feed to crash")
        if message == "tick":
            seq = await self.context.runtime.backplane.increment("ticker:seq")
            for symbol, base in SYMBOLS.items():
                price = round(base * (1 + 0.01 * math.sin(seq / 20 + len(symbol))), 2)
                text = json.dumps({"symbol": symbol, "price": price, "seq": seq})
                await self.context.publish(f"room:{symbol}", text)
        return None


app.service(
    PriceFeed,
    names=("price-feed",),
    singleton=True,
    critical=True,
    intensity=Intensity(max_restarts=3, within=5.0),
    backoff=Backoff(minimum=0.01, maximum=0.2),
)


@app.route("/ticker/{symbol}")
class Ticker(Handler):
    """Joins the symbol's room; ``crash-feed`` is passed on to the feed."""

    async def on_connect(self) -> None:
        symbol = self.params["symbol"]
        if symbol not in SYMBOLS:
            await self.conn.close(4004, f"unknown symbol {symbol}")
            return
        self.context.join(f"room:{symbol}")

    async def on_message(self, message: str | bytes) -> None:
        if message == "crash-feed":
            # To the feed's name: it reaches the feed on whichever node holds it.
            await self.app.send("price-feed", "crash")
