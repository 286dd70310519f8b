# examples/concepts/delivery.py
"""What a send reached: every send, publish and broadcast returns a Delivery."""

from typing import Any

import anyio
import structlog

from actors import Actor
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Member(Actor):
    """Joins the lobby and the "all" group; takes messages silently."""

    async def on_start(self) -> None:
        self.context.join("room:lobby")
        self.context.join("all")

    async def on_receive(self, message: Any) -> Any:
        return None


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        await system.spawn(Member, names=("user:alice",))
        await system.spawn(Member)
        print("send user:alice    ", await system.send("user:alice", "hi"))
        print("publish room:lobby ", await system.publish("room:lobby", "hi"))
        print("broadcast          ", await system.broadcast("hi"))
        print("publish room:empty ", await system.publish("room:empty", "hi"))
        nobody = await system.send("user:nobody", "hi")
        print("send user:nobody   ", nobody, "reached:", bool(nobody))
        letters = system.runtime.statistics().dead_letters
        print(f"dead letters: no_recipient={letters['no_recipient']} (the empty room is none)")


if __name__ == "__main__":
    anyio.run(main)
