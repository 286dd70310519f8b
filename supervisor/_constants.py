"""Values several modules of :mod:`supervisor` share, each written once.

A leaf module (the standard library only): the app, the handshake, the
connection, the metrics and the command line import it without importing
each other. A number or path that means the same thing in two places belongs
here, under a name; the docs may still spell the values out for users.

The dead-letter reasons are the runtime's and live in :mod:`actors`
(:data:`actors.DEAD_LETTER_REASONS`).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "APP_CLOSE_CODES",
    "CLEAN_CLOSE_CODES",
    "HEALTHZ",
    "METRICS",
    "OPS_PATHS",
    "PROTOCOL_CLOSE_CODES",
    "READYZ",
    "SHUTDOWN_REASON",
    "CloseCode",
    "sendable_close_code",
]


class CloseCode(enum.IntEnum):
    """The WebSocket close codes wsup sends or counts (RFC 6455 §7.4.1).

    Named as in RFC 6455 and ``websockets.frames.CloseCode``; an ``int``, so
    it compares equal to the number on the wire, and shown as that number
    (``repr`` too: a user printing ``conn.close_info()`` sees ``1001``).
    """

    __repr__ = int.__repr__

    NORMAL_CLOSURE = 1000
    """Closed cleanly: the handler returned, ``close()``."""
    GOING_AWAY = 1001
    """The server drains (shutdown) or an idle connection timed out."""
    PROTOCOL_ERROR = 1002
    """The peer broke the WebSocket protocol."""
    UNSUPPORTED_DATA = 1003
    """A data type the endpoint cannot take."""
    NO_STATUS_RCVD = 1005
    """Never on the wire: a close frame without a code, or (as ASGI servers report
    it) no close frame at all."""
    ABNORMAL_CLOSURE = 1006
    """Never on the wire: the connection broke without a close frame."""
    INVALID_DATA = 1007
    """A text message that is not valid UTF-8."""
    POLICY_VIOLATION = 1008
    """A policy of the endpoint refused the message."""
    MESSAGE_TOO_BIG = 1009
    """A message past ``max_size`` or ``max_fragments``."""
    INTERNAL_ERROR = 1011
    """The connection's actor crashed past its intensity, or a ping went unanswered."""
    SERVICE_RESTART = 1012
    """A resumed connection relayed from another node lost that node (``docs/resume.md``)."""
    TRY_AGAIN_LATER = 1013
    """The ``disconnect`` slow-consumer policy's default code."""


PROTOCOL_CLOSE_CODES: Final[frozenset[int]] = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)
"""The codes below 3000 a close frame may carry: those RFC 6455 and its IANA
registry define for the wire (1004, 1005, 1006 and 1015 never are; the rest of
1000-2999 is unassigned, and websockets refuses to send it)."""

CLEAN_CLOSE_CODES: Final[frozenset[int]] = frozenset(
    (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)
)
"""The codes of a clean end: ``ConnectionClosedOK`` rather than ``ConnectionClosedError``."""

SHUTDOWN_REASON: Final = "server shutting down"
"""The close reason of the drain's 1001."""

APP_CLOSE_CODES: Final = range(3000, 5000)
"""Codes left to libraries (3000-3999) and applications (4000-4999)."""


def sendable_close_code(code: int) -> bool:
    """Whether a close frame may carry ``code``."""
    return code in PROTOCOL_CLOSE_CODES or code in APP_CLOSE_CODES


HEALTHZ: Final = "/healthz"
"""Liveness: 200 while the process runs."""
READYZ: Final = "/readyz"
"""Readiness: 200 while this node should get new connections, else 503 and why."""
METRICS: Final = "/metrics"
"""The Prometheus exposition."""
OPS_PATHS: Final[frozenset[str]] = frozenset((HEALTHZ, READYZ, METRICS))
"""The operational endpoints wsup serves itself, on the server port and on
``--metrics-port``; an app cannot route them."""
