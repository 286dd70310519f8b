# examples/concepts/addresses.py
"""Addresses: an actor's own address, names with several members, groups, and "all"."""

from typing import Any

import anyio
import structlog

from actors import ALL, Actor, ActorRef, AmbiguousAddress, NoRecipient
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Device(Actor):
    """One of a user's devices: joins its groups on start and notes what reaches it."""

    def __init__(self, label: str, groups: tuple[str, ...], inbox: list[str]) -> None:
        self.label = label
        self.groups = groups
        self.inbox = inbox

    async def on_start(self) -> None:
        for group in (*self.groups, ALL):
            self.context.join(group)

    async def on_receive(self, message: Any) -> Any:
        if message == "flush":
            return None
        if message == "who":
            return self.label
        self.inbox.append(self.label)
        return None


def show(what: str, result: object) -> None:
    print(f"{what:<20} -> {result}")


async def main() -> None:
    inbox: list[str] = []

    async def deliveries(devices: list[ActorRef]) -> str:
        """Wait until every device has handled what was sent so far; say who got it."""
        for device in devices:
            if device.alive:
                await device.ask("flush")  # queued behind the earlier message
        got = ", ".join(sorted(inbox))
        inbox.clear()
        return got or "nobody"

    async with ActorSystem(node_id="demo") as system:
        phone = await system.spawn(
            lambda: Device("alice/phone", ("room:lobby",), inbox), names=("user:alice",)
        )
        laptop = await system.spawn(
            lambda: Device("alice/laptop", (), inbox), names=("user:alice",)
        )
        bob = await system.spawn(lambda: Device("bob", ("room:lobby",), inbox), names=("user:bob",))
        devices = [phone, laptop, bob]

        await system.send("user:alice", "dm")
        show("send user:alice", await deliveries(devices))
        await system.publish("room:lobby", "hi all")
        show("publish room:lobby", await deliveries(devices))
        await system.broadcast("restarting soon")
        show("broadcast", await deliveries(devices))
        await system.send(bob.address, "just you")
        show(f"send {bob.address}", await deliveries(devices))

        try:
            await system.ask("user:alice", "who")
        except AmbiguousAddress as exc:
            show("ask user:alice", f"AmbiguousAddress ({exc.members} members)")
        show("ask user:bob", await system.ask("user:bob", "who"))

        bob.stop()
        await bob.wait_stopped()  # his names and groups are gone with him
        show("room:lobby members", [ref.address for ref in system.runtime.members("room:lobby")])
        await system.send("user:bob", "are you there?")
        show("send user:bob", await deliveries(devices) + " (a dead letter)")
        try:
            await system.ask("user:bob", "who")
        except NoRecipient as exc:
            show("ask user:bob", f"NoRecipient ({exc.address})")


if __name__ == "__main__":
    anyio.run(main)
