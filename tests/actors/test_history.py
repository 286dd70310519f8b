"""History per address: positions, the recovery decision, the memory log, and recovery
through the runtime (the seam between what was read and what arrives live)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus
from hypothesis import given
from hypothesis import strategies as st

from actors import (
    Actor,
    ActorRef,
    Backplane,
    BackplaneUnavailable,
    FakeClock,
    HistoryRead,
    HistorySpec,
    Instrumentation,
    Node,
    Position,
    Record,
    Recovery,
    RecoveryResult,
    Runtime,
    decide_recovery,
)
from actors._history import MemoryHistory

pytestmark = pytest.mark.anyio

ROOMS = HistorySpec("room:*", size=5, ttl=60.0, meta_ttl=600.0)


# --- positions and specs ------------------------------------------------------------------


def test_a_position_reads_back_what_it_writes() -> None:
    """``EPOCH:OFFSET`` round-trips; the epoch may itself hold a colon."""
    for position in (Position("ab12", 0), Position("x", 17), Position("a:b", 3)):
        assert Position.parse(str(position)) == position


@pytest.mark.parametrize(
    "text",
    ["", "abc", ":5", "abc:", "abc:-1", "abc:1.5", "abc:x", "abc: 1", "abc:٣", "e:" + "9" * 20],
)
def test_a_malformed_position_is_refused_with_the_reason(text: str) -> None:
    """Anything but ``EPOCH:OFFSET`` with a whole, non-negative offset is a ValueError."""
    with pytest.raises(ValueError, match=r"position|epoch|offset"):
        Position.parse(text)


def test_a_negative_offset_is_refused() -> None:
    """Offsets start at 0 ("before the first record")."""
    with pytest.raises(ValueError, match=">= 0"):
        Position("e", -1)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pattern": ""}, "pattern"),
        ({"size": 0}, "size"),
        ({"ttl": 0.0}, "ttl"),
        ({"ttl": 10.0, "meta_ttl": 5.0}, "meta_ttl"),
    ],
)
def test_a_history_spec_checks_its_bounds(options: dict[str, Any], match: str) -> None:
    """An empty pattern, no room, no time, or metadata shorter-lived than records: refused."""
    settings: dict[str, Any] = {"pattern": "room:*", **options}
    with pytest.raises(ValueError, match=match):
        HistorySpec(**settings)


def test_a_spec_matches_the_whole_address() -> None:
    """Shell-style and case-sensitive, on the whole address."""
    assert ROOMS.matches("room:lobby")
    assert not ROOMS.matches("ROOM:lobby")
    assert not ROOMS.matches("user:room:lobby")


# --- the decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "epoch", "last", "first_kept", "expected"),
    [
        (Position("e", 3), None, 0, None, RecoveryResult.EPOCH_CHANGED),
        (Position("e", 3), "f", 9, 4, RecoveryResult.EPOCH_CHANGED),
        (Position("e", 10), "e", 9, None, RecoveryResult.INVALID),
        (Position("e", 9), "e", 9, None, RecoveryResult.RECOVERED),
        (Position("e", 0), "e", 0, None, RecoveryResult.RECOVERED),
        (Position("e", 3), "e", 9, 4, RecoveryResult.RECOVERED),
        (Position("e", 3), "e", 9, 5, RecoveryResult.TRIMMED),
        (Position("e", 3), "e", 9, None, RecoveryResult.TRIMMED),
    ],
)
def test_the_recovery_decision(
    since: Position, epoch: str | None, last: int, first_kept: int | None, expected: RecoveryResult
) -> None:
    """Another epoch, an offset from the future, a hole after the position, or nothing missed."""
    assert decide_recovery(since, epoch, last, first_kept) is expected


# --- the memory log ----------------------------------------------------------------------------


@given(
    st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=0, max_size=40),
    st.integers(min_value=0, max_value=45),
    st.floats(min_value=0.0, max_value=200.0),
)
def test_a_memory_log_replays_exactly_what_followed_or_says_why_not(
    gaps: list[float], since: int, later: float
) -> None:
    """Whatever the timing: a recovery returns every record after ``since``, once and in
    order, exactly when the log still holds them all (size and age); else it says so."""
    history = MemoryHistory()
    now = 0.0
    sent: list[tuple[float, Record]] = []
    for number, gap in enumerate(gaps):
        now += gap
        sent.append((now, history.append("room:a", number, ROOMS, now)))
    assert [r.offset for _, r in sent] == list(range(1, len(sent) + 1))
    assert {r.epoch for _, r in sent} <= {sent[0][1].epoch if sent else ""}
    now += later
    epoch = sent[0][1].epoch if sent else "none"
    read = history.read("room:a", Position(epoch, since), ROOMS, now)
    last = len(sent)
    kept = [r for t, r in sent[-ROOMS.size :] if t >= now - ROOMS.ttl]
    if not sent or now - sent[-1][0] > ROOMS.meta_ttl:
        assert read.result is RecoveryResult.EPOCH_CHANGED
    elif since > last:
        assert read.result is RecoveryResult.INVALID
    elif since == last or (kept and kept[0].offset <= since + 1):
        assert read.result is RecoveryResult.RECOVERED
        assert [r.offset for r in read.records] == list(range(since + 1, last + 1))
        assert [r.message for r in read.records] == list(range(since, last))
    else:
        assert read.result is RecoveryResult.TRIMMED
        assert read.records == ()


def test_an_idle_address_is_forgotten_and_starts_a_new_epoch() -> None:
    """Past ``meta_ttl`` without a message, an address's log goes; the next one starts anew."""
    history = MemoryHistory()
    first = history.append("room:a", "one", ROOMS, 0.0)
    history.sweep(ROOMS.meta_ttl + 1.0)
    assert len(history) == 0
    second = history.append("room:a", "two", ROOMS, ROOMS.meta_ttl + 1.0)
    assert (second.offset, second.epoch != first.epoch) == (1, True)
    read = history.read("room:a", first.position, ROOMS, ROOMS.meta_ttl + 1.0)
    assert read.result is RecoveryResult.EPOCH_CHANGED


# --- through the runtime ------------------------------------------------------------------------


class Counting(Instrumentation):
    """Counts the history events."""

    def __init__(self) -> None:
        self.appended = 0
        self.recoveries: list[tuple[str, int]] = []

    def history_appended(self) -> None:
        self.appended += 1

    def history_recovered(self, result: str, records: int) -> None:
        self.recoveries.append((result, records))


class Recoverer(Actor):
    """Recovers ``address`` from ``since`` when it starts (or joins it without ``since``);
    then collects every record it is handed, recovered or live, in order."""

    def __init__(self, address: str, since: Position | None, got: list[Any]) -> None:
        self.address = address
        self.since = since
        self.got = got
        self.recovery: Recovery | None = None

    async def on_start(self) -> None:
        if self.since is None:
            self.context.join(self.address)
            return
        self.recovery = await self.context.recover(self.address, self.since)
        self.got.append(self.recovery.result)
        self.got.extend(self.recovery.records)

    async def on_receive(self, message: Any) -> Any:
        self.got.append(message)


class Stage:
    """A runtime on a fake clock whose actors run in a task group."""

    def __init__(self, tg: TaskGroup, backplane: Backplane | None = None) -> None:
        self.clock = FakeClock()
        self.counting = Counting()
        self.runtime = Runtime(
            clock=self.clock, backplane=backplane, node_id="n1", instrumentation=self.counting
        )
        self.runtime.add_history(ROOMS)
        self.tg = tg

    async def recoverer(
        self, address: str, since: Position | None = None
    ) -> tuple[ActorRef, list[Any]]:
        """Start a :class:`Recoverer`; return it and what it collects."""
        got: list[Any] = []
        cell = self.runtime.create_cell(lambda: Recoverer(address, since, got))

        async def run(*, task_status: TaskStatus[None]) -> None:
            cell.terminate(await cell.run_incarnation(on_started=task_status.started))

        await self.tg.start(run)
        return cell.ref, got


@asynccontextmanager
async def stage(backplane: Backplane | None = None) -> AsyncIterator[Stage]:
    """Yield a stage; cancel its actors on exit."""
    async with anyio.create_task_group() as tg:
        yield Stage(tg, backplane)
        tg.cancel_scope.cancel()


def offsets(got: list[Any]) -> list[int]:
    """The offsets of the records in ``got``, in order."""
    return [m.offset for m in got if isinstance(m, Record)]


def outcome(got: list[Any]) -> tuple[Any, list[int]]:
    """A recoverer's result, and the offsets of every record it was handed."""
    return got[0], offsets(got)


async def test_members_of_a_history_address_receive_numbered_records() -> None:
    """Sends to ``room:*`` become records numbered 1, 2, 3 in one epoch; other sends stay
    plain; a send nobody hears is kept all the same."""
    async with stage() as s:
        assert not await s.runtime.publish("room:a", "to nobody")
        _, got = await s.recoverer("room:a")
        _, plain = await s.recoverer("lobby")
        await s.runtime.publish("room:a", "one")
        await s.runtime.send("room:a", {"two": 2})
        await s.runtime.publish("lobby", "plain")
        await anyio.wait_all_tasks_blocked()
        assert offsets(got) == [2, 3]
        assert [r.message for r in got] == ["one", {"two": 2}]
        assert {r.epoch for r in got} == {got[0].epoch}
        assert {r.address for r in got} == {"room:a"}
        assert plain == ["plain"]
        assert s.counting.appended == 3


async def test_recovery_hands_over_what_was_missed_then_the_live_records() -> None:
    """From offset 2 of 4: records 3 and 4 come first, then every later one; no gap, no
    duplicate, and the memory history answers without a checkpoint in between."""
    async with stage() as s:
        sent = [s.runtime.send_nowait("room:a", n) for n in range(4)]
        assert sent == [0, 0, 0, 0]
        epoch = s.runtime.memory_history.read(
            "room:a", Position("?", 0), ROOMS, s.clock.now()
        ).epoch
        ref, got = await s.recoverer("room:a", Position(epoch, 2))
        await s.runtime.publish("room:a", "live")
        await anyio.wait_all_tasks_blocked()
        assert got[0] is RecoveryResult.RECOVERED
        assert offsets(got) == [3, 4, 5]
        assert [r.message for r in got[1:]] == [2, 3, "live"]
        assert s.counting.recoveries == [("recovered", 2)]
        assert ref.address in [m.address for m in s.runtime.members("room:a")]


async def test_recovery_says_why_it_cannot_replay() -> None:
    """Trimmed by size, expired by age, another epoch, an offset from the future: the
    actor is told, gets only the live records, and is a member all the same."""
    async with stage() as s:
        for n in range(ROOMS.size + 2):  # 7 records, 5 kept: 1 and 2 are gone
            s.runtime.send_nowait("room:a", n)
        epoch = s.runtime.memory_history.read("room:a", Position("?", 0), ROOMS, 0.0).epoch
        _, trimmed = await s.recoverer("room:a", Position(epoch, 1))
        _, whole = await s.recoverer("room:a", Position(epoch, 2))
        _, other = await s.recoverer("room:a", Position("elsewhen", 7))
        _, ahead = await s.recoverer("room:a", Position(epoch, 8))
        s.clock.advance(ROOMS.ttl + 1)
        _, expired = await s.recoverer("room:a", Position(epoch, 6))
        _, current = await s.recoverer("room:a", Position(epoch, 7))
        await s.runtime.publish("room:a", "live")
        await anyio.wait_all_tasks_blocked()
        assert outcome(trimmed) == (RecoveryResult.TRIMMED, [8])
        assert outcome(whole) == (RecoveryResult.RECOVERED, [3, 4, 5, 6, 7, 8])
        assert outcome(other) == (RecoveryResult.EPOCH_CHANGED, [8])
        assert outcome(ahead) == (RecoveryResult.INVALID, [8])
        assert outcome(expired) == (RecoveryResult.TRIMMED, [8])
        assert outcome(current) == (RecoveryResult.RECOVERED, [8])
        assert [r for r, _ in s.counting.recoveries] == [
            "trimmed",
            "recovered",
            "epoch_changed",
            "invalid",
            "trimmed",
            "recovered",
        ]


async def test_only_addresses_with_history_can_be_recovered() -> None:
    """recover() on an address without history is a ValueError naming it."""
    async with stage() as s:
        cell = s.runtime.create_cell(lambda: Recoverer("x", None, []))
        with pytest.raises(ValueError, match="'lobby' has no history"):
            await s.runtime.recover(cell, "lobby", Position("e", 0))


class HistoryBackplane(Backplane):
    """A backplane that keeps history for "every node" and lets a test decide what
    arrives while a read is in flight, and after it.

    Appends are numbered here and delivered to the node (as Redis does, through
    the subscription); reads answer from what was appended, after running
    ``during_read`` (records that arrive while the read is in flight).
    """

    kind = "test-history"
    keeps_history = True

    def __init__(self) -> None:
        self.node: Node | None = None
        self.log: list[Record] = []
        self.during_read: list[Record] = []
        self.is_up = True

    @property
    def up(self) -> bool:
        return self.is_up

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        self.node = node
        task_status.started()
        await anyio.sleep_forever()

    def subscribe(self, address: str) -> None:
        pass

    def unsubscribe(self, address: str) -> None:
        pass

    async def publish(self, address: str, message: Any) -> int:
        await anyio.lowlevel.checkpoint()
        return 0

    def record(self, address: str, message: Any) -> Record:
        """Number ``message`` without delivering it (it is "in flight")."""
        record = Record(address, "E", len(self.log) + 1, message)
        self.log.append(record)
        return record

    def deliver(self, record: Record) -> None:
        """Let ``record`` arrive at the node (through its "subscription")."""
        assert self.node is not None
        self.node.deliver_remote(record.address, record)

    async def append_history(self, address: str, message: Any, spec: HistorySpec) -> int:
        if not self.is_up:
            raise BackplaneUnavailable(address, "down")
        self.deliver(self.record(address, message))
        await anyio.lowlevel.checkpoint()
        return 0

    async def read_history(self, address: str, since: Position, spec: HistorySpec) -> HistoryRead:
        if not self.is_up:
            raise BackplaneUnavailable(address, "down")
        await anyio.lowlevel.checkpoint()
        for record in self.during_read:
            self.deliver(record)
        last = len(self.log)
        return HistoryRead(
            decide_recovery(since, "E", last, since.offset + 1 if since.offset < last else None),
            "E",
            last,
            tuple(self.log[since.offset :]),
        )


async def test_records_arriving_around_the_read_are_handed_over_once_and_in_order() -> None:
    """The seam: records that arrive while the history is read (some also in the read)
    follow the missed ones once; a late copy of a record read already is dropped once;
    the next new record flows through."""
    backplane = HistoryBackplane()
    async with stage(backplane) as s:
        await s.tg.start(s.runtime.run)
        for n in range(3):
            await s.runtime.send("room:a", n)  # 1-3, before the client came back
        in_flight = backplane.record("room:a", 3)  # 4: published, in the read, arrives late
        during = backplane.record("room:a", 4)  # 5: in the read, and arrives during it
        backplane.during_read = [during]
        _, got = await s.recoverer("room:a", Position("E", 1))
        after = backplane.record("room:a", 5)  # 6: published after the read
        backplane.deliver(during)  # another late copy
        backplane.deliver(in_flight)
        backplane.deliver(after)
        backplane.deliver(after)  # a copy of a live one is not the runtime's business
        await anyio.wait_all_tasks_blocked()
        assert got[0] is RecoveryResult.RECOVERED
        assert offsets(got) == [2, 3, 4, 5, 6, 6]


async def test_with_the_backplane_down_recovery_is_unavailable_and_sends_fail() -> None:
    """No history store: recovery says ``unavailable`` (the actor still joins) and a send
    to a history address reaches nobody, not even here (it would have no offset)."""
    backplane = HistoryBackplane()
    async with stage(backplane) as s:
        await s.tg.start(s.runtime.run)
        backplane.is_up = False
        ref, got = await s.recoverer("room:a", Position("E", 0))
        with pytest.raises(BackplaneUnavailable):
            await s.runtime.send("room:a", "lost")
        await anyio.wait_all_tasks_blocked()
        assert got == [RecoveryResult.UNAVAILABLE]
        assert [m.address for m in s.runtime.members("room:a")] == [ref.address]
        assert s.counting.recoveries == [("unavailable", 0)]


async def test_a_remote_backplane_without_history_refuses_history() -> None:
    """Several nodes numbering on their own would disagree: add_history() refuses."""

    class Plain(HistoryBackplane):
        keeps_history = False

    runtime = Runtime(backplane=Plain())
    with pytest.raises(ValueError, match="keeps no history"):
        runtime.add_history(ROOMS)
