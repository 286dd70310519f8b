"""Monitors: an actor learns that another one ended, and why.

Theory of operation: ``context.watch(target)`` records the watcher on the
target's cell. When the target ends for
good (:meth:`Cell.terminate`), every watcher gets one :class:`Down` message in
its mailbox with the reason. Watching an actor that no longer exists (or never
did) gets ``Down(reason=NO_ACTOR)`` at once, as Erlang's ``noproc``; so does a
watch of an actor on another node, which this node cannot follow yet
(``NODE_LOST`` is reserved for that). Restarts are not ends: a watched actor that is restarted
keeps its address and its watchers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._actor import Exit

__all__ = ["Down", "DownReason"]


class DownReason(enum.StrEnum):
    """Why a watched actor is gone."""

    STOPPED = "stopped"
    """Stopped from outside (``ref.stop()``, shutdown)."""
    EXITED = "exited"
    """It stopped itself (``context.stop()``)."""
    DRAINED = "drained"
    """It finished its mailbox after a drain request."""
    CRASHED = "crashed"
    """It crashed and its supervisor did not restart it (intensity exceeded, temporary)."""
    KILLED = "killed"
    """It was cancelled (shutdown timeout)."""
    NO_ACTOR = "no_actor"
    """There was no such actor when the watch began."""
    NODE_LOST = "node_lost"
    """The backplane lost the actor's node; the actor's own fate is unknown."""


@dataclass(frozen=True, slots=True)
class Down:
    """The message a watcher receives when the actor it watches has ended.

    Attributes:
        address: the watched actor's address.
        reason: why it is gone.
        error: for ``CRASHED``, the exception (on this node) or its ``repr``
            (from another node); else ``None``.
    """

    address: str
    reason: DownReason
    error: BaseException | str | None = None

    @classmethod
    def of(cls, address: str, exit_: Exit) -> Down:
        """The ``Down`` for an actor that ended with ``exit_``."""
        return cls(address, DownReason(exit_.kind.value), exit_.error)
