# examples/concepts/restarts.py
"""A restart makes a fresh behaviour on the same address and mailbox; the failed message is lost."""

from typing import Any

import anyio
import structlog

from actors import Actor, Backoff, DeadLetter, Intensity, MailboxClosed
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Flaky(Actor):
    """Counts what it handles since its last (re)start; "crash" makes it fail."""

    def __init__(self) -> None:
        self.handled = 0  # behaviour state: a restart starts it again from zero

    async def on_start(self) -> None:
        print(f"started   {self.context.address}")

    async def on_restart(self, error: Exception) -> None:
        print(f"restarted {self.context.address} (restart {self.context.restarts}) after {error!r}")

    async def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("bad input")
        self.handled += 1
        return f"{message}: handled {self.handled} since the last start"


def show(letter: DeadLetter) -> None:
    print(f"dead letter {letter.message!r} ({letter.reason})")


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        system.runtime.dead_letters.subscribe(show)
        flaky = await system.spawn(
            Flaky,
            intensity=Intensity(max_restarts=2, within=60.0),
            backoff=Backoff(minimum=0),  # restart at once (the default waits 10 ms, then more)
        )
        print(await flaky.ask("a"))

        flaky.tell_nowait("crash")
        flaky.tell_nowait("b")  # waits in the same mailbox through the restart
        print(await flaky.ask("c"))

        flaky.tell_nowait("crash")  # restart 2 of 2 allowed within 60 s
        flaky.tell_nowait("crash")  # one too many: the actor is stopped for good
        flaky.tell_nowait("d")
        await flaky.wait_stopped()
        try:
            await flaky.tell("e")
        except MailboxClosed:
            print(f"{flaky.address} has stopped: alive={flaky.alive}")


if __name__ == "__main__":
    anyio.run(main)
