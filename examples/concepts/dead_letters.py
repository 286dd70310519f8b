# examples/concepts/dead_letters.py
"""Dead letters: every message that reached no handler is counted, logged and observable."""

from contextlib import suppress
from typing import Any

import anyio
import structlog

from actors import Actor, ActorRestarted, DeadLetter, MailboxConfig, OverflowPolicy
from supervisor import ActorSystem, Restart

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Picky(Actor):
    """Accepts numbers only."""

    async def on_receive(self, message: Any) -> Any:
        if not isinstance(message, int):
            raise TypeError(f"not a number: {message!r}")
        return message


def show(letter: DeadLetter) -> None:
    detail = letter.detail or "-"
    print(f"{letter.reason:<12}  {letter.address:<13}  {letter.message!r:<8}  {detail}")


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        system.runtime.dead_letters.subscribe(show)

        # dropped: the mailbox policy discarded it.
        small = await system.spawn(
            Picky, mailbox=MailboxConfig(capacity=1, policy=OverflowPolicy.DROP_NEWEST)
        )
        small.tell_nowait(1)
        small.tell_nowait(2)

        # no_recipient: nobody answers to the address.
        await system.send("user:nobody", "hello?")

        # failed: the handler raised; the message is never retried.
        picky = await system.spawn(Picky, restart=Restart.TEMPORARY)
        with suppress(ActorRestarted):
            await picky.ask("three")

        # stopped: still queued when the actor stopped.
        queued = await system.spawn(Picky)
        queued.tell_nowait(4)
        queued.tell_nowait(5)
        queued.stop()
        await queued.wait_stopped()

        print(dict(system.runtime.statistics().dead_letters))


if __name__ == "__main__":
    anyio.run(main)
