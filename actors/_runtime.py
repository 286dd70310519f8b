"""The runtime: addresses, names, groups and message routing for one node.

Theory of operation: the runtime maps every address to the local cells that
answer to it. An actor's own address (``actor:<node>.<n>``) has one member;
names and groups are addresses with any number of members, kept in the same
table and removed when their last member leaves or stops. A send delivers to
the local members directly and, when the backplane reaches other nodes, also
publishes the message there. Every send returns a :class:`Delivery`: how many
local actors took the message and whether other nodes were reached. A send to
an address nobody answers to is a dead letter (``no_recipient``); a publish to
a group with no members is not (a group may well be empty): it is counted apart
and logged at DEBUG.

Addresses that match a history pattern (:meth:`Runtime.add_history`) take a
different path: each send is stamped with the next offset of the address (in
this process's :class:`~actors._history.MemoryHistory`, or by a backplane
that keeps history for every node) and members receive a
:class:`~actors.Record`. :meth:`Runtime.recover` closes the race between
joining an address and reading its history: it joins first and holds the
records that arrive for the recovering actor meanwhile, reads the history,
then hands over the missed records followed by the held ones that came after
them; a record that was read and still arrives later is dropped once.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from ._actor import Actor, ActorRef, Cell, Envelope, Reply
from ._backplane import Backplane, InProcessBackplane
from ._clock import Clock, MonotonicClock
from ._deadletters import DeadLetter, DeadLetterOffice
from ._exceptions import (
    AmbiguousAddress,
    AskTimeout,
    BackplaneUnavailable,
    MailboxFull,
    NoRecipient,
)
from ._history import HistorySpec, MemoryHistory, Position, Record, Recovery, RecoveryResult
from ._instrument import Instrumentation
from ._mailbox import MailboxConfig
from ._monitor import WIRE_KEY, Down, DownReason, node_of, wire_down, wire_unwatch, wire_watch
from ._timers import TimerService

__all__ = ["ALL", "Delivery", "Runtime", "RuntimeStatistics"]

ALL = "all"
"""The group every broadcast reaches. Connection actors join it automatically."""

_log = structlog.get_logger("wsup.actors")

_HISTORY_CACHE = 4096
"""Addresses whose history spec (or lack of one) is remembered at once."""
_NO_SPEC = HistorySpec("\x00")  # "not looked up yet" in the cache (no address matches it)


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A snapshot of one runtime.

    Attributes:
        actors: live actors by kind.
        addresses: addresses (own, names, groups) with at least one local member.
        mailbox_messages: messages queued in all mailboxes.
        dead_letters: dead letters by reason.
    """

    actors: MappingProxyType[str, int]
    addresses: int
    mailbox_messages: int
    dead_letters: MappingProxyType[str, int]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one send, publish or broadcast reached.

    True when it reached anyone (``if await app.send(...):``).

    Attributes:
        local: how many actors on this node took the message.
        remote: whether the backplane delivered it to at least one other node
            (always False on a single node).
    """

    local: int
    remote: bool = False

    @property
    def reached(self) -> bool:
        """Whether any actor, here or on another node, got the message."""
        return self.local > 0 or self.remote

    def __bool__(self) -> bool:
        return self.local > 0 or self.remote


_NOBODY = Delivery(0, False)
_ONE = Delivery(1, False)


class Runtime:
    """Routes messages to addresses on this node and, through the backplane, beyond.

    Args:
        backplane: the cross-node transport (default: in-process, single node).
        clock: the time source (default: the monotonic clock).
        instrumentation: receives runtime events (default: none).
        node_id: this node's id in addresses (default: random, 8 hex digits).
    """

    def __init__(
        self,
        *,
        backplane: Backplane | None = None,
        clock: Clock | None = None,
        instrumentation: Instrumentation | None = None,
        node_id: str | None = None,
    ) -> None:
        self.backplane = backplane or InProcessBackplane()
        self.clock: Clock = clock or MonotonicClock()
        self.instrumentation = instrumentation or Instrumentation()
        self.node_id = node_id or secrets.token_hex(4)
        self.dead_letters = DeadLetterOffice(self.clock, self.instrumentation)
        #: Fires the timers of every actor of this runtime (started by ``ActorSystem``).
        self.timers = TimerService(self.clock)
        # Watches of actors on other nodes: target address -> local watcher cells.
        self._remote_watches: dict[str, dict[Cell, None]] = {}
        # Backplane messages posted from synchronous code, sent by run_monitors().
        self._outbox: deque[tuple[str, Any]] = deque()
        self._outbox_wake: anyio.Event | None = None
        # Address -> its local members (in joining order) and their presence metadata.
        self._members: dict[str, dict[Cell, Any]] = {}
        self._cells: dict[str, Cell] = {}
        self._counter = 0
        self._histories: list[HistorySpec] = []
        self._history_cache: dict[str, HistorySpec | None] = {}
        #: The history of this node's addresses, when the backplane keeps none.
        self.memory_history = MemoryHistory()
        # Actors catching up on an address: address -> cell -> its catch-up state.
        self._catchup: dict[str, dict[Cell, _CatchUp]] = {}
        # Presence events: the patterns of the addresses that opted in, a cache of
        # which addresses match, and the events waiting to reach other nodes.
        self._presence_patterns: list[str] = []
        self._presence_cache: dict[str, bool] = {}
        self._presence_out: deque[tuple[str, dict[str, Any]]] = deque()
        # The live nodes at the last check, for presence events (None: not checked yet).
        self._live_seen: set[str] | None = None
        # Address -> the function that takes what other nodes send there (no actor).
        self._receivers: dict[str, Callable[[Any], None]] = {}

    # -- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the backplane until cancelled."""
        if not self.backplane.remote:
            # Nothing to connect to, so it never reports a change: it is up from the start
            # (otherwise every single-node deployment would read as "backplane down").
            self.instrumentation.backplane_state(True)
        await self.backplane.run(self, task_status=task_status)

    def backplane_state_changed(self, up: bool) -> None:
        """Called by the backplane when it goes up or down."""
        self.instrumentation.backplane_state(up)
        if up:
            _log.info("backplane.connected", backplane=self.backplane.kind)
        else:
            _log.error("backplane.disconnected", backplane=self.backplane.kind)

    # -- cells and addresses ---------------------------------------------------

    def create_cell(
        self,
        factory: type[Actor] | Any,
        *,
        mailbox: MailboxConfig | None = None,
        kind: str = "service",
        prefix: str = "actor",
    ) -> Cell:
        """Create a cell with a fresh unique address; its incarnations are run by a supervisor."""
        self._counter += 1
        address = f"{prefix}:{self.node_id}.{self._counter}"
        cell = Cell(self, address, factory, mailbox=mailbox, kind=kind)
        self._cells[address] = cell
        self.add_member(address, cell)
        self.instrumentation.actor_started(kind)
        return cell

    def add_member(self, address: str, cell: Cell, meta: Any = None) -> None:
        """Make ``cell`` answer to ``address`` (a name or group), with presence ``meta``.

        Raises:
            TypeError: ``meta`` is not JSON-serialisable and other nodes may exist.
        """
        if cell.is_terminated:
            return
        members = self._members.get(address)
        if members is None:
            members = self._members[address] = {}
            if self.backplane.remote:
                self.backplane.subscribe(address)
        changed = cell not in members or members[cell] != meta
        members[cell] = meta
        cell.memberships.add(address)
        if changed and address != cell.address and address != ALL:
            if self.backplane.remote:
                self.backplane.member_joined(address, cell.address, meta)
            if self._presence_patterns and self.presence_events_of(address):
                self._presence_event(address, "join", cell.address, meta)

    def remove_member(self, address: str, cell: Cell) -> None:
        """Make ``cell`` stop answering to ``address``."""
        members = self._members.get(address)
        if members is None or cell not in members:
            return
        meta = members.pop(cell)
        cell.memberships.discard(address)
        if address != cell.address and address != ALL:
            if self.backplane.remote:
                self.backplane.member_left(address, cell.address)
            if self._presence_patterns and self.presence_events_of(address):
                self._presence_event(address, "leave", cell.address, meta)
        if self._catchup:
            self._end_catchup(address, cell)
        if not members:
            del self._members[address]
            if self.backplane.remote:
                self.backplane.unsubscribe(address)

    def forget(self, cell: Cell) -> None:
        """Remove a terminated cell from every address (called by ``Cell.terminate``)."""
        own = cell.address
        catchup = self._catchup
        for address in list(cell.memberships):
            if address in (own, ALL) and not catchup:
                # remove_member's work for the addresses every actor (own) or every
                # connection (ALL) has, which tell presence and the backplane
                # nothing: a connection's end, without a call per address.
                members = self._members[address]
                del members[cell]
                if not members:
                    del self._members[address]
                    if self.backplane.remote:
                        self.backplane.unsubscribe(address)
            else:
                self.remove_member(address, cell)
        cell.memberships.clear()
        if self._remote_watches:
            for target in [t for t, w in self._remote_watches.items() if cell in w]:
                self.unwatch_remote(cell, target)
        if self._cells.pop(cell.address, None) is not None:
            self.instrumentation.actor_stopped(cell.kind)

    def add_receiver(self, address: str, receiver: Callable[[Any], None]) -> None:
        """Hand what other nodes send to ``address`` to ``receiver``, synchronously,
        in the order the backplane delivers it: a node-level endpoint with no actor
        and no mailbox (``receiver`` must not block). Local sends do not reach it.

        Raises:
            ValueError: ``address`` has a receiver already.
        """
        if address in self._receivers:
            raise ValueError(f"{address!r} has a receiver already")
        self._receivers[address] = receiver
        if self.backplane.remote:
            self.backplane.subscribe(address)

    def remove_receiver(self, address: str) -> None:
        """Undo :meth:`add_receiver`."""
        if self._receivers.pop(address, None) is not None and self.backplane.remote:
            self.backplane.unsubscribe(address)

    def members(self, address: str) -> list[ActorRef]:
        """Return the local actors that answer to ``address``."""
        return [cell.ref for cell in self._members.get(address, ())]

    async def presence(self, address: str) -> dict[str, Any]:
        """Return every actor that answers to name or group ``address``, on this node
        and every other live one: its own address -> the ``meta`` it joined with.

        Local members come first, in the order they joined. Presence is kept for
        names and groups, not for :data:`ALL` (which every connection joins).
        Cost: local members O(n); with a remote backplane, one query of it.

        Raises:
            ValueError: ``address`` is :data:`ALL`.
            BackplaneUnavailable: the backplane cannot be reached.
        """
        if address == ALL:
            raise ValueError(f"presence is not kept for {ALL!r}: every connection is in it")
        found = {cell.address: meta for cell, meta in self._members.get(address, {}).items()}
        if self.backplane.remote:
            for member, (node, meta) in (await self.backplane.presence(address)).items():
                if node != self.node_id:  # this node's own entries may lag: it knows better
                    found[member] = meta
        else:
            await anyio.lowlevel.checkpoint()
        return found

    # -- presence events -----------------------------------------------------------

    def add_presence_events(self, pattern: str) -> None:
        """Deliver presence events to every address that matches ``pattern`` (``room:*``).

        When an actor joins or leaves such a name or group (or joins it again
        with other metadata), every member of the address, on every node, the
        joining actor included, receives the dict
        ``{"type": "presence", "address": A, "event": "join" | "leave", "member": M,
        "meta": META}`` (``M`` is the actor's own address, ``META`` what it joined with). When a
        node dies without a goodbye, the survivors deliver the leaves of its
        members once its liveness key expires (see ``docs/presence.md``).

        Raises:
            ValueError: an empty pattern, or :data:`ALL` (which keeps no presence).
        """
        if not pattern or pattern == ALL:
            raise ValueError(f"presence events need a pattern of names or groups, not {pattern!r}")
        self._presence_patterns.append(pattern)
        self._presence_cache.clear()
        if self._outbox_wake is not None:  # a sleeping monitor task has a check to make now
            self._outbox_wake.set()

    def presence_events_of(self, address: str) -> bool:
        """Whether ``address`` receives presence events. O(1) for an address seen
        recently, else O(patterns)."""
        cache = self._presence_cache
        found = cache.get(address)
        if found is None:
            found = any(fnmatchcase(address, p) for p in self._presence_patterns)
            if len(cache) >= _HISTORY_CACHE:
                cache.clear()
            cache[address] = found
        return found

    def _presence_event(self, address: str, event: str, member: str, meta: Any) -> None:
        message = {
            "type": "presence",
            "address": address,
            "event": event,
            "member": member,
            "meta": meta,
        }
        members = self._members.get(address)
        if members:
            self._offer(list(members), message)
        if self.backplane.remote:
            self._presence_out.append((address, message))
            if self._outbox_wake is not None:
                self._outbox_wake.set()

    def presence_lost(self, address: str, lost: dict[str, tuple[str, Any]]) -> None:
        """Called by the backplane with the members of ``address`` that it found on
        nodes no longer alive and removed (each reported by one node only):
        their leaves are delivered if ``address`` receives presence events."""
        if self._presence_patterns and self.presence_events_of(address):
            for member, (_, meta) in lost.items():
                self._presence_event(address, "leave", member, meta)

    async def _sweep_presence(self, live: set[str]) -> None:
        """After a node was lost, make the backplane remove its members of every
        address with presence events and local members (see :meth:`presence_lost`)."""
        seen, self._live_seen = self._live_seen, live
        if seen is not None and not seen - live:
            return
        for address in [a for a in self._members if self.presence_events_of(a)]:
            try:
                await self.backplane.presence(address)
            except Exception:  # unreachable: the next lost node, or query, sweeps it
                self._live_seen = None
                return

    def cell(self, address: str) -> Cell | None:
        """Return the live local cell whose own address is ``address`` (for the supervisor)."""
        return self._cells.get(address)

    def lookup(self, address: str) -> ActorRef | None:
        """Return the local actor whose own address is ``address``, if any."""
        cell = self._cells.get(address)
        return cell.ref if cell is not None else None

    # -- sending ---------------------------------------------------------------

    def _offer(self, members: Iterable[Cell], message: Any) -> int:
        delivered = 0
        if self._catchup and message.__class__ is Record:
            members, delivered = self._catching_up(members, message)
        # Shared by every recipient of this one send: lets connections encode once.
        cache: dict[str, Any] | None = None
        for cell in members:
            direct = cell.direct
            if direct is not None:
                if cache is None:
                    cache = {}
                if direct(message, cache):
                    delivered += 1
                    continue
            try:
                cell.mailbox.put_nowait(Envelope(message))
            except MailboxFull as exc:
                if exc.policy == "block":
                    # Fan-out never waits on one slow member: it is a drop for that member.
                    # Wrapped like a queued message, so the cell dead-letters it too.
                    cell.mailbox.record_drop(Envelope(message), "block_timeout")
            except Exception:  # MailboxClosed: it stopped between lookup and put
                continue
            else:
                delivered += 1
        return delivered

    def send_nowait(self, address: str, message: Any) -> int:
        """Deliver ``message`` to the local members of ``address`` without waiting.

        A full member under ``block`` drops the message (counted as
        ``block_timeout``). Does not reach other nodes: use :meth:`send` for that.

        Returns:
            How many local actors took the message. Zero on a single-node
            backplane makes it a dead letter (``no_recipient``).
        """
        if self._histories:
            spec = self.history_of(address)
            if spec is not None:
                if self.backplane.keeps_history:
                    raise ValueError(f"{address!r} has history in the backplane: use send()")
                message = self._append_locally(address, message, spec)
        members = self._members.get(address)
        delivered = self._offer(list(members), message) if members else 0
        if not members and not self.backplane.remote:
            self.dead_letters.post(DeadLetter(address, message, "no_recipient"))
        return delivered

    async def send(self, address: str, message: Any, *, timeout: float | None = None) -> Delivery:
        """Send ``message`` to every actor that answers to ``address``, here and on other nodes.

        With exactly one local member and no other nodes, the sender waits for
        mailbox space under ``block`` (up to ``timeout``); a fan-out to several
        members never waits for a slow one. Always a checkpoint. A send that
        reaches nobody is a dead letter (``no_recipient``).

        Returns:
            What it reached: local recipients, and whether other nodes were reached.

        Raises:
            MailboxFull: the single local recipient refused the message.
            BackplaneUnavailable: the message could not reach other nodes (local
                members, if any, still got it).
        """
        return await self._send(address, message, timeout, group=False)

    async def _send(
        self, address: str, message: Any, timeout: float | None, *, group: bool
    ) -> Delivery:
        if self._histories:
            spec = self.history_of(address)
            if spec is not None:
                return await self._send_recorded(address, message, spec, group)
        members = self._members.get(address)
        if members and len(members) == 1 and not self.backplane.remote:
            (cell,) = members
            if cell.direct is None:
                await cell.mailbox.put(Envelope(message), timeout=timeout)
                return _ONE
        delivered = self._offer(list(members), message) if members else 0
        if self.backplane.remote:
            reached = await self._publish_remote(address, message)
        else:
            reached = False
            await anyio.lowlevel.checkpoint()
        if not delivered and not reached:
            self._reached_nobody(address, message, group)
            return _NOBODY
        return Delivery(delivered, reached)

    def _reached_nobody(self, address: str, message: Any, group: bool) -> None:
        if group:
            # An empty group is normal (a room nobody joined yet): not a dead letter.
            self.instrumentation.published_to_empty_group()
            _log.debug("runtime.published_to_empty_group", group=address)
        else:
            self.dead_letters.post(DeadLetter(address, message, "no_recipient"))

    async def _publish_remote(self, address: str, message: Any) -> bool:
        clock = self.clock
        started = clock.now()
        try:
            reached = await self.backplane.publish(address, message)
        except BackplaneUnavailable:
            self.instrumentation.backplane_message("failed")
            self.dead_letters.post(DeadLetter(address, message, "backplane_down"))
            raise
        self.instrumentation.backplane_published(clock.now() - started)
        self.instrumentation.backplane_message("sent")
        return reached > 0

    async def _send_recorded(
        self, address: str, message: Any, spec: HistorySpec, group: bool
    ) -> Delivery:
        backplane = self.backplane
        members = self._members.get(address)
        if not backplane.keeps_history:
            record = self._append_locally(address, message, spec)
            delivered = self._offer(list(members), record) if members else 0
            await anyio.lowlevel.checkpoint()
            if not delivered:
                self._reached_nobody(address, record, group)
                return _NOBODY
            return Delivery(delivered, False)
        # The backplane delivers the record here too, in offset order with everyone
        # else's: local members count as reached if they are members now.
        local = len(members) if members else 0
        clock = self.clock
        started = clock.now()
        try:
            others = await backplane.append_history(address, message, spec)
        except BackplaneUnavailable:
            self.instrumentation.backplane_message("failed")
            self.dead_letters.post(DeadLetter(address, message, "backplane_down"))
            raise
        self.instrumentation.history_appended()
        self.instrumentation.backplane_published(clock.now() - started)
        self.instrumentation.backplane_message("sent")
        if not local and not others:
            self._reached_nobody(address, message, group)
            return _NOBODY
        return Delivery(local, others > 0)

    def _append_locally(self, address: str, message: Any, spec: HistorySpec) -> Record:
        record = self.memory_history.append(address, message, spec, self.clock.now())
        self.instrumentation.history_appended()
        return record

    def deliver_remote(self, address: str, message: Any) -> int:
        """Deliver a message that arrived from another node to local members only."""
        self.instrumentation.backplane_message("received")
        if message.__class__ is dict and WIRE_KEY in message:
            self._monitor_message(message)
            return 1
        if self._receivers:
            receiver = self._receivers.get(address)
            if receiver is not None:
                receiver(message)
                return 1
        members = self._members.get(address)
        return self._offer(list(members), message) if members else 0

    def deliver_own(self, address: str, message: Any) -> int:
        """Deliver to local members a record of this node's own send, brought back by a
        backplane that keeps history (not counted as received from another node)."""
        members = self._members.get(address)
        return self._offer(list(members), message) if members else 0

    # -- history -------------------------------------------------------------------

    def add_history(self, spec: HistorySpec) -> None:
        """Keep a history for every address that matches ``spec.pattern``.

        Where several specs match an address, the first one added wins.

        Raises:
            ValueError: the backplane reaches other nodes but keeps no history
                (each node would number the messages on its own).
        """
        backplane = self.backplane
        if backplane.remote and not backplane.keeps_history:
            raise ValueError(
                f"the {backplane.kind} backplane keeps no history: history needs the "
                "in-process backplane or one that keeps it for every node (Redis)"
            )
        self._histories.append(spec)
        self._history_cache.clear()

    def history_of(self, address: str) -> HistorySpec | None:
        """Return the history spec of ``address``, or ``None`` if it keeps none.

        O(1) for an address seen recently, else O(specs).
        """
        cache = self._history_cache
        spec = cache.get(address, _NO_SPEC)
        if spec is not _NO_SPEC:
            return spec
        spec = next((s for s in self._histories if s.matches(address)), None)
        if len(cache) >= _HISTORY_CACHE:
            cache.clear()
        cache[address] = spec
        return spec

    async def recover(
        self, cell: Cell, address: str, since: Position, *, meta: Any = None
    ) -> Recovery:
        """Make ``cell`` a member of ``address`` (with presence ``meta``) and return the
        records it missed after ``since``, with no gap and no duplicate before the live ones.

        See :meth:`actors.Context.recover`.

        Raises:
            ValueError: ``address`` has no history.
            RuntimeError: ``cell`` is already recovering ``address``.
        """
        spec = self.history_of(address)
        if spec is None:
            raise ValueError(f"{address!r} has no history: see add_history()")
        catching = self._catchup.setdefault(address, {})
        if cell in catching and catching[cell].held is not None:
            raise RuntimeError(f"{cell.address} is already recovering {address!r}")
        # Live records must not overtake the missed ones on their way to the client:
        # from now on they go through the mailbox, behind what the handler sends.
        cell.direct = None
        state = catching[cell] = _CatchUp()
        self.add_member(address, cell, meta)
        backplane = self.backplane
        read = None
        try:
            if backplane.keeps_history:
                with contextlib.suppress(BackplaneUnavailable):
                    read = await backplane.read_history(address, since, spec)
            else:
                read = self.memory_history.read(address, since, spec, self.clock.now())
                await anyio.lowlevel.checkpoint()
        except BaseException:
            self._end_catchup(address, cell)
            raise
        held = state.held or []
        state.held = None
        missed: tuple[Record, ...] = ()
        if read is None:
            result, position = RecoveryResult.UNAVAILABLE, None
        else:
            result, missed = read.result, read.records
            position = Position(read.epoch, read.offset) if read.epoch else None
        if read is not None and result is RecoveryResult.RECOVERED:
            # What the read covered: a held or late copy of it is dropped.
            held = [r for r in held if r.epoch != read.epoch or r.offset > read.offset]
            state.epoch, state.offset = read.epoch, read.offset
        records = missed + tuple(held)
        if records:
            position = records[-1].position
        if state.epoch is None or not backplane.keeps_history:
            self._end_catchup(address, cell)
        self.instrumentation.history_recovered(result.value, len(missed))
        if result is RecoveryResult.RECOVERED:
            _log.debug("history.recovered", address=address, since=str(since), records=len(missed))
        else:
            _log.info(
                "history.recovery_failed",
                address=address,
                since=str(since),
                result=result.value,
                position=str(position) if position else None,
            )
        return Recovery(address, result, records, position)

    def _catching_up(self, members: Iterable[Cell], record: Record) -> tuple[list[Cell], int]:
        """Split ``members`` into those that take ``record`` now and those catching up."""
        catching = self._catchup.get(record.address)
        if not catching:
            return list(members), 0
        rest: list[Cell] = []
        taken = 0
        for cell in members:
            state = catching.get(cell)
            if state is None:
                rest.append(cell)
            elif state.held is not None:
                state.held.append(record)  # recovering: handed over with the missed ones
                taken += 1
            elif record.epoch == state.epoch and record.offset <= state.offset:
                taken += 1  # read from the history already: a late copy
            else:
                # Records arrive in offset order: nothing older can follow.
                self._end_catchup(record.address, cell)
                rest.append(cell)
        return rest, taken

    def _end_catchup(self, address: str, cell: Cell) -> None:
        catching = self._catchup.get(address)
        if catching is not None and catching.pop(cell, None) is not None and not catching:
            del self._catchup[address]

    # -- watches across nodes ------------------------------------------------------

    def post(self, address: str, message: Any) -> None:
        """Send ``message`` to ``address`` soon, from synchronous code (monitor traffic).

        Sent in order by :meth:`run_monitors`; a failure to reach the backplane
        is a dead letter like any other send's.
        """
        self._outbox.append((address, message))
        if self._outbox_wake is not None:
            self._outbox_wake.set()

    def watch_remote(self, watcher: Cell, target: str) -> bool:
        """Watch ``target`` on another node for ``watcher``; False if it is not the
        address of an actor of another node (or there are no other nodes)."""
        node = node_of(target)
        if not self.backplane.remote or node is None or node == self.node_id:
            return False
        watchers = self._remote_watches.setdefault(target, {})
        if watcher not in watchers:
            watchers[watcher] = None
            self.post(target, wire_watch(watcher.address, target))
        return True

    def unwatch_remote(self, watcher: Cell, target: str) -> None:
        """Cancel :meth:`watch_remote`."""
        watchers = self._remote_watches.get(target)
        if watchers is None or watchers.pop(watcher, 0) == 0:
            return
        if not watchers:
            del self._remote_watches[target]
        self.post(target, wire_unwatch(watcher.address, target))

    def _monitor_message(self, message: dict[str, Any]) -> None:
        kind, watcher, target = message[WIRE_KEY], message.get("watcher"), message.get("target")
        if not isinstance(watcher, str) or not isinstance(target, str):
            return
        if kind == "watch":
            cell = self._cells.get(target)
            if cell is None or cell.is_terminated:
                self.post(watcher, wire_down(watcher, Down(target, DownReason.NO_ACTOR)))
            else:
                if cell.remote_watchers is None:
                    cell.remote_watchers = set()
                cell.remote_watchers.add(watcher)
        elif kind == "unwatch":
            cell = self._cells.get(target)
            if cell is not None and cell.remote_watchers is not None:
                cell.remote_watchers.discard(watcher)
        elif kind == "down":
            watchers = self._remote_watches.get(target)
            cell = self._cells.get(watcher)
            if watchers is None or cell is None or cell not in watchers:
                return
            del watchers[cell]
            if not watchers:
                del self._remote_watches[target]
            try:
                reason = DownReason(str(message.get("reason")))
            except ValueError:
                reason = DownReason.STOPPED
            error = message.get("error")
            cell._deliver_down(Down(target, reason, error if isinstance(error, str) else None))

    def _nodes_lost(self, live: set[str]) -> None:
        for target in list(self._remote_watches):
            if node_of(target) in live:
                continue
            down = Down(target, DownReason.NODE_LOST)
            for cell in self._remote_watches.pop(target):
                cell._deliver_down(down)

    async def _send_monitor_message(self, address: str, message: dict[str, Any]) -> None:
        local = self._members.get(address)
        if local:  # a watcher on this node (a Down to it after a lost watch, say)
            self.deliver_remote(address, message)
            return
        reached: bool | None
        try:
            reached = await self._publish_remote(address, message)
        except Exception:  # BackplaneUnavailable: the node check settles the watch later
            reached = None
            _log.debug("runtime.monitor_message_lost", address=address)
        if reached is False and message.get(WIRE_KEY) == "watch":
            # Nobody subscribes to that address anywhere: there is no such actor.
            watcher = message["watcher"]
            self._monitor_message(wire_down(watcher, Down(address, DownReason.NO_ACTOR)))

    async def run_monitors(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Carry watches across nodes until cancelled: send the posted monitor messages,
        and end the watches of actors whose node the backplane no longer lists.

        Started by ``ActorSystem`` next to the timers.
        """
        task_status.started()
        interval = self.backplane.node_check_interval
        next_check = self.clock.now() + (interval or 0.0)
        while True:
            while self._outbox:
                address, message = self._outbox.popleft()
                await self._send_monitor_message(address, message)
            while self._presence_out:
                address, message = self._presence_out.popleft()
                try:
                    await self._publish_remote(address, message)
                except BackplaneUnavailable:  # a dead letter already: lost, like any send
                    _log.debug("runtime.presence_event_lost", address=address)
            checking = self._remote_watches or self._presence_patterns
            if interval is not None and checking and self.clock.now() >= next_check:
                next_check = self.clock.now() + interval
                try:
                    live = await self.backplane.live_nodes()
                except Exception:  # unreachable: nothing is known to be lost
                    live = None
                if live is not None:
                    self._nodes_lost(live)
                    if self._presence_patterns:
                        await self._sweep_presence(live)
            if self._outbox or self._presence_out:
                continue
            self._outbox_wake = anyio.Event()
            # Nothing to check: sleep until something is posted (a watch wakes it), not
            # until a check that is never made (an instant deadline, then a spin).
            checking = self._remote_watches or self._presence_patterns
            if interval is None or not checking:
                wait = None
            else:
                wait = max(0.0, next_check - self.clock.now())
            with self.clock.move_on_after(wait):
                await self._outbox_wake.wait()
            self._outbox_wake = None

    async def publish(self, group: str, message: Any) -> Delivery:
        """Send ``message`` to every member of ``group``; same rules as :meth:`send`, except
        that a group with no members anywhere is no dead letter: it is counted apart
        (``Instrumentation.published_to_empty_group``) and logged at DEBUG.

        Returns:
            What it reached.
        """
        return await self._send(group, message, None, group=True)

    async def broadcast(self, message: Any) -> Delivery:
        """Send ``message`` to every member of the :data:`ALL` group, on every node;
        like :meth:`publish` when nobody is connected.

        Returns:
            What it reached.
        """
        return await self._send(ALL, message, None, group=True)

    async def ask(self, address: str, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``message`` to the one local actor at ``address`` and return its reply.

        Raises:
            NoRecipient: nobody answers to ``address`` on this node.
            AmbiguousAddress: several actors answer to it.
            AskTimeout, ActorRestarted, ActorStopped, MailboxFull: see ``ActorRef.ask``.
        """
        members = self._members.get(address)
        if not members:
            raise NoRecipient(address)
        if len(members) > 1:
            raise AmbiguousAddress(address, members=len(members))
        (cell,) = members
        return await self.ask_cell(cell, message, timeout=timeout)

    async def ask_cell(self, cell: Cell, message: Any, *, timeout: float | None) -> Any:
        """Ask one cell; see ``ActorRef.ask``."""
        reply = Reply()
        with self.clock.move_on_after(timeout):
            await cell.mailbox.put(Envelope(message, reply))
            return await reply.wait()
        raise AskTimeout(cell.address, timeout=timeout if timeout is not None else math.inf)

    # -- introspection -----------------------------------------------------------

    def statistics(self) -> RuntimeStatistics:
        """Return a frozen snapshot of this runtime. Cost: O(number of actors)."""
        kinds: dict[str, int] = {}
        queued = 0
        for cell in self._cells.values():
            kinds[cell.kind] = kinds.get(cell.kind, 0) + 1
            queued += len(cell.mailbox)
        return RuntimeStatistics(
            actors=MappingProxyType(kinds),
            addresses=len(self._members),
            mailbox_messages=queued,
            dead_letters=self.dead_letters.statistics(),
        )


class _CatchUp:
    """An actor catching up on an address (see :meth:`Runtime.recover`)."""

    __slots__ = ("epoch", "held", "offset")

    def __init__(self) -> None:
        #: Records that arrived while recovering (``None`` once recovered).
        self.held: list[Record] | None = []
        #: The last record read from the history: a later copy of it or of an older one
        #: is dropped, until a newer record arrives.
        self.epoch: str | None = None
        self.offset = 0
