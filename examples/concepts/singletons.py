# examples/concepts/singletons.py
"""A singleton runs on one node at a time; when that node stops, another takes over."""

from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from actors import Actor, FakeClock, InProcessBackplane, LeasePolicy
from supervisor import ActorSystem, ChildSpec

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

LEASE = LeasePolicy(ttl=3.0, renew_every=1.0, retry_every=0.25)


class Feed(Actor):
    """Says where it runs."""

    def __init__(self, node: str, clock: FakeClock) -> None:
        self.node = node
        self.clock = clock

    async def on_start(self) -> None:
        print(f"t={self.clock.now():4.2f}  feed started on {self.node}")

    async def on_stop(self) -> None:
        print(f"t={self.clock.now():4.2f}  feed stopped on {self.node}")

    async def on_receive(self, message: Any) -> Any:
        return self.node


def feed(node: str, clock: FakeClock) -> ChildSpec:
    """The feed, as each node declares it: same lease name, one holder at a time."""
    factory = lambda: Feed(node, clock)  # noqa: E731
    return ChildSpec(factory, id="Feed", names=("feed",), singleton=True, lease=LEASE)


async def main() -> None:
    # Two nodes sharing one backplane: in a cluster that is Redis; here, one object.
    clock, backplane = FakeClock(), InProcessBackplane()
    stop_a = anyio.Event()

    async def node_a(*, task_status: TaskStatus[None]) -> None:
        async with ActorSystem(feed("node a", clock), clock=clock, backplane=backplane):
            task_status.started()
            await stop_a.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(node_a)
        async with ActorSystem(feed("node b", clock), clock=clock, backplane=backplane) as b:
            for _ in range(10):
                await clock.step(0.5)  # a renews its lease; b tries in vain
            print(f"t={clock.now():4.2f}  node b runs a feed: {bool(b.runtime.members('feed'))}")
            stop_a.set()  # node a stops, releasing the lease
            await anyio.wait_all_tasks_blocked()
            await clock.step(LEASE.retry_every)  # b's next try takes it
            print(f"t={clock.now():4.2f}  ask feed -> {await b.ask('feed', 'where?')}")


if __name__ == "__main__":
    anyio.run(main, backend="trio")
