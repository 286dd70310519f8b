# examples/extending/two_nodes.py
"""Two nodes in one process, joined by a backplane of our own; an instrumentation counts."""

from collections import Counter
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from actors import Actor, BackplaneUnavailable
from supervisor import ActorSystem
from supervisor.lowlevel import Backplane, Instrumentation, Node

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Hub:
    """Stands in for a broker (Redis, NATS, ...): the nodes, and who listens to what."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.listeners: dict[str, set[str]] = {}  # address -> ids of nodes with members
        self.reachable = True


class HubBackplane(Backplane):
    """Carries sends between the nodes of one Hub."""

    kind = "hub"
    remote = True  # other nodes may exist: the runtime hands every send to publish()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.node_id = ""

    @property
    def up(self) -> bool:
        return self.hub.reachable

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        self.node_id = node.node_id
        self.hub.nodes[self.node_id] = node
        task_status.started()  # sends may go out from now on
        try:
            await anyio.sleep_forever()
        finally:
            del self.hub.nodes[self.node_id]  # a stopped node gets nothing more
            for ids in self.hub.listeners.values():
                ids.discard(self.node_id)

    def subscribe(self, address: str) -> None:
        self.hub.listeners.setdefault(address, set()).add(self.node_id)

    def unsubscribe(self, address: str) -> None:
        self.hub.listeners.get(address, set()).discard(self.node_id)

    async def publish(self, address: str, message: Any) -> int:
        if not self.hub.reachable:
            raise BackplaneUnavailable(address, "hub unreachable")  # fail fast, never buffer
        await anyio.lowlevel.checkpoint()
        others = sorted(self.hub.listeners.get(address, set()) - {self.node_id})
        for node_id in others:
            self.hub.nodes[node_id].deliver_remote(address, message)
        return len(others)

    async def live_nodes(self) -> set[str]:
        await anyio.lowlevel.checkpoint()
        return set(self.hub.nodes)


class Tally(Instrumentation):
    """Counts a few runtime events, where a statsd or OpenTelemetry client would send them."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()

    def backplane_message(self, direction: str) -> None:
        self.events[f"backplane {direction}"] += 1

    def message_processed(self, kind: str, wait: float, duration: float) -> None:
        self.events[f"{kind} message"] += 1

    def dead_letter(self, reason: str) -> None:
        self.events[f"dead letter {reason}"] += 1


class Member(Actor):
    """Joins the lobby and prints what reaches it."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def on_start(self) -> None:
        self.context.join("room:lobby")

    async def on_receive(self, message: Any) -> None:
        if message != "sync":
            print(f"  {self.name} got {message!r}")


async def main() -> None:
    hub, tally_a, tally_b = Hub(), Tally(), Tally()
    node_a = ActorSystem(backplane=HubBackplane(hub), node_id="a", instrumentation=tally_a)
    node_b = ActorSystem(backplane=HubBackplane(hub), node_id="b", instrumentation=tally_b)
    async with node_a as a, node_b as b:
        print(f"live nodes: {sorted(await a.runtime.backplane.live_nodes())}")
        alice = await a.spawn(lambda: Member("alice on a"))
        bob = await b.spawn(lambda: Member("bob on b"))

        delivery = await a.publish("room:lobby", "hello from a")
        await alice.ask("sync")
        await bob.ask("sync")  # after "hello": one mailbox, in order
        print(f"a's publish: local={delivery.local} remote={delivery.remote}")

        hub.reachable = False
        try:
            await b.publish("room:lobby", "during the outage")
        except BackplaneUnavailable as exc:
            print(f"b's publish: {exc}")
        await bob.ask("sync")
        hub.reachable = True

    print(f"node a counted: {dict(sorted(tally_a.events.items()))}")
    print(f"node b counted: {dict(sorted(tally_b.events.items()))}")


if __name__ == "__main__":
    anyio.run(main)
