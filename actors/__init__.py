"""wsup's generic actor runtime: mailboxes, actors, addresses and the backplane.

Nothing here knows about WebSockets; :mod:`supervisor` builds the supervision
tree and the server on top of it.
"""

from ._actor import Actor, ActorRef, Cell, Context, Exit, ExitKind
from ._backplane import Backplane, InProcessBackplane, Node
from ._clock import Clock, FakeClock, MonotonicClock
from ._deadletters import DEAD_LETTER_REASONS, DeadLetter, DeadLetterOffice, DeadLetterReason
from ._exceptions import (
    ActorError,
    ActorRestarted,
    ActorStopped,
    AmbiguousAddress,
    AskFailed,
    AskTimeout,
    BackplaneError,
    BackplaneUnavailable,
    CriticalFailure,
    Escalation,
    MailboxClosed,
    MailboxFull,
    NoRecipient,
    SupervisionError,
    SystemFailed,
    WsupError,
)
from ._history import (
    HistoryRead,
    HistorySpec,
    MemoryHistory,
    Position,
    Record,
    Recovery,
    RecoveryResult,
    decide_recovery,
)
from ._instrument import Instrumentation
from ._mailbox import Mailbox, MailboxConfig, MailboxStatistics
from ._monitor import Down, DownReason
from ._policy import (
    Backoff,
    BackoffState,
    Intensity,
    IntensityWindow,
    LeaseAction,
    LeasePolicy,
    Overflow,
    OverflowPolicy,
    decide_overflow,
    lease_step,
)
from ._runtime import ALL, Delivery, Runtime, RuntimeStatistics
from ._timers import Timers, TimerService, next_deadline

__all__ = [
    "ALL",
    "DEAD_LETTER_REASONS",
    "Actor",
    "ActorError",
    "ActorRef",
    "ActorRestarted",
    "ActorStopped",
    "AmbiguousAddress",
    "AskFailed",
    "AskTimeout",
    "Backoff",
    "BackoffState",
    "Backplane",
    "BackplaneError",
    "BackplaneUnavailable",
    "Cell",
    "Clock",
    "Context",
    "CriticalFailure",
    "DeadLetter",
    "DeadLetterOffice",
    "DeadLetterReason",
    "Delivery",
    "Down",
    "DownReason",
    "Escalation",
    "Exit",
    "ExitKind",
    "FakeClock",
    "HistoryRead",
    "HistorySpec",
    "InProcessBackplane",
    "Instrumentation",
    "Intensity",
    "IntensityWindow",
    "LeaseAction",
    "LeasePolicy",
    "Mailbox",
    "MailboxClosed",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "MemoryHistory",
    "MonotonicClock",
    "NoRecipient",
    "Node",
    "Overflow",
    "OverflowPolicy",
    "Position",
    "Record",
    "Recovery",
    "RecoveryResult",
    "Runtime",
    "RuntimeStatistics",
    "SupervisionError",
    "SystemFailed",
    "TimerService",
    "Timers",
    "WsupError",
    "decide_overflow",
    "decide_recovery",
    "lease_step",
    "next_deadline",
]
