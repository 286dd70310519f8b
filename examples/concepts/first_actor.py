# examples/concepts/first_actor.py
"""An actor is a behaviour class; the actor system runs it and hands out a reference."""

import hashlib
import threading
from typing import Any

import anyio
import structlog

from actors import Actor
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Counter(Actor):
    """Counts "increment" messages and replies to "get" with the count."""

    def __init__(self, start: int) -> None:
        self.count = start

    async def on_start(self) -> None:
        print(f"started at {self.context.address}")

    async def on_receive(self, message: Any) -> Any:
        if message == "increment":
            self.count += 1
            return None
        if message == "get":
            return self.count
        raise ValueError(f"unknown message {message!r}")

    async def on_stop(self) -> None:
        print(f"stopping with count {self.count}")


class Digest(Actor):
    """A plain ``def`` hook runs in a worker thread, so blocking work stalls no other actor."""

    def on_receive(self, message: Any) -> Any:
        in_worker = threading.current_thread() is not threading.main_thread()
        return hashlib.sha256(message).hexdigest()[:12], in_worker


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        counter = await system.spawn(lambda: Counter(start=10))
        for _ in range(3):
            await counter.tell("increment")
        print("count:", await counter.ask("get"))

        digest = await system.spawn(Digest)
        value, in_worker = await digest.ask(b"hello")
        print(f"digest {value}, computed in a worker thread: {in_worker}")
    print("system stopped")


if __name__ == "__main__":
    anyio.run(main)
