"""The backplane: how a message reaches addresses on other nodes.

Theory of operation: every node keeps its own registry of local actors, names
and groups (see :class:`actors.Runtime`). Delivery to local members never
touches the backplane. A backplane only carries messages between nodes:
the runtime tells it which addresses have local members (``subscribe`` /
``unsubscribe``) and hands it every send that may have remote members
(``publish``); messages arriving from other nodes go to ``node.deliver_remote``.
The in-process backplane has no other nodes, so it carries nothing; the Redis
backplane (``supervisor.redis``) maps the same calls onto Redis pub/sub.

A backplane also keeps what several nodes must agree on: leases (one holder at
a time, with an expiry and a fencing token; how a singleton runs once in a
cluster) and counters (a number every node increments). The base class keeps
them in this process, which is right for a single node; the Redis backplane
keeps them in Redis.

History (see :mod:`actors._history`) is kept by the runtime in this process
unless the backplane says it keeps it itself (:attr:`Backplane.keeps_history`),
for every node at once: then the backplane stamps each message sent to an
address with history, and delivers it to that address's members on every node,
this one included, in offset order.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from ._history import HistoryRead, HistorySpec, Position

__all__ = ["Backplane", "InProcessBackplane", "Node"]


class Node(Protocol):
    """What a backplane sees of the local runtime."""

    @property
    def node_id(self) -> str:
        """This node's cluster-unique id."""
        ...

    def deliver_remote(self, address: str, message: Any) -> int:
        """Deliver a message that came from another node; return local recipients."""
        ...

    def deliver_own(self, address: str, message: Any) -> int:
        """Deliver a record this node sent that the backplane brought back (see
        :meth:`Backplane.append_history`); return local recipients."""
        ...

    def backplane_state_changed(self, up: bool) -> None:
        """Report that the backplane went up or down."""
        ...

    def presence_lost(self, address: str, lost: dict[str, tuple[str, Any]]) -> None:
        """Report members of ``address`` (member -> (node id, meta)) that the backplane
        removed because their node is no longer alive; each is reported by one node."""
        ...


class Backplane(abc.ABC):
    """Carries messages to addresses whose members live on other nodes.

    Implementations must never buffer without bound while disconnected: a send
    that cannot go out fails fast with ``BackplaneUnavailable``.
    """

    #: Short name for logs and ``wsup_build_info``.
    kind: str = "abstract"
    #: Whether other nodes may exist (False lets the runtime skip ``publish``).
    remote: bool = True

    # Leases and counters of a single node; Redis overrides them. Created lazily so
    # that subclasses need not call this class's __init__.
    _local_leases: dict[str, tuple[str, int]]
    _local_counters: dict[str, int]

    def _local(self) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
        if not hasattr(self, "_local_leases"):
            self._local_leases = {}
            self._local_counters = {}
        return self._local_leases, self._local_counters

    #: Seconds between two checks of which nodes are alive, for watches of actors on
    #: other nodes; ``None`` when there are no other nodes to lose.
    node_check_interval: float | None = None

    async def live_nodes(self) -> set[str]:
        """Return the ids of the nodes alive now (this one included, when known).

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        return set()

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> int | None:
        """Take lease ``name`` for ``holder`` for ``ttl`` seconds, if nobody else holds it.

        Returns:
            The fencing token (larger for every new holder of this lease), or
            ``None`` when another holder has it.

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        leases, counters = self._local()
        current = leases.get(name)
        if current is not None:
            return current[1] if current[0] == holder else None
        token = counters[f"fence:{name}"] = counters.get(f"fence:{name}", 0) + 1
        leases[name] = (holder, token)
        return token

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease to ``ttl`` seconds from now.

        Returns:
            False if ``holder`` does not hold it (any more).

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        current = self._local()[0].get(name)
        return current is not None and current[0] == holder

    async def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up, if ``holder`` holds it.

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        leases = self._local()[0]
        current = leases.get(name)
        if current is not None and current[0] == holder:
            del leases[name]

    async def increment(self, key: str) -> int:
        """Add one to counter ``key`` (shared by every node) and return the new value.

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        counters = self._local()[1]
        value = counters[key] = counters.get(key, 0) + 1
        return value

    def member_joined(self, address: str, member: str, meta: Any = None) -> None:  # noqa: B027
        """``member`` (an actor's own address) now answers to name or group ``address``,
        with presence metadata ``meta`` (called again when only ``meta`` changed).

        For presence across nodes; the base class keeps nothing (the runtime
        knows its own members).
        """

    def member_left(self, address: str, member: str) -> None:  # noqa: B027 - optional hook
        """``member`` no longer answers to ``address``; see :meth:`member_joined`."""

    async def presence(self, address: str) -> dict[str, tuple[str, Any]]:
        """Return the members of ``address`` on other nodes too: member -> (node id, meta).

        The base class knows no other node and answers nothing; the runtime
        adds its local members.

        Raises:
            BackplaneUnavailable: the backplane cannot be reached.
        """
        await anyio.lowlevel.checkpoint()
        return {}

    #: Whether this backplane keeps the history of addresses for every node (else the
    #: runtime keeps it in this process, which only a single node may do).
    keeps_history: bool = False

    async def append_history(self, address: str, message: Any, spec: HistorySpec) -> int:
        """Stamp ``message`` with the next offset of ``address`` and deliver the
        :class:`~actors.Record` to the members of ``address`` on every node, this
        one included (through ``node.deliver_remote``), in offset order.

        Only called when :attr:`keeps_history` is true.

        Returns:
            How many other nodes received it.

        Raises:
            BackplaneUnavailable: the history store cannot be reached; nobody got it.
        """
        raise NotImplementedError(f"the {self.kind} backplane keeps no history")

    async def read_history(self, address: str, since: Position, spec: HistorySpec) -> HistoryRead:
        """Return the records of ``address`` after ``since``, or why they cannot be.

        Only called when :attr:`keeps_history` is true, after this node became
        a member of ``address``: it waits until the backplane delivers the
        address's new records here, so that none falls between the read and
        the live records.

        Raises:
            BackplaneUnavailable: the history store cannot be reached.
        """
        raise NotImplementedError(f"the {self.kind} backplane keeps no history")

    @property
    @abc.abstractmethod
    def up(self) -> bool:
        """Whether remote delivery currently works."""

    @abc.abstractmethod
    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        """Connect and carry messages until cancelled.

        Calls ``task_status.started()`` once ready (or once degraded, if the
        implementation allows starting without its broker).
        """

    @abc.abstractmethod
    def subscribe(self, address: str) -> None:
        """Start receiving messages for ``address`` (its first local member appeared)."""

    @abc.abstractmethod
    def unsubscribe(self, address: str) -> None:
        """Stop receiving messages for ``address`` (its last local member left)."""

    @abc.abstractmethod
    async def publish(self, address: str, message: Any) -> int:
        """Send ``message`` to the members of ``address`` on other nodes.

        Returns:
            How many other nodes received it, when the transport knows (else 1).

        Raises:
            BackplaneUnavailable: the transport is down; nothing was buffered.
        """


class InProcessBackplane(Backplane):
    """The single-node backplane: every address is local, nothing crosses a wire."""

    kind = "inprocess"
    remote = False

    @property
    def up(self) -> bool:
        """Always true: there is nothing to lose contact with."""
        return True

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        """Report ready, then wait for cancellation."""
        task_status.started()
        await anyio.sleep_forever()

    def subscribe(self, address: str) -> None:
        """Nothing to do: there are no other nodes."""

    def unsubscribe(self, address: str) -> None:
        """Nothing to do: there are no other nodes."""

    async def publish(self, address: str, message: Any) -> int:
        """Reach no other node (there are none)."""
        await anyio.lowlevel.checkpoint()
        return 0
