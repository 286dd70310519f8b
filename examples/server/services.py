# examples/server/services.py
"""Services beside the connections: a vital clock, run once per cluster, and an optional subtree."""

import time
from typing import Any

from actors import Actor, Backoff, Intensity
from supervisor import App, ChildSpec, Handler, Restart, Strategy, SupervisorSpec

app = App()


class Clock(Actor):
    """Publishes the time to room:clock every second, on a timer."""

    async def on_start(self) -> None:
        self.context.timers.send_interval("tick", "tick", 1.0)

    async def on_receive(self, message: Any) -> Any:
        await self.context.publish("room:clock", f"{time.time():.0f}")


class Notes(Actor):
    """Keeps notes in memory: ("set", key, text) and ("get", key)."""

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    async def on_receive(self, message: Any) -> Any:
        match message:
            case ("set", key, text):
                self.notes[key] = text
            case ("get", key):
                return self.notes.get(key)
        return None


class Audit(Actor):
    """Stands for an actor that depends on Notes: the two restart together (one_for_all)."""

    async def on_receive(self, message: Any) -> Any:
        return None


# Vital and cluster-wide: one clock per cluster (a lease in Redis with --redis);
# past 3 restarts in 5 s the process turns unready, drains and exits with status 3.
app.service(Clock, singleton=True, critical=True, intensity=Intensity(3, 5.0))

# Optional: two actors restarted together; past 5 restarts in 30 s the subtree
# stops (temporary: not restarted), the escalation is counted, the rest runs on.
app.supervise(
    SupervisorSpec(
        [
            ChildSpec(Notes, id="notes", names=("notes",), backoff=Backoff(minimum=0.1)),
            ChildSpec(Audit, id="audit", names=("audit",)),
        ],
        strategy=Strategy.ONE_FOR_ALL,
        intensity=Intensity(5, 30.0),
        id="notebook",
        restart=Restart.TEMPORARY,
    )
)


@app.route("/clock")
class ClockFeed(Handler):
    """Receives the time every second; a text message is kept as a note."""

    async def on_connect(self) -> None:
        self.context.join("room:clock")

    async def on_message(self, message: str | bytes) -> None:
        delivery = await self.app.send("notes", ("set", self.conn.address, str(message)))
        await self.conn.send("noted" if delivery else "notes are down")
