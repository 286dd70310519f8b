"""wsup's generic actor runtime: mailboxes, actors, addresses and the backplane.

Nothing here knows about WebSockets; :mod:`supervisor` builds the supervision
tree and the server on top of it.
"""

from ._actor import Actor, ActorRef, Context
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
    Position,
    Record,
    Recovery,
    RecoveryResult,
    decide_recovery,
)
from ._instrument import Instrumentation
from ._mailbox import MailboxConfig, MailboxStatistics
from ._monitor import Down, DownReason
from ._policy import (
    Backoff,
    Intensity,
    LeasePolicy,
    OverflowPolicy,
)
from ._runtime import ALL, Delivery, Runtime, RuntimeStatistics
from ._timers import Timers

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
    "Backplane",
    "BackplaneError",
    "BackplaneUnavailable",
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
    "FakeClock",
    "HistoryRead",
    "HistorySpec",
    "InProcessBackplane",
    "Instrumentation",
    "Intensity",
    "LeasePolicy",
    "MailboxClosed",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "MonotonicClock",
    "NoRecipient",
    "Node",
    "OverflowPolicy",
    "Position",
    "Record",
    "Recovery",
    "RecoveryResult",
    "Runtime",
    "RuntimeStatistics",
    "SupervisionError",
    "SystemFailed",
    "Timers",
    "WsupError",
    "decide_recovery",
]
