"""Monitors: an actor learns that another one ended, and why.

Theory of operation: ``context.watch(target)`` records the watcher on the
target's cell, or, for an actor of another node, asks that node through the
backplane to record the watcher's address there. When the target ends for
good (:meth:`Cell.terminate`), every watcher gets one :class:`Down` message in
its mailbox with the reason. Watching an actor that no longer exists (or never
did) gets ``Down(reason=NO_ACTOR)`` at once, as Erlang's ``noproc``. Every
node that watches actors elsewhere also asks the backplane which nodes are
alive (``Backplane.live_nodes``) every ``node_check_interval`` seconds; a watch
of an actor whose node left ends with ``Down(reason=NODE_LOST)``: the actor may
still run, but this node will not hear from it again. Restarts are not ends: a
watched actor that is restarted keeps its address and its watchers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

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


WIRE_KEY: Final = "__wsup_monitor__"
"""Marks the backplane messages of watches across nodes (JSON objects with this key)."""


def node_of(address: str) -> str | None:
    """The node id in an actor address (``actor:<node>.<n>``, ``conn:<node>.<n>``), or
    ``None`` for a name or group."""
    _, colon, rest = address.partition(":")
    node, dot, counter = rest.rpartition(".")
    if not colon or not dot or not node or not counter.isdigit():
        return None
    return node


def wire_watch(watcher: str, target: str) -> dict[str, Any]:
    """The message asking another node to report ``target``'s end to ``watcher``."""
    return {WIRE_KEY: "watch", "watcher": watcher, "target": target}


def wire_unwatch(watcher: str, target: str) -> dict[str, Any]:
    """The message cancelling :func:`wire_watch`."""
    return {WIRE_KEY: "unwatch", "watcher": watcher, "target": target}


def wire_down(watcher: str, down: Down) -> dict[str, Any]:
    """The message telling ``watcher``'s node that the actor it watches ended."""
    error = down.error if down.error is None or isinstance(down.error, str) else repr(down.error)
    return {
        WIRE_KEY: "down",
        "watcher": watcher,
        "target": down.address,
        "reason": down.reason.value,
        "error": error,
    }
