# examples/concepts/strategies.py
"""Strategies: which siblings a supervisor restarts when one child crashes."""

from collections import Counter
from functools import partial
from typing import Any

import anyio
import structlog

from actors import Actor
from supervisor import ActorSystem, ChildSpec, Strategy

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Service(Actor):
    """Counts its own starts; "crash" makes it fail."""

    def __init__(self, name: str, starts: Counter[str]) -> None:
        self.name = name
        self.starts = starts

    async def on_start(self) -> None:
        self.starts[self.name] += 1  # on_restart() calls on_start() unless overridden

    async def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        return None


async def main() -> None:
    for strategy in Strategy:
        starts: Counter[str] = Counter()
        children = [
            ChildSpec(partial(Service, name, starts), id=name, names=(name,))
            for name in ("a", "b", "c")
        ]
        async with ActorSystem(*children, strategy=strategy) as system:
            await system.send("b", "crash")
            for name in ("b", "a", "c"):
                await system.ask(name, "ping")  # answered once it runs again
            print(f"{strategy:<12}  starts: a={starts['a']} b={starts['b']} c={starts['c']}")


if __name__ == "__main__":
    anyio.run(main)
