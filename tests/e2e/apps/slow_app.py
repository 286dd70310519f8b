"""A test app whose connections still have work queued when the server drains.

Theory of operation: on the text message ``load N``, a ``/load`` connection
actor puts N messages in its own mailbox and answers ``loaded N``. Handling one
of them takes a millisecond and sends its index (``"0"`` … ``"N-1"``) to the
client. None of them is handled before the server starts draining: they wait
behind a gate that opens when a ``/gate`` connection's actor is drained (its
``on_close`` runs while its connection is draining). So, however fast or slow
the machine, every ``/load`` connection that answered ``loaded N`` still has N
messages queued when the drain begins, and a test can check that the drain
delivers all of them, in order, before the close with 1001.

A ``/gate`` connection sends nothing. The close timeout is long (30 s) so that
a ``/gate`` client that never answers the server's close frame keeps the drain
open until the drain deadline: that is the window in which tests try to
connect to a draining server. The handshake timeout is long (60 s) so that a
connection accepted before the drain can still send its request during it.
``/echo`` echoes every message.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from actors import MailboxConfig
from supervisor import App, ConnectionState, Handler, ServerConfig

__all__ = ["MAX_LOAD", "Queued", "app"]

MAX_LOAD = 1000
"""The largest N a ``load N`` message may ask for (the mailbox holds them all)."""


@dataclass(frozen=True, slots=True)
class Queued:
    """One message a ``/load`` actor queued for itself.

    Attributes:
        index: its position, sent to the client as text once handled.
    """

    index: int


class _Gate:
    """The app state: the gate the queued messages wait behind."""

    def __init__(self) -> None:
        self.event: anyio.Event | None = None


app = App(config=ServerConfig(close_timeout=30.0, handshake_timeout=60.0), state=_Gate())


async def _make_gate(app: App) -> None:
    # Created at each start: an anyio Event belongs to the event loop that runs the server.
    app.state.event = anyio.Event()


app.on_startup.append(_make_gate)


def _gate(handler: Handler) -> anyio.Event:
    event = handler.app.state.event
    assert isinstance(event, anyio.Event)
    return event


@app.route("/load", mailbox=MailboxConfig(capacity=MAX_LOAD + 16))
class Load(Handler):
    """Queues ``N`` messages on ``load N``; handles them slowly once draining starts."""

    async def on_message(self, message: str | bytes) -> None:
        """Queue the requested messages in this actor's own mailbox."""
        if not isinstance(message, str) or not message.startswith("load "):
            await self.conn.send(f"error: expected 'load N', got {message!r}")
            return
        count = int(message.removeprefix("load "))
        if not 0 <= count <= MAX_LOAD:
            await self.conn.send(f"error: N must be in 0..{MAX_LOAD}")
            return
        for index in range(count):
            self.context.self.tell_nowait(Queued(index))
        await self.conn.send(f"loaded {count}")

    async def on_receive(self, message: object) -> None:
        """Send a queued message's index, slowly, once the gate is open."""
        if isinstance(message, Queued):
            await _gate(self).wait()
            await anyio.sleep(0.001)  # a slow actor: the drain has real work to wait for
            await self.conn.send(str(message.index))
        else:
            await super().on_receive(message)


@app.route("/gate")
class Gate(Handler):
    """Opens the gate when the server drains this connection."""

    async def on_close(self, code: int, reason: str) -> None:
        """Open the gate if the connection ends because the server drains."""
        if self.conn.state is ConnectionState.DRAINING:
            _gate(self).set()


@app.route("/echo")
class Echo(Handler):
    """Sends each message straight back."""

    async def on_message(self, message: str | bytes) -> None:
        """Echo ``message`` with its type."""
        await self.conn.send(message)
