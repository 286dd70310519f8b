"""Every public exception of :mod:`actors`, in one module: the root of wsup's tree.

Every error wsup raises derives from :class:`WsupError` and carries structured
fields (address, close code, reason) besides its text::

    WsupError
    ├── ActorError                      an actor could not take or answer a message
    │   ├── MailboxFull                 the mailbox refused the message (policy or timeout)
    │   ├── MailboxClosed               the actor has stopped; its mailbox takes nothing
    │   ├── NoRecipient                 no actor answers to this address
    │   ├── AmbiguousAddress            ask() to an address with several members
    │   └── AskFailed                   ask() got no reply
    │       ├── AskTimeout              ... within its timeout
    │       ├── ActorStopped            ... because the target stopped mid-request
    │       └── ActorRestarted          ... because the target crashed mid-request
    ├── SupervisionError
    │   ├── Escalation                  a supervisor exceeded its restart intensity
    │   │   └── CriticalFailure         a critical child gave up: the process must stop
    │   └── SystemFailed                the root supervisor failed: the system stopped
    └── BackplaneError
        └── BackplaneUnavailable        the cluster backplane is down; remote sends fail fast

The server's errors (``ConnectionClosed`` and friends, ``ListenError``,
``StartupError``, ``RedisUnavailable``) join this tree in
:mod:`supervisor._exceptions`, which draws the whole of it. Third-party
exceptions are translated where wsup meets them.
"""

from __future__ import annotations

__all__ = [
    "ActorError",
    "ActorRestarted",
    "ActorStopped",
    "AmbiguousAddress",
    "AskFailed",
    "AskTimeout",
    "BackplaneError",
    "BackplaneUnavailable",
    "CriticalFailure",
    "Escalation",
    "MailboxClosed",
    "MailboxFull",
    "NoRecipient",
    "SupervisionError",
    "SystemFailed",
    "WsupError",
]


class WsupError(Exception):
    """Base class of every error raised by wsup."""


class ActorError(WsupError):
    """An actor could not take or answer a message.

    Attributes:
        address: the address the message was sent to.
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class MailboxFull(ActorError):
    """The target's mailbox refused the message.

    Raised by ``reject`` at once, by ``block`` after its timeout, and by every
    ``*_nowait`` call on a full ``block`` mailbox.

    Attributes:
        capacity: the mailbox capacity.
        policy: the overflow policy that refused the message.
    """

    def __init__(self, address: str, *, capacity: int, policy: str) -> None:
        super().__init__(
            f"mailbox of {address} is full ({capacity} messages, policy {policy})",
            address=address,
        )
        self.capacity = capacity
        self.policy = policy


class MailboxClosed(ActorError):
    """The actor has stopped for good; its mailbox accepts nothing more."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} has stopped", address=address)


class NoRecipient(ActorError):
    """No actor answers to this address (it never existed or has stopped)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"no actor at address {address!r}", address=address)


class AmbiguousAddress(ActorError):
    """``ask`` needs exactly one recipient, and the address has several.

    Attributes:
        members: how many actors the address resolved to.
    """

    def __init__(self, address: str, *, members: int) -> None:
        super().__init__(f"ask() needs one recipient; {address!r} has {members}", address=address)
        self.members = members


class AskFailed(ActorError):
    """``ask`` ended without a reply."""


class AskTimeout(AskFailed):
    """No reply came within the timeout.

    Attributes:
        timeout: the timeout in seconds.
    """

    def __init__(self, address: str, *, timeout: float) -> None:
        super().__init__(f"{address} did not reply within {timeout:g} s", address=address)
        self.timeout = timeout


class ActorStopped(AskFailed):
    """The target stopped before it replied."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} stopped before replying", address=address)


class ActorRestarted(AskFailed):
    """The target crashed while handling the request (and was restarted or stopped).

    The request is not retried: it became a dead letter.

    Attributes:
        error: a ``repr`` of the exception that crashed the actor.
    """

    def __init__(self, address: str, *, error: str) -> None:
        super().__init__(f"{address} crashed while handling the request: {error}", address=address)
        self.error = error


class SupervisionError(WsupError):
    """Base of supervision-tree failures."""


class Escalation(SupervisionError):
    """A supervisor exceeded its restart intensity and gave up.

    The original failure is chained as ``__cause__``.

    Attributes:
        supervisor: the supervisor's id.
        restarts: restarts counted in the window.
        within: the window in seconds.
    """

    def __init__(self, supervisor: str, *, restarts: int, within: float) -> None:
        super().__init__(
            f"supervisor {supervisor!r} exceeded its restart intensity "
            f"({restarts} restarts within {within:g} s) and escalates"
        )
        self.supervisor = supervisor
        self.restarts = restarts
        self.within = within


class CriticalFailure(Escalation):
    """A child marked ``critical`` gave up: it exceeded its restart intensity (a
    service) or escalated (a supervisor). The failure goes past every parent to
    the process: the server turns unready, drains and exits with a non-zero status.

    The original failure is chained as ``__cause__``.

    Attributes:
        child: the label of the child that gave up (a service id or supervisor id).
        restarts: restarts counted in its window.
        within: the window in seconds.
    """

    def __init__(self, child: str, *, restarts: int, within: float) -> None:
        SupervisionError.__init__(
            self,
            f"critical {child!r} exceeded its restart intensity "
            f"({restarts} restarts within {within:g} s): the process stops",
        )
        self.supervisor = child
        self.child = child
        self.restarts = restarts
        self.within = within


class SystemFailed(SupervisionError):
    """The root supervisor failed: the whole actor system stopped.

    The escalation that caused it is chained as ``__cause__``.

    Attributes:
        escalation: the root supervisor's :class:`Escalation`.
    """

    def __init__(self, message: str, *, escalation: Escalation) -> None:
        super().__init__(message)
        self.escalation = escalation


class BackplaneError(WsupError):
    """Base of backplane errors."""


class BackplaneUnavailable(BackplaneError):
    """The cluster backplane cannot be reached; remote sends fail fast.

    Attributes:
        address: the address that could not be reached remotely.
    """

    def __init__(self, address: str, detail: str = "") -> None:
        text = f"backplane unavailable, cannot reach {address!r}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.address = address
