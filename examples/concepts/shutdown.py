# examples/concepts/shutdown.py
"""Shutdown: dynamic children first, then static ones in reverse start order, each timed."""

from typing import Any

import anyio
import structlog

from actors import Actor, DeadLetter
from supervisor import ActorSystem, ChildSpec

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Service(Actor):
    """Says when it starts and stops."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def on_start(self) -> None:
        print(f"started  {self.name}")

    async def on_receive(self, message: Any) -> Any:
        return None

    async def on_stop(self) -> None:
        print(f"stopping {self.name}")


class Stuck(Actor):
    """Never finishes its message, so only its shutdown timeout ends it."""

    def __init__(self, busy: anyio.Event) -> None:
        self.busy = busy

    async def on_receive(self, message: Any) -> Any:
        self.busy.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            print("stuck    cancelled after its shutdown timeout (on_stop() is not called)")
            raise


def show(letter: DeadLetter) -> None:
    print(f"dead letter {letter.message!r} ({letter.reason}, {letter.detail})")


async def main() -> None:
    busy = anyio.Event()
    children = (
        ChildSpec(lambda: Service("database"), id="database"),
        ChildSpec(lambda: Service("cache"), id="cache"),
        ChildSpec(lambda: Stuck(busy), id="stuck", names=("stuck",), shutdown_timeout=0.005),
    )
    async with ActorSystem(*children, node_id="demo") as system:
        system.runtime.dead_letters.subscribe(show)
        session = await system.spawn(lambda: Service("session"))  # a dynamic child
        await system.send("stuck", "work")
        await busy.wait()
        await system.send("stuck", "more work")  # queued behind the message it is stuck on
        print(f"leaving the block; {session.address} is a dynamic child")
    print("all stopped")


if __name__ == "__main__":
    anyio.run(main)
