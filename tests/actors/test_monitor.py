"""Monitors: a watcher gets one Down message, with the reason, when a watched actor ends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import Actor, ActorRef, Backoff, Down, DownReason, FakeClock
from actors._monitor import node_of
from supervisor import ActorSystem, Restart
from tests.helpers.tasks import settle

pytestmark = pytest.mark.anyio

NOW = Backoff(minimum=0.0, maximum=0.0)


class Watcher(Actor):
    """Watches what it is told to; collects the Down messages it gets."""

    def __init__(self, downs: list[Down]) -> None:
        self.downs = downs

    async def on_receive(self, message: Any) -> Any:
        match message:
            case ("watch", target):
                self.context.watch(target)
            case ("unwatch", target):
                self.context.unwatch(target)
            case Down():
                self.downs.append(message)
        return None


class Target(Actor):
    """Crashes on "boom", stops itself on "exit"."""

    async def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError("boom")
        if message == "exit":
            self.context.stop()
        return None


async def watching(system: ActorSystem, target: ActorRef | str) -> list[Down]:
    """Start a watcher of ``target``; return the list its Down messages go to."""
    downs: list[Down] = []
    watcher = await system.spawn(lambda: Watcher(downs))
    await watcher.ask(("watch", target))
    return downs


async def test_a_stopped_actor_reports_down_stopped() -> None:
    """Watching by reference: stopping the target sends one Down(STOPPED)."""
    async with ActorSystem() as system:
        target = await system.spawn(Target)
        downs = await watching(system, target)
        target.stop()
        await target.wait_stopped()
        await settle()
        assert downs == [Down(target.address, DownReason.STOPPED)]


async def test_an_actor_that_exits_reports_down_exited_to_watchers_by_address() -> None:
    """Watching by address: an actor that stops itself sends Down(EXITED) to each watcher."""
    async with ActorSystem() as system:
        target = await system.spawn(Target)
        first = await watching(system, target.address)
        second = await watching(system, target.address)
        await target.tell("exit")
        await target.wait_stopped()
        await settle()
        assert first == second == [Down(target.address, DownReason.EXITED)]


async def test_a_crash_that_ends_the_actor_reports_the_error() -> None:
    """A temporary actor that crashes ends with Down(CRASHED) carrying the exception."""
    async with ActorSystem() as system:
        target = await system.spawn(Target, restart=Restart.TEMPORARY)
        downs = await watching(system, target)
        await target.tell("boom")
        await target.wait_stopped()
        await settle()
        (down,) = downs
        assert (down.address, down.reason) == (target.address, DownReason.CRASHED)
        assert isinstance(down.error, RuntimeError)


async def test_a_restart_is_not_an_end_and_unwatch_silences_the_watch() -> None:
    """A restarted actor sends no Down; after unwatch, its stop sends none either."""
    clock = FakeClock()
    async with ActorSystem(clock=clock) as system:
        target = await system.spawn(Target, restart=Restart.PERMANENT, backoff=NOW)
        downs: list[Down] = []
        watcher = await system.spawn(lambda: Watcher(downs))
        await watcher.ask(("watch", target))
        await target.tell("boom")
        await settle()
        assert target.alive
        assert downs == []
        await watcher.ask(("unwatch", target))
        target.stop()
        await target.wait_stopped()
        await settle()
        assert downs == []


async def test_watching_nobody_or_an_ended_actor_reports_down_at_once() -> None:
    """A watch of an unknown address gets Down(NO_ACTOR); of an ended actor, its reason."""
    async with ActorSystem() as system:
        target = await system.spawn(Target)
        target.stop()
        await target.wait_stopped()
        ended = await watching(system, target)
        nobody = await watching(system, "actor:nowhere.1")
        await settle()
        assert ended == [Down(target.address, DownReason.STOPPED)]
        assert nobody == [Down("actor:nowhere.1", DownReason.NO_ACTOR)]


async def test_a_watcher_that_ends_first_leaves_no_watch_behind() -> None:
    """When the watcher stops, the target forgets it (no Down to a dead mailbox, no leak)."""
    async with ActorSystem() as system:
        target = await system.spawn(Target)
        downs: list[Down] = []
        watcher = await system.spawn(lambda: Watcher(downs))
        await watcher.ask(("watch", target))
        assert target._cell.watchers
        watcher.stop()
        await watcher.wait_stopped()
        assert not target._cell.watchers
        target.stop()
        await target.wait_stopped()
        await anyio.wait_all_tasks_blocked()
        assert downs == []


@pytest.mark.parametrize(
    ("address", "node"),
    [
        ("actor:3fa9c2e1.17", "3fa9c2e1"),
        ("conn:node-a.1", "node-a"),
        ("user:alice", None),
        ("room:lobby", None),
        ("actor:.3", None),
        ("actor:n1.x", None),
        ("all", None),
    ],
)
def test_the_node_of_an_actor_address(address: str, node: str | None) -> None:
    """Actor and connection addresses name their node; names and groups do not."""
    assert node_of(address) == node
