"""Resumable connections: the route option, the tokens, and what the client is told.

Theory of operation: on a route with ``resume=Resume(grace=...)``, every new
connection gets a token (:func:`new_token`: 24 random bytes from
:mod:`secrets`), kept in this node's :class:`ResumeTable` with what the
handshake hooks accepted (``Accept.values``), the route and the path. The
client learns it from the first message of the connection (see
:func:`announcement`): browsers cannot read the headers of a 101.

When the socket breaks without a closing handshake (or stops answering
keepalive pings), the connection *detaches* instead of ending
(``Connection._detach``): its actor, names, groups and state stay, and what it
sends meanwhile waits in its outbound buffer under the route's limit and
slow-consumer policy. A handshake on the same route and path that carries
``?resume=TOKEN`` and that the hooks accept with the same values is
*re-attached* to it (``Connection._reattach``): it is told so first, then gets
what waited, then live traffic. Anything else (an unknown or expired token, a
token of another node, other values, another path) is a new connection, told
why its token was refused. After ``grace`` seconds without a resume, the
connection ends with its own reason, ``resume_expired``.

:meth:`ResumeTable.claim` decides; it reads no socket and no clock.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "RESUME_PARAM",
    "ResumeRefusal",
    "Resume",
    "ResumeTable",
    "announcement",
    "new_token",
]

#: The query parameter a client resumes with: ``?resume=TOKEN``.
RESUME_PARAM = "resume"

ResumeRefusal = Literal["unknown", "mismatch", "other_node"]
"""Why a token was refused: ``unknown`` (never issued, expired, ended, or
malformed), ``mismatch`` (the hooks accepted other values, or another route or
path), ``other_node`` (issued by another node that this one cannot reach: no
backplane is shared, or the node did not answer the claim; see ``_relay``)."""

#: Random bytes in a token (its secret part is 32 URL-safe characters).
_TOKEN_BYTES = 24


@dataclass(frozen=True, slots=True)
class Resume:
    """A route's resumable connections (``RouteOptions(resume=Resume(grace=30))``).

    Attributes:
        grace: seconds a connection whose socket broke keeps its actor, waiting
            for its client to come back with its token (``?resume=TOKEN``).
    """

    grace: float = 30.0

    def __post_init__(self) -> None:
        if not self.grace > 0:
            raise ValueError(f"resume grace must be > 0 seconds, got {self.grace}")


def new_token(node_id: str) -> str:
    """Return an unguessable token that names the node which issued it."""
    return f"{secrets.token_urlsafe(_TOKEN_BYTES)}.{node_id}"


def token_node(token: str) -> str:
    """The node a token names (``""`` for a malformed one)."""
    _, dot, node = token.partition(".")
    return node if dot and _NODE_ID.fullmatch(node) else ""


#: What a node id in a token may be (it becomes part of a backplane address).
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def comparable(values: Mapping[str, Any]) -> Any:
    """``values`` as another node sees them: through JSON, keys sorted (a value JSON
    cannot carry compares by its ``repr``)."""
    return json.loads(json.dumps(dict(values), sort_keys=True, default=repr))


def announcement(
    token: str, grace: float, *, resumed: bool, refused: ResumeRefusal | None = None
) -> str:
    """The first message of every connection on a resumable route (JSON text).

    ``{"type": "wsup.resume", "token": T, "grace": S, "resumed": B}``, plus
    ``"refused": WHY`` when the client came with a token that was refused.
    """
    message: dict[str, Any] = {
        "type": "wsup.resume",
        "token": token,
        "grace": grace,
        "resumed": resumed,
    }
    if refused is not None:
        message["refused"] = refused
    return json.dumps(message)


@dataclass(slots=True)
class _Entry:
    conn: Connection
    route: object
    path: str
    values: Mapping[str, Any]


class ResumeTable:
    """This node's resumable connections, by token."""

    __slots__ = ("_entries", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def issue(self, conn: Connection, route: object, values: Mapping[str, Any]) -> str:
        """Give ``conn`` a token, bound to its route, path and hook values."""
        token = new_token(self.node_id)
        self._entries[token] = _Entry(conn, route, conn.request.path, dict(values))
        return token

    def forget(self, token: str | None) -> None:
        """The connection of ``token`` is over."""
        if token is not None:
            self._entries.pop(token, None)

    def claim(
        self, token: str, route: object, path: str, values: Mapping[str, Any]
    ) -> Connection | ResumeRefusal:
        """The connection a handshake resumes, or why it may not.

        A connection whose socket is still open (its client came back before
        the server saw the old socket break) is returned too: the caller takes
        it over.
        """
        entry = self._entries.get(token)
        if entry is None:
            node = token_node(token)
            return "other_node" if node and node != self.node_id else "unknown"
        if entry.route is not route or entry.path != path or entry.values != dict(values):
            return "mismatch"
        if not entry.conn.resumable:
            return "unknown"
        return entry.conn

    def claim_remote(self, token: str, path: str, values: Any) -> Connection | ResumeRefusal:
        """The connection another node's handshake claims, or why it may not: as
        :meth:`claim`, with the hooks' ``values`` as :func:`comparable` made them
        (the route is the one ``path`` matches, on every node of the app)."""
        entry = self._entries.get(token)
        if entry is None:
            return "unknown"
        if entry.path != path or comparable(entry.values) != values:
            return "mismatch"
        if not entry.conn.resumable:
            return "unknown"
        return entry.conn
