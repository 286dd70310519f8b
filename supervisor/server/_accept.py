"""Accepting connections when the process runs out of descriptors, as pure decisions.

Theory of operation: ``accept()`` fails in three ways. The pending connection
itself may be broken (reset before it was accepted, or a network error Linux
passes on, see accept(2)): the next one is accepted at once. The process or
the system may be out of descriptors or buffer memory (``EMFILE``, ``ENFILE``,
``ENOBUFS``, ``ENOMEM``): the listener is still fine, but asking again at once
fails again (the listening socket stays readable, so an event loop would spin),
so accepting pauses, 0.1 s at first, twice as long after each further failure
up to 1 s, and resumes; connections already open are served all along, and
clients meanwhile wait in the listen backlog. Anything else is a broken
listener and is raised. :func:`classify_accept_error` tells the three apart
(anyio's trio backend wraps the ``OSError`` in ``BrokenResourceError``), and
:class:`AcceptThrottle` decides how long to pause and whether to log this
failure: a process out of descriptors fails an ``accept()`` after every pause,
and one log line per pause would flood the log.

:func:`descriptor_usage` reads how many descriptors the process holds against
its soft ``RLIMIT_NOFILE``, for readiness (see ``ServerConfig.readiness_fd_fraction``).
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass

import anyio

from ..metrics import AcceptError

__all__ = [
    "AcceptFailure",
    "AcceptThrottle",
    "AcceptVerdict",
    "classify_accept_error",
    "descriptor_usage",
]

_RESOURCE_ERRORS: dict[int, AcceptError] = {
    errno.EMFILE: "emfile",
    errno.ENFILE: "enfile",
    errno.ENOBUFS: "enobufs",
    errno.ENOMEM: "enomem",
}
# Errors of one pending connection, not of the listener: Linux's accept(2) asks
# to treat the network errors it passes on like EAGAIN; ECONNABORTED is a
# connection reset while it waited in the backlog; EPERM, a firewall rule.
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
        "EINTR",
        "EAGAIN",
    )
    if hasattr(errno, name)
)


class AcceptFailure(enum.Enum):
    """What a failed ``accept()`` means for the listener."""

    CONNECTION = "connection"
    """The pending connection was broken: accept the next one at once."""
    RESOURCES = "resources"
    """Out of descriptors or memory: pause accepting, then try again."""
    LISTENER = "listener"
    """The listener itself failed: raise."""


def classify_accept_error(exc: BaseException) -> tuple[AcceptFailure, AcceptError | None]:
    """Say what a failed ``accept()`` means, and name the resource it lacked.

    Args:
        exc: what ``accept()`` raised: an ``OSError``, or anyio's
            ``BrokenResourceError`` caused by one (its trio backend wraps them).

    Returns:
        The kind of failure, and for :attr:`AcceptFailure.RESOURCES` the
        ``error`` label of ``wsup_accept_failures_total`` (else None). Never raises.
    """
    cause = exc
    if isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, OSError):
        cause = exc.__cause__
    if not isinstance(cause, OSError):
        return AcceptFailure.LISTENER, None
    lacked = _RESOURCE_ERRORS.get(cause.errno or 0)
    if lacked is not None:
        return AcceptFailure.RESOURCES, lacked
    if cause.errno in _CONNECTION_ERRORS:
        return AcceptFailure.CONNECTION, None
    return AcceptFailure.LISTENER, None


@dataclass(frozen=True, slots=True)
class AcceptVerdict:
    """What to do after an ``accept()`` that failed for lack of resources.

    Attributes:
        delay: seconds to wait before accepting again.
        log: whether to log this failure (else it is only counted).
        suppressed: failures not logged since the previous line (when ``log``).
    """

    delay: float
    log: bool
    suppressed: int


class AcceptThrottle:
    """Back-off and log rate for ``accept()`` failing for lack of resources.

    The pause starts at ``first_delay`` and doubles with each failure up to
    ``max_delay``; an accepted connection starts it over. The first failure is
    logged, then at most one every ``log_interval`` seconds, the suppressed
    ones counted in the next line. One throttle serves every listener of a
    server, so the log rate is per process. O(1) per call.

    Args:
        first_delay: the first pause, in seconds.
        max_delay: the longest pause.
        log_interval: seconds between two log lines.
    """

    __slots__ = (
        "_delay",
        "_first_delay",
        "_last_log",
        "_log_interval",
        "_max_delay",
        "_suppressed",
    )

    def __init__(
        self, *, first_delay: float = 0.1, max_delay: float = 1.0, log_interval: float = 10.0
    ) -> None:
        if not 0 < first_delay <= max_delay:
            raise ValueError("need 0 < first_delay <= max_delay")
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._log_interval = log_interval
        self._delay = 0.0
        self._last_log: float | None = None
        self._suppressed = 0

    def failed(self, now: float) -> AcceptVerdict:
        """Record a failure at ``now``; return how long to pause and whether to log."""
        self._delay = min(self._max_delay, self._delay * 2) if self._delay else self._first_delay
        if self._last_log is not None and now - self._last_log < self._log_interval:
            self._suppressed += 1
            return AcceptVerdict(self._delay, False, 0)
        self._last_log = now
        suppressed, self._suppressed = self._suppressed, 0
        return AcceptVerdict(self._delay, True, suppressed)

    def accepted(self) -> None:
        """Record an accepted connection: the next failure pauses ``first_delay`` again."""
        self._delay = 0.0


def descriptor_usage() -> tuple[int, int] | None:
    """Return ``(open descriptors, soft RLIMIT_NOFILE)`` of this process.

    Linux 6.2 and later report the number of open descriptors as the size of
    ``/proc/self/fd``: one ``stat()``, some 20 µs with 20,000 open. Older
    kernels report 0 there, and listing the directory would block the event
    loop (about 170 ms for 20,000): None then, as on systems without a limit.
    Elsewhere (macOS) ``/dev/fd`` is listed. Never raises.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    try:
        count = os.stat("/proc/self/fd").st_size
    except FileNotFoundError:  # pragma: no cover - not Linux
        try:
            count = len(os.listdir("/dev/fd")) - 1  # minus the listing's own
        except OSError:
            return None
    except OSError:
        return None
    return (count, soft) if count > 0 else None
