# examples/concepts/backplane.py
"""The backplane carries sends to other nodes; in-process by default, same API either way."""

from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from actors import Actor, Backplane, BackplaneUnavailable, Node
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Listener(Actor):
    """Joins a room and prints what reaches it."""

    async def on_start(self) -> None:
        self.context.join("room:lobby")

    async def on_receive(self, message: Any) -> Any:
        if message != "flush":
            print(f"  local member got {message!r}")


class RecordingBackplane(Backplane):
    """A stand-in for a cluster transport: it pretends other nodes exist, prints what the
    runtime hands it, and can be cut. It carries nothing anywhere."""

    kind = "recording"
    remote = True

    def __init__(self) -> None:
        self.connected = True
        self.unsubscribed: list[str] = []

    @property
    def up(self) -> bool:
        return self.connected

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def subscribe(self, address: str) -> None:
        print(f"  backplane: subscribe {address}")

    def unsubscribe(self, address: str) -> None:
        self.unsubscribed.append(address)

    async def publish(self, address: str, message: Any) -> int:
        if not self.connected:
            raise BackplaneUnavailable(address, "link cut")  # fail fast, never buffer
        print(f"  backplane: publish {message!r} to {address}")
        await anyio.lowlevel.checkpoint()
        return 1


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        backplane = system.runtime.backplane
        print(f"default backplane: {backplane.kind}, up={backplane.up}, remote={backplane.remote}")

    print("with a cluster backplane:")
    recording = RecordingBackplane()
    async with ActorSystem(backplane=recording, node_id="demo") as system:
        listener = await system.spawn(Listener)
        await system.publish("room:lobby", "hello")
        await listener.ask("flush")  # wait until the local member has handled "hello"

        recording.connected = False
        try:
            await system.publish("room:lobby", "during the outage")
        except BackplaneUnavailable as exc:
            print(f"  BackplaneUnavailable: {exc}")
        await listener.ask("flush")
        print(f"  dead letters: {dict(system.runtime.statistics().dead_letters)}")

        listener.stop()
        await listener.wait_stopped()
        print(f"  backplane: unsubscribed {sorted(recording.unsubscribed)}")


if __name__ == "__main__":
    anyio.run(main)
