"""History per address: offsets within an epoch, bounded logs, and recovery.

Theory of operation: an app turns history on for the addresses that match a
pattern (:class:`HistorySpec`, e.g. ``room:*``). Every message sent to such an
address is stamped with a :class:`Position`: an *offset* that grows by one per
message, within an *epoch* that names one unbroken run of offsets. Members of
the address receive a :class:`Record` (the message with its address, epoch and
offset) instead of the bare message. The log of each address keeps the last
``size`` records, none older than ``ttl`` seconds.

A client that comes back with the position of the last record it saw asks for
what followed (:meth:`actors.Context.recover`). Whether that is possible is one
pure decision, :func:`decide_recovery`, on four facts: the epoch and last offset
the log has now, the first offset it still keeps, and the client's position. A
different epoch means the log was lost (a process restart, Redis losing its
data): offsets of the old epoch mean nothing any more. An offset the log has
already let go of (trimmed by size or age) cannot be replayed either. In both
cases the handler is told so and decides what the client sees.

:class:`MemoryHistory` is the log of one process (the in-process backplane);
the Redis backplane keeps the same logs in Redis Streams, shared by every node.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

__all__ = [
    "HistoryRead",
    "HistorySpec",
    "MemoryHistory",
    "Position",
    "Record",
    "Recovery",
    "RecoveryResult",
    "decide_recovery",
    "new_epoch",
]

_SWEEP_EVERY: Final = 1024
"""Appends between two sweeps of a memory history's idle logs."""


def new_epoch() -> str:
    """Return a fresh epoch: 8 random hex digits (never ``:`` or NUL)."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class HistorySpec:
    """History for every address that matches ``pattern``.

    Attributes:
        pattern: a shell-style pattern (``room:*``, ``feed:??``), matched with
            :func:`fnmatch.fnmatchcase` against the whole address.
        size: the most records kept per address.
        ttl: seconds a record is kept.
        meta_ttl: seconds an address's epoch and last offset are kept after its
            last message. Past it, the next message starts a new epoch, and a
            client that was up to date then is told that recovery failed.

    Raises:
        ValueError: an empty pattern, ``size < 1``, ``ttl <= 0`` or ``meta_ttl < ttl``.
    """

    pattern: str
    size: int = 1000
    ttl: float = 300.0
    meta_ttl: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ValueError("a history pattern must not be empty")
        if self.size < 1:
            raise ValueError(f"history size must be >= 1, got {self.size}")
        if not self.ttl > 0:
            raise ValueError(f"history ttl must be > 0 seconds, got {self.ttl}")
        if not self.meta_ttl >= self.ttl:
            raise ValueError(f"history meta_ttl ({self.meta_ttl}) must be >= ttl ({self.ttl})")

    def matches(self, address: str) -> bool:
        """Whether ``address`` has this history."""
        return fnmatchcase(address, self.pattern)


@dataclass(frozen=True, slots=True)
class Position:
    """A place in an address's history: the offset of a record within its epoch.

    ``str(position)`` is ``EPOCH:OFFSET``, which :meth:`parse` reads back.
    Offset 0 is "before the first record".
    """

    epoch: str
    offset: int

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"an offset is >= 0, got {self.offset}")

    @classmethod
    def parse(cls, text: str) -> Position:
        """Read ``EPOCH:OFFSET`` (as a client sends it back).

        Raises:
            ValueError: not two parts, an empty epoch, or an offset that is not a
                non-negative decimal integer; the message says which.
        """
        epoch, sep, offset = text.rpartition(":")
        if not sep or not epoch:
            raise ValueError(f"a position is EPOCH:OFFSET, got {text[:64]!r}")
        if not epoch.isprintable() or len(epoch) > 64:
            raise ValueError("the epoch of a position must be 1-64 printable characters")
        if not offset.isascii() or not offset.isdigit() or len(offset) > 19:
            raise ValueError(f"the offset of a position must be a whole number, got {offset!r}")
        return cls(epoch, int(offset))

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Record:
    """A message sent to an address with history, as its members receive it.

    One object is shared by every local member of one send.

    Attributes:
        address: the address it was sent to.
        epoch: the epoch of its offset.
        offset: its place in the address's history (1 for the first of an epoch).
        message: what was sent.
    """

    address: str
    epoch: str
    offset: int
    message: Any

    @property
    def position(self) -> Position:
        """Its :class:`Position`."""
        return Position(self.epoch, self.offset)


class RecoveryResult(enum.StrEnum):
    """How a recovery ended (label ``result`` of ``wsup_history_recoveries_total``)."""

    RECOVERED = "recovered"
    """Every record after the client's position was handed over (possibly none)."""
    EPOCH_CHANGED = "epoch_changed"
    """The history was lost and started again (or never existed): offsets of the
    client's epoch mean nothing now."""
    TRIMMED = "trimmed"
    """Records after the client's position were let go of (size or age)."""
    UNAVAILABLE = "unavailable"
    """The history could not be read (the backplane is down)."""
    INVALID = "invalid"
    """The client's offset lies beyond the last one of its epoch."""


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """What a history store answers to a read (before it is merged with live records).

    Attributes:
        result: :func:`decide_recovery`'s verdict.
        epoch: the address's epoch now (``""`` when it has no history).
        offset: its last offset now (0 when it has no history).
        records: the records after the client's position, in order, when recovered.
    """

    result: RecoveryResult
    epoch: str
    offset: int
    records: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer of :meth:`actors.Context.recover`.

    True when the client missed nothing that it will not now receive.

    Attributes:
        address: the address recovered.
        result: how it ended.
        records: what to hand to the client now, in offset order, before any
            later record: on success the missed records, then the live ones that
            arrived while recovering; on failure only those live ones.
        position: where the address's history stands (the last record handed
            over, or the last offset known); ``None`` when it could not be read.
    """

    address: str
    result: RecoveryResult
    records: tuple[Record, ...]
    position: Position | None

    @property
    def ok(self) -> bool:
        """Whether the recovery succeeded."""
        return self.result is RecoveryResult.RECOVERED

    def __bool__(self) -> bool:
        return self.result is RecoveryResult.RECOVERED


def decide_recovery(
    since: Position, epoch: str | None, last: int, first_kept: int | None
) -> RecoveryResult:
    """Decide whether the records after ``since`` can all be replayed.

    Args:
        since: the client's position (the last record it has).
        epoch: the address's epoch now, ``None`` if it has no history.
        last: the address's last offset now.
        first_kept: the smallest offset after ``since.offset`` still kept (and not
            expired), ``None`` if none is.

    Returns:
        ``RECOVERED``, ``EPOCH_CHANGED``, ``INVALID`` or ``TRIMMED``. O(1).
    """
    if epoch is None or since.epoch != epoch:
        return RecoveryResult.EPOCH_CHANGED
    if since.offset > last:
        return RecoveryResult.INVALID
    if since.offset == last:
        return RecoveryResult.RECOVERED
    if first_kept is None or first_kept != since.offset + 1:
        return RecoveryResult.TRIMMED
    return RecoveryResult.RECOVERED


class _Log:
    __slots__ = ("entries", "epoch", "last", "touched")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = new_epoch()
        self.last = 0
        self.touched = now
        self.entries: deque[tuple[Record, float]] = deque(maxlen=size)

    def expire(self, cutoff: float) -> None:
        entries = self.entries
        while entries and entries[0][1] < cutoff:
            entries.popleft()


class MemoryHistory:
    """The history of this process's addresses (for a node without shared storage).

    Memory is bounded by ``size`` records per address with a record younger
    than ``ttl``, plus a few dozen bytes per address with a message in the last
    ``meta_ttl`` seconds. Each process has its own epochs: a restart starts new ones.
    """

    def __init__(self) -> None:
        self._logs: dict[str, tuple[_Log, HistorySpec]] = {}
        self._appends = 0

    def __len__(self) -> int:
        return len(self._logs)

    def append(self, address: str, message: Any, spec: HistorySpec, now: float) -> Record:
        """Record ``message`` as the next record of ``address``. Amortised O(1)."""
        self._appends += 1
        if self._appends % _SWEEP_EVERY == 0:
            self.sweep(now)
        found = self._logs.get(address)
        log = found[0] if found is not None else None
        if log is None or now - log.touched > spec.meta_ttl:
            log = _Log(spec.size, now)
            self._logs[address] = (log, spec)
        else:
            log.expire(now - spec.ttl)
        log.last += 1
        log.touched = now
        record = Record(address, log.epoch, log.last, message)
        log.entries.append((record, now))
        return record

    def read(self, address: str, since: Position, spec: HistorySpec, now: float) -> HistoryRead:
        """Return the records of ``address`` after ``since``, or why they cannot be.

        Cost: O(records returned).
        """
        found = self._logs.get(address)
        if found is None or now - found[0].touched > spec.meta_ttl:
            return HistoryRead(decide_recovery(since, None, 0, None), "", 0)
        log = found[0]
        log.expire(now - spec.ttl)
        entries = log.entries
        first_kept: int | None = None
        if entries and since.offset < log.last:
            first = entries[0][0].offset
            first_kept = max(first, since.offset + 1)
        result = decide_recovery(since, log.epoch, log.last, first_kept)
        records: tuple[Record, ...] = ()
        if result is RecoveryResult.RECOVERED and since.offset < log.last:
            skip = since.offset + 1 - entries[0][0].offset
            records = tuple(entries[i][0] for i in range(skip, len(entries)))
        return HistoryRead(result, log.epoch, log.last, records)

    def sweep(self, now: float) -> None:
        """Forget the addresses idle for longer than their ``meta_ttl`` and let go
        of expired records. O(addresses + records let go of)."""
        for address, (log, spec) in list(self._logs.items()):
            if now - log.touched > spec.meta_ttl:
                del self._logs[address]
            else:
                log.expire(now - spec.ttl)
