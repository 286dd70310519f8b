# examples/concepts/monitors.py
"""Monitors: a watcher gets one Down message, with the reason, when a watched actor ends."""

from typing import Any

import anyio
import structlog

from actors import Actor, Down
from supervisor import ActorSystem, Restart

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Watcher(Actor):
    """Watches what it is told to, and prints every Down it receives."""

    async def on_receive(self, message: Any) -> Any:
        match message:
            case ("watch", target):
                self.context.watch(target)
            case Down(address=address, reason=reason, error=error):
                print(f"down {address}: {reason}" + (f" ({error!r})" if error else ""))


class Worker(Actor):
    """ "crash" makes it fail, "done" makes it stop itself."""

    async def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crashed on purpose")
        self.context.stop()


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        watcher = await system.spawn(Watcher)
        finishing = await system.spawn(Worker)
        fragile = await system.spawn(Worker, restart=Restart.TEMPORARY)
        restarted = await system.spawn(Worker, restart=Restart.PERMANENT)
        for target in (finishing, fragile.address, restarted):  # a reference or an address
            await watcher.tell(("watch", target))
        await watcher.tell(("watch", "actor:demo.99"))  # nobody: Down at once
        await anyio.wait_all_tasks_blocked()
        await restarted.tell("crash")  # restarted: not an end, no Down
        await finishing.tell("done")
        await fragile.tell("crash")
        await anyio.wait_all_tasks_blocked()
        restarted.stop()
        await restarted.wait_stopped()
        await anyio.wait_all_tasks_blocked()


if __name__ == "__main__":
    anyio.run(main)
