# examples/concepts/mailboxes.py
"""Mailboxes are bounded: what each overflow policy does with one message too many."""

from typing import Any

import anyio
import structlog

from actors import Actor, MailboxConfig, MailboxFull, OverflowPolicy
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Recorder(Actor):
    """Remembers every message it handles."""

    def __init__(self, handled: list[int]) -> None:
        self.handled = handled

    async def on_receive(self, message: Any) -> None:
        self.handled.append(message)


async def overflow(system: ActorSystem, policy: OverflowPolicy) -> None:
    """Offer four messages at once to a mailbox that holds two."""
    handled: list[int] = []
    ref = await system.spawn(
        lambda: Recorder(handled), mailbox=MailboxConfig(capacity=2, policy=policy)
    )
    refused = 0
    for n in (1, 2, 3, 4):
        try:
            ref.tell_nowait(n)  # no checkpoint: the actor cannot run in between
        except MailboxFull:
            refused += 1
    stats = ref.statistics()
    ref.drain()  # handle what is queued, then stop
    await ref.wait_stopped()
    print(
        f"{policy:<11}  handled={handled}  refused={refused}  "
        f"depth={stats.depth}/{stats.capacity}  dropped={dict(stats.dropped)}"
    )


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        for policy in OverflowPolicy:
            await overflow(system, policy)

        # Under "block", an awaiting sender waits for space instead of failing.
        handled: list[int] = []
        ref = await system.spawn(lambda: Recorder(handled), mailbox=MailboxConfig(capacity=2))
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        await ref.tell(3, timeout=1.0)  # waits until the actor has taken message 1
        await ref.tell(4, timeout=1.0)
        ref.drain()
        await ref.wait_stopped()
        stats = ref.statistics()
        print(f"block+await  handled={handled}  high_water={stats.high_water}/{stats.capacity}")

        # The control lane: stop() gets through a full mailbox.
        ref = await system.spawn(
            lambda: Recorder([]), mailbox=MailboxConfig(capacity=1, policy=OverflowPolicy.REJECT)
        )
        ref.tell_nowait(1)
        ref.stop()  # the queued message becomes a dead letter
        await ref.wait_stopped()
        letters = system.runtime.statistics().dead_letters
        print(f"stop through a full mailbox: alive={ref.alive}, stopped={letters['stopped']}")


if __name__ == "__main__":
    anyio.run(main)
