"""Tests for the runtime: addresses, names, groups, routing and the backplane seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from actors import (
    ALL,
    Actor,
    ActorRef,
    AmbiguousAddress,
    Backplane,
    BackplaneUnavailable,
    DeadLetter,
    Delivery,
    FakeClock,
    InProcessBackplane,
    Instrumentation,
    MailboxConfig,
    MailboxFull,
    Node,
    NoRecipient,
    Runtime,
)
from actors._actor import Exit, ExitKind

pytestmark = pytest.mark.anyio


class Inbox(Actor):
    """Collects every message it receives; joins the groups and names it is given."""

    def __init__(self, got: list[Any], joins: tuple[str, ...] = ()) -> None:
        self.got = got
        self.joins = joins

    async def on_start(self) -> None:
        for address in self.joins:
            self.context.join(address)

    async def on_receive(self, message: Any) -> Any:
        self.got.append(message)
        return message


class Stage:
    """A runtime on a fake clock whose actors run in a task group until stopped."""

    def __init__(self, tg: TaskGroup, backplane: Backplane | None = None) -> None:
        self.clock = FakeClock()
        self.runtime = Runtime(clock=self.clock, backplane=backplane, node_id="n1")
        self.tg = tg
        self.letters: list[DeadLetter] = []
        self.runtime.dead_letters.subscribe(self.letters.append)
        self.refs: list[ActorRef] = []

    async def spawn(
        self, factory: Callable[[], Actor], *, mailbox: MailboxConfig | None = None
    ) -> ActorRef:
        """Start an actor (one incarnation) and wait for its ``started`` hook."""
        cell = self.runtime.create_cell(factory, mailbox=mailbox)

        async def run(*, task_status: TaskStatus[None]) -> None:
            exit_ = await cell.run_incarnation(on_started=task_status.started)
            cell.terminate(exit_)

        await self.tg.start(run)
        self.refs.append(cell.ref)
        return cell.ref

    async def inbox(
        self, *joins: str, mailbox: MailboxConfig | None = None
    ) -> tuple[ActorRef, list[Any]]:
        """Start an Inbox that joins ``joins``; return it and what it will receive."""
        got: list[Any] = []
        ref = await self.spawn(lambda: Inbox(got, joins), mailbox=mailbox)
        return ref, got

    def reasons(self) -> list[str]:
        """The reasons of the dead letters posted so far."""
        return [letter.reason for letter in self.letters]


@asynccontextmanager
async def stage(backplane: Backplane | None = None) -> AsyncIterator[Stage]:
    """Yield a stage; stop every actor on exit."""
    async with anyio.create_task_group() as tg:
        st = Stage(tg, backplane)
        yield st
        for ref in st.refs:
            ref.stop()


# --- addresses -----------------------------------------------------------------------------


async def test_every_actor_gets_a_unique_address_on_this_node() -> None:
    """Addresses are ``<prefix>:<node>.<n>``, distinct, and resolve to their actor."""
    async with stage() as st:
        refs = [(await st.inbox())[0] for _ in range(20)]
        addresses = [r.address for r in refs]
        assert len(set(addresses)) == 20
        assert all(a.startswith("actor:n1.") for a in addresses)
        assert [st.runtime.lookup(a) for a in addresses] == refs
        assert [st.runtime.members(a) for a in addresses] == [[r] for r in refs]
        cell = st.runtime.create_cell(Actor, prefix="conn", kind="connection")
        assert cell.address.startswith("conn:n1.")
        assert st.runtime.statistics().actors == {"service": 20, "connection": 1}
        cell.terminate(Exit(ExitKind.STOPPED))
        assert st.runtime.lookup(cell.address) is None


def test_default_node_id_is_random_hex() -> None:
    """Without a node id each runtime picks its own 8-hex-digit one."""
    a, b = Runtime(), Runtime()
    assert a.node_id != b.node_id
    assert len(a.node_id) == 8
    int(a.node_id, 16)
    assert isinstance(a.backplane, InProcessBackplane)


async def test_register_a_name_with_several_members() -> None:
    """Several actors may answer to one name; ``members`` lists them all."""
    async with stage() as st:
        (a, got_a), (b, got_b), (_, got_c) = [await st.inbox() for _ in range(3)]
        a._cell.behaviour.context.register("user:42")  # type: ignore[union-attr]
        b._cell.behaviour.context.register("user:42")  # type: ignore[union-attr]
        assert set(st.runtime.members("user:42")) == {a, b}
        await st.runtime.send("user:42", "hello")
        await anyio.wait_all_tasks_blocked()
        assert (got_a, got_b, got_c) == (["hello"], ["hello"], [])
        a._cell.behaviour.context.unregister("user:42")  # type: ignore[union-attr]
        assert st.runtime.members("user:42") == [b]


async def test_join_and_leave_groups() -> None:
    """Joining adds the actor to a group; leaving removes it, and an empty group vanishes."""
    async with stage() as st:
        base = st.runtime.statistics().addresses
        a, _ = await st.inbox("room:1", "room:2")
        b, _ = await st.inbox("room:1")
        assert set(st.runtime.members("room:1")) == {a, b}
        assert st.runtime.members("room:2") == [a]
        assert st.runtime.statistics().addresses == base + 4
        context = a._cell.behaviour.context  # type: ignore[union-attr]
        context.leave("room:2")
        context.leave("room:2")  # leaving twice is harmless
        context.leave("never-joined")
        assert st.runtime.members("room:2") == []
        assert st.runtime.statistics().addresses == base + 3
        context.join("room:1")  # joining twice keeps one membership
        assert sorted(r.address for r in st.runtime.members("room:1")) == sorted(
            [a.address, b.address]
        )


async def test_names_and_groups_are_removed_when_an_actor_stops() -> None:
    """Stopping an actor removes its own address, its names and its groups."""
    async with stage() as st:
        baseline = st.runtime.statistics()
        a, _ = await st.inbox("room:1", ALL)
        b, _ = await st.inbox("room:1")
        a._cell.behaviour.context.register("user:7")  # type: ignore[union-attr]
        assert st.runtime.statistics().addresses == baseline.addresses + 5
        a.stop()
        await a.wait_stopped()
        assert st.runtime.members("room:1") == [b]
        assert st.runtime.members("user:7") == []
        assert st.runtime.members(ALL) == []
        assert st.runtime.lookup(a.address) is None
        b.stop()
        await b.wait_stopped()
        stats = st.runtime.statistics()
        assert stats.addresses == baseline.addresses
        assert stats.actors == baseline.actors


async def test_a_terminated_actor_cannot_join() -> None:
    """Adding a stopped actor to a group is ignored, so no address can leak."""
    async with stage() as st:
        a, _ = await st.inbox()
        cell = a._cell
        a.stop()
        await a.wait_stopped()
        st.runtime.add_member("room:late", cell)
        assert st.runtime.members("room:late") == []
        assert st.runtime.statistics().addresses == 0


async def test_presence_events_reach_the_members_of_an_opted_in_group_only() -> None:
    """Joins (again with new metadata) and leaves of ``room:*`` reach its members, the
    joining one included; another group, names and own addresses get nothing."""
    async with stage() as st:
        st.runtime.add_presence_events("room:*")
        a, got_a = await st.inbox("room:1", "chan:1")
        b, got_b = await st.inbox("chan:1")
        context = b._cell.behaviour.context  # type: ignore[union-attr]
        context.register("user:b")
        context.join("room:1", meta={"user": "b"})
        context.join("room:1", meta={"user": "b"})  # the same again: no event
        context.join("room:1", meta={"user": "B"})
        context.leave("room:1")
        with anyio.fail_after(5):
            while len(got_a) < 4 or len(got_b) < 2:
                await anyio.lowlevel.checkpoint()

        def event(kind: str, who: ActorRef, meta: Any) -> dict[str, Any]:
            return {
                "type": "presence",
                "address": "room:1",
                "event": kind,
                "member": who.address,
                "meta": meta,
            }

        assert got_a == [
            event("join", a, None),
            event("join", b, {"user": "b"}),
            event("join", b, {"user": "B"}),
            event("leave", b, {"user": "B"}),
        ]
        assert got_b == [event("join", b, {"user": "b"}), event("join", b, {"user": "B"})]


@pytest.mark.parametrize("pattern", ["", ALL])
def test_presence_events_need_a_pattern_of_names_or_groups(pattern: str) -> None:
    """An empty pattern or ``all`` is refused, naming what was given."""
    with pytest.raises(ValueError, match="presence events need a pattern"):
        Runtime().add_presence_events(pattern)


# --- sending -------------------------------------------------------------------------------


async def test_send_to_an_actor_address() -> None:
    """``send`` to an actor's own address reaches that actor only."""
    async with stage() as st:
        a, got_a = await st.inbox()
        _, got_b = await st.inbox()
        await st.runtime.send(a.address, 1)
        assert st.runtime.send_nowait(a.address, 2) == 1
        await anyio.wait_all_tasks_blocked()
        assert (got_a, got_b) == ([1, 2], [])


async def test_publish_to_a_group_reaches_its_members_only() -> None:
    """``publish`` delivers to every member of the group and nobody else."""
    async with stage() as st:
        _, got_a = await st.inbox("room:lobby")
        _, got_b = await st.inbox("room:lobby")
        _, got_c = await st.inbox("room:other")
        await st.runtime.publish("room:lobby", "hi")
        await anyio.wait_all_tasks_blocked()
        assert (got_a, got_b, got_c) == (["hi"], ["hi"], [])


async def test_broadcast_reaches_members_of_all_only() -> None:
    """``broadcast`` reaches exactly the actors that joined the ``all`` group."""
    async with stage() as st:
        _, got_a = await st.inbox(ALL)
        _, got_b = await st.inbox(ALL, "room:1")
        _, got_c = await st.inbox("room:1")
        await st.runtime.broadcast("news")
        await anyio.wait_all_tasks_blocked()
        assert (got_a, got_b, got_c) == (["news"], ["news"], [])
        assert ALL == "all"


async def test_send_to_an_unknown_address_is_a_no_recipient_dead_letter() -> None:
    """A message to an address nobody answers to becomes a ``no_recipient`` dead letter,
    and the send says it reached nobody."""
    async with stage() as st:
        delivery = await st.runtime.send("user:nobody", "lost")
        assert delivery == Delivery(0, False)
        assert not delivery
        assert not delivery.reached
        assert st.runtime.send_nowait("actor:n1.999", "gone") == 0
        assert [(d.address, d.message, d.reason) for d in st.letters] == [
            ("user:nobody", "lost", "no_recipient"),
            ("actor:n1.999", "gone", "no_recipient"),
        ]
        assert st.runtime.statistics().dead_letters["no_recipient"] == 2


class EmptyGroups(Instrumentation):
    """Counts publishes that found an empty group."""

    def __init__(self) -> None:
        self.empty = 0

    def published_to_empty_group(self) -> None:
        self.empty += 1


async def test_publishing_to_an_empty_group_is_counted_apart_not_a_dead_letter() -> None:
    """A publish or broadcast with no member is no dead letter: it is counted on its own."""
    counting = EmptyGroups()
    runtime = Runtime(node_id="n1", instrumentation=counting)
    letters: list[DeadLetter] = []
    runtime.dead_letters.subscribe(letters.append)
    assert await runtime.publish("room:empty", "tick") == Delivery(0, False)
    assert await runtime.broadcast("news") == Delivery(0, False)
    assert letters == []
    assert counting.empty == 2
    assert runtime.statistics().dead_letters["no_recipient"] == 0


async def test_sends_report_how_many_local_actors_they_reached() -> None:
    """send, publish and broadcast return the local count; one recipient counts once."""
    async with stage() as st:
        ref, _ = await st.inbox("room:1", ALL)
        await st.inbox("room:1", ALL)
        assert await st.runtime.publish("room:1", "hi") == Delivery(2, False)
        assert await st.runtime.broadcast("all") == Delivery(2, False)
        one = await st.runtime.send(ref.address, "you")
        assert one == Delivery(1, False)
        assert one
        assert one.reached
        assert st.letters == []


async def test_send_to_a_single_member_waits_for_space_under_block() -> None:
    """With one recipient, ``send`` waits for mailbox space (up to its timeout)."""
    gate = anyio.Event()

    class Slow(Actor):
        async def on_receive(self, message: Any) -> None:
            await gate.wait()

    async with stage() as st:
        ref = await st.spawn(Slow, mailbox=MailboxConfig(1))
        await st.runtime.send(ref.address, "busy")
        await anyio.wait_all_tasks_blocked()
        await st.runtime.send(ref.address, "queued")
        sent: list[str] = []

        async def sender() -> None:
            await st.runtime.send(ref.address, "waits")
            sent.append("waits")

        st.tg.start_soon(sender)
        await anyio.wait_all_tasks_blocked()
        assert sent == []
        with pytest.raises(MailboxFull):
            await _send_with_timeout(st, ref.address)
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert sent == ["waits"]


async def _send_with_timeout(st: Stage, address: str) -> None:
    """Send with a 1 s timeout and let the fake clock run it out."""
    async with anyio.create_task_group() as tg:
        failures: list[BaseException] = []

        async def sender() -> None:
            try:
                await st.runtime.send(address, "times out", timeout=1.0)
            except MailboxFull as exc:
                failures.append(exc)

        tg.start_soon(sender)
        await anyio.wait_all_tasks_blocked()
        await st.clock.step(1.0)
    raise failures[0]


async def test_fan_out_to_a_full_block_member_drops_for_that_member_only() -> None:
    """A group send never waits: a full ``block`` member loses the message, the others get it."""
    gate = anyio.Event()
    got_slow: list[Any] = []

    class Slow(Actor):
        async def on_start(self) -> None:
            self.context.join("room")

        async def on_receive(self, message: Any) -> None:
            await gate.wait()
            got_slow.append(message)

    async with stage() as st:
        slow = await st.spawn(Slow, mailbox=MailboxConfig(1))
        _, got_fast = await st.inbox("room")
        await st.runtime.publish("room", 1)  # slow takes it and blocks
        await anyio.wait_all_tasks_blocked()
        await st.runtime.publish("room", 2)  # queued: slow's mailbox is now full
        await st.runtime.publish("room", 3)  # no space at slow: dropped there
        assert st.runtime.send_nowait("room", 4) == 1
        await anyio.wait_all_tasks_blocked()
        assert got_fast == [1, 2, 3, 4]
        assert slow.statistics().dropped == {"block_timeout": 2}
        assert [(d.message, d.reason, d.detail) for d in st.letters] == [
            (3, "dropped", "block_timeout"),
            (4, "dropped", "block_timeout"),
        ]
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert got_slow == [1, 2]


async def test_fan_out_skips_a_member_that_just_stopped() -> None:
    """A member whose mailbox is closed is skipped without failing the send."""
    async with stage() as st:
        a, _ = await st.inbox("room")
        _, got_b = await st.inbox("room")
        a._cell.mailbox.close()  # closed but not yet removed from the group
        assert st.runtime.send_nowait("room", "x") == 1
        await anyio.wait_all_tasks_blocked()
        assert got_b == ["x"]


async def test_context_sends_to_any_address() -> None:
    """An actor reaches others through its context: send, publish, broadcast and ask."""
    async with stage() as st:
        target, got = await st.inbox("group", ALL)

        class Relay(Actor):
            async def on_receive(self, message: Any) -> Any:
                ctx = self.context
                await ctx.send(target.address, "direct")
                await ctx.publish("group", "grouped")
                await ctx.broadcast("everyone")
                return await ctx.ask(target.address, "asked")

        relay = await st.spawn(Relay)
        assert await relay.ask("go") == "asked"
        assert got == ["direct", "grouped", "everyone", "asked"]


# --- ask -----------------------------------------------------------------------------------


async def test_ask_by_address() -> None:
    """``Runtime.ask`` returns the reply of the one actor at the address."""
    async with stage() as st:
        ref, _ = await st.inbox()
        ref._cell.behaviour.context.register("svc")  # type: ignore[union-attr]
        assert await st.runtime.ask("svc", "q") == "q"
        assert await st.runtime.ask(ref.address, "r") == "r"


async def test_ask_to_an_ambiguous_address_raises() -> None:
    """Asking an address with several members raises AmbiguousAddress and sends nothing."""
    async with stage() as st:
        _, got_a = await st.inbox("room")
        _, got_b = await st.inbox("room")
        with pytest.raises(AmbiguousAddress) as info:
            await st.runtime.ask("room", "who?")
        assert (info.value.address, info.value.members) == ("room", 2)
        assert got_a == got_b == []


async def test_ask_to_nobody_raises_no_recipient() -> None:
    """Asking an address with no member raises NoRecipient."""
    async with stage() as st:
        with pytest.raises(NoRecipient) as info:
            await st.runtime.ask("user:ghost", "anyone?")
        assert info.value.address == "user:ghost"


# --- statistics ----------------------------------------------------------------------------


async def test_statistics_count_actors_addresses_queued_messages_and_dead_letters() -> None:
    """The runtime snapshot counts actors by kind, addresses, queued messages, dead letters."""
    gate = anyio.Event()

    class Slow(Actor):
        async def on_receive(self, message: Any) -> None:
            await gate.wait()

    async with stage() as st:
        ref = await st.spawn(Slow)
        for i in range(4):
            await ref.tell(i)
        await anyio.wait_all_tasks_blocked()
        await st.runtime.send("nowhere", "x")
        stats = st.runtime.statistics()
        assert stats.actors == {"service": 1}
        assert stats.addresses == 1
        assert stats.mailbox_messages == 3
        assert stats.dead_letters["no_recipient"] == 1
        assert set(stats.dead_letters) >= {"dropped", "failed", "stopped", "backplane_down"}
        gate.set()


# --- backplane -----------------------------------------------------------------------------


class FakeBackplane(Backplane):
    """A remote backplane that records what the runtime asks of it."""

    kind = "fake"
    remote = True

    def __init__(self) -> None:
        self.is_up = True
        self.reach = 1
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.published: list[tuple[str, Any]] = []
        self.node: Node | None = None

    @property
    def up(self) -> bool:
        return self.is_up

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        self.node = node
        node.backplane_state_changed(True)
        task_status.started()
        await anyio.sleep_forever()

    def subscribe(self, address: str) -> None:
        self.subscribed.append(address)

    def unsubscribe(self, address: str) -> None:
        self.unsubscribed.append(address)

    async def publish(self, address: str, message: Any) -> int:
        await anyio.lowlevel.checkpoint()
        if not self.is_up:
            raise BackplaneUnavailable(address, "test says down")
        self.published.append((address, message))
        return self.reach


async def test_in_process_backplane_is_local_only() -> None:
    """The default backplane is always up, reaches no other node and runs until cancelled."""
    backplane = InProcessBackplane()
    assert backplane.up
    assert not backplane.remote
    assert await backplane.publish("x", 1) == 0
    async with anyio.create_task_group() as tg:
        await tg.start(Runtime(backplane=backplane).run)
        tg.cancel_scope.cancel()


async def test_remote_backplane_learns_which_addresses_have_local_members() -> None:
    """An address is subscribed at its first local member and unsubscribed after its last."""
    backplane = FakeBackplane()
    async with stage(backplane) as st:
        a, _ = await st.inbox("room")
        b, _ = await st.inbox("room")
        assert backplane.subscribed == [a.address, "room", b.address]
        a.stop()
        await a.wait_stopped()
        assert backplane.unsubscribed == [a.address]
        b.stop()
        await b.wait_stopped()
        assert sorted(backplane.unsubscribed) == sorted([a.address, b.address, "room"])


async def test_an_ending_actor_leaves_its_own_address_all_and_its_groups_alike() -> None:
    """An actor's end frees its own address and ``all`` as ``remove_member`` would, and
    tells the backplane it left its groups only (its own address and ``all`` carry
    no presence)."""

    class Leaving(FakeBackplane):
        def __init__(self) -> None:
            super().__init__()
            self.left: list[tuple[str, str]] = []

        def member_left(self, address: str, member: str) -> None:
            self.left.append((address, member))

    backplane = Leaving()
    async with stage(backplane) as st:
        a, _ = await st.inbox("room", ALL)
        b, _ = await st.inbox(ALL)
        a.stop()
        await a.wait_stopped()
        assert backplane.left == [("room", a.address)]
        assert sorted(backplane.unsubscribed) == sorted([a.address, "room"])
        assert st.runtime.members(ALL) == [b]
        assert a._cell.memberships == set()
        b.stop()
        await b.wait_stopped()
        assert sorted(backplane.unsubscribed) == sorted([a.address, "room", b.address, ALL])
        assert backplane.left == [("room", a.address)]
        assert st.runtime.statistics().addresses == 0


async def test_the_monitor_task_sleeps_when_there_is_nothing_to_check() -> None:
    """With a node check interval but no remote watch and no presence events, the
    monitor task waits for posts once the first interval has passed, instead of
    waking at an instant deadline over and over (which never lets tasks block)."""

    class Checked(FakeBackplane):
        node_check_interval = 1.0

    clock = FakeClock()
    runtime = Runtime(backplane=Checked(), clock=clock, node_id="n1")
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run_monitors)
        with anyio.fail_after(5):  # a spinning task never lets step() return
            await clock.step(5.0)
        tg.cancel_scope.cancel()


async def test_presence_events_added_while_the_monitor_task_sleeps_are_checked() -> None:
    """A presence pattern added after the monitor task went to sleep with nothing to
    check wakes it: the survivors' sweep of dead nodes runs at the next interval."""

    class Checked(FakeBackplane):
        node_check_interval = 1.0

        def __init__(self) -> None:
            super().__init__()
            self.checks = 0

        async def live_nodes(self) -> set[str]:
            self.checks += 1
            await anyio.lowlevel.checkpoint()
            return {"n1"}

    clock = FakeClock()
    backplane = Checked()
    runtime = Runtime(backplane=backplane, clock=clock, node_id="n1")
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run_monitors)
        with anyio.fail_after(5):
            await clock.step(3.0)
        assert backplane.checks == 0  # nothing to check yet: asleep
        runtime.add_presence_events("room:*")
        with anyio.fail_after(5):
            await clock.step(3.0)
        assert backplane.checks >= 1
        tg.cancel_scope.cancel()


async def test_a_receiver_takes_what_other_nodes_send_to_its_address() -> None:
    """``add_receiver`` subscribes the address and hands it, in order and synchronously,
    what arrives from other nodes; members of other addresses are untouched; a second
    receiver of one address is refused; ``remove_receiver`` unsubscribes."""
    backplane = FakeBackplane()
    async with stage(backplane) as st:
        got: list[Any] = []
        st.runtime.add_receiver("node:endpoint", got.append)
        assert backplane.subscribed == ["node:endpoint"]
        with pytest.raises(ValueError, match="has a receiver already"):
            st.runtime.add_receiver("node:endpoint", got.append)
        ref, inbox = await st.inbox("room")
        assert st.runtime.deliver_remote("node:endpoint", {"n": 1}) == 1
        assert st.runtime.deliver_remote("node:endpoint", "two") == 1
        assert st.runtime.deliver_remote("room", "for the room") == 1
        await anyio.wait_all_tasks_blocked()
        assert got == [{"n": 1}, "two"]
        assert inbox == ["for the room"]
        st.runtime.remove_receiver("node:endpoint")
        assert backplane.unsubscribed == ["node:endpoint"]
        assert st.runtime.deliver_remote("node:endpoint", "late") == 0
        assert got == [{"n": 1}, "two"]
        del ref


async def test_remote_send_publishes_and_delivers_locally() -> None:
    """With other nodes, a send reaches local members and is also published to the backplane."""
    backplane = FakeBackplane()
    async with stage(backplane) as st:
        await st.tg.start(st.runtime.run)
        assert backplane.node is st.runtime
        ref, got = await st.inbox("room")
        assert await st.runtime.send("room", "hello") == Delivery(1, True)
        await st.runtime.send(ref.address, "direct")
        await anyio.wait_all_tasks_blocked()
        assert got == ["hello", "direct"]
        assert backplane.published == [("room", "hello"), (ref.address, "direct")]
        # Nobody here and nobody there: a dead letter.
        backplane.reach = 0
        await st.runtime.send("room:empty", "lost")
        assert st.reasons() == ["no_recipient"]
        # No local member but another node took it: not a dead letter.
        backplane.reach = 1
        assert await st.runtime.send("room:remote", "fine") == Delivery(0, True)
        assert st.reasons() == ["no_recipient"]
        # send_nowait does not reach other nodes, and does not dead-letter what it cannot know.
        assert st.runtime.send_nowait("room:remote", "local only") == 0
        assert st.reasons() == ["no_recipient"]
        st.tg.cancel_scope.cancel()


async def test_backplane_down_fails_fast_but_local_members_still_get_the_message() -> None:
    """When the backplane is down a send raises BackplaneUnavailable after local delivery."""
    backplane = FakeBackplane()
    async with stage(backplane) as st:
        _, got = await st.inbox("room")
        backplane.is_up = False
        with pytest.raises(BackplaneUnavailable) as info:
            await st.runtime.send("room", "partial")
        assert info.value.address == "room"
        await anyio.wait_all_tasks_blocked()
        assert got == ["partial"]
        assert st.reasons() == ["backplane_down"]


async def test_deliver_remote_reaches_local_members_only() -> None:
    """A message arriving from another node is delivered locally and never re-published."""
    backplane = FakeBackplane()
    async with stage(backplane) as st:
        _, got_a = await st.inbox("room")
        _, got_b = await st.inbox("room")
        assert st.runtime.deliver_remote("room", "from afar") == 2
        assert st.runtime.deliver_remote("room:none", "nobody") == 0
        await anyio.wait_all_tasks_blocked()
        assert got_a == got_b == ["from afar"]
        assert backplane.published == []
        assert st.letters == []
