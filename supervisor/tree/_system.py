"""The actor system: a runtime plus a root supervisor, as one async context manager."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from actors import (
    Actor,
    ActorRef,
    Backplane,
    Clock,
    CriticalFailure,
    Delivery,
    Escalation,
    Instrumentation,
    Intensity,
    MailboxConfig,
    Runtime,
    SystemFailed,
)

from ._tree import ChildSpec, Restart, Strategy, Supervisor, SupervisorSpec

__all__ = ["ActorSystem"]

_log = structlog.get_logger("wsup.supervisor")


class ActorSystem:
    """A runtime and its root supervisor.

    ::

        async with ActorSystem() as system:
            counter = await system.spawn(Counter)
            print(await counter.ask("increment"))

    On leaving the block every actor is stopped (children in reverse start
    order). If the root supervisor escalates, the block is cancelled and
    :class:`~actors.SystemFailed` is raised, chained to the escalation: a
    failed system never hangs silently. So is a child marked ``critical`` that
    gives up, unless ``on_critical`` handles it (the server drains and exits).

    Args:
        children: static children of the root, started in order on entry.
        strategy: the root's restart strategy.
        intensity: the root's restart intensity (``None``: never escalate).
        backplane: the cross-node transport (default: in-process).
        clock: the time source (default: monotonic; tests pass a ``FakeClock``).
        instrumentation: receives runtime events (metrics).
        node_id: this node's id in addresses.
        on_critical: called when a ``critical`` child gives up (default: the
            system fails as if the root had escalated).
    """

    def __init__(
        self,
        *children: ChildSpec | SupervisorSpec,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        intensity: Intensity | None = None,
        backplane: Backplane | None = None,
        clock: Clock | None = None,
        instrumentation: Instrumentation | None = None,
        node_id: str | None = None,
        on_critical: Callable[[CriticalFailure], None] | None = None,
    ) -> None:
        self.runtime = Runtime(
            backplane=backplane, clock=clock, instrumentation=instrumentation, node_id=node_id
        )
        self.root = Supervisor(
            self.runtime,
            SupervisorSpec(children, strategy=strategy, intensity=intensity, id="root"),
            on_critical=on_critical or self._fail,
        )
        self._tg: TaskGroup | None = None
        self._failure: Escalation | None = None

    async def __aenter__(self) -> ActorSystem:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await tg.start(self.runtime.run)
            await tg.start(self.runtime.timers.run)
            await tg.start(self.runtime.run_monitors)
            await tg.start(self._run_root)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _run_root(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self.root.run(task_status=_Forward(task_status))
        except Escalation as exc:
            self._fail(exc)

    def _fail(self, failure: Escalation) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        _log.critical("system.failed", error=str(failure))
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        try:
            if self._failure is None:
                self.root.shutdown()
                with anyio.CancelScope(shield=True):
                    await self.root.stopped.wait()
            tg.cancel_scope.cancel()
        finally:
            try:
                suppressed = await tg.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                # The task group is an implementation detail: when it only wraps the
                # body's own error, let that error propagate as it was raised.
                if exc is None or not _only_wraps(group, exc):
                    raise
                suppressed = False
        if self._failure is not None:
            raise SystemFailed(
                f"the actor system stopped: {self._failure}", escalation=self._failure
            ) from self._failure
        return suppressed

    async def spawn(
        self,
        factory: Callable[[], Actor],
        *,
        names: tuple[str, ...] = (),
        restart: Restart = Restart.TRANSIENT,
        mailbox: MailboxConfig | None = None,
        **options: Any,
    ) -> ActorRef:
        """Start an actor under the root supervisor and wait for its ``started`` hook.

        Args:
            factory: makes the behaviour (a class or any zero-argument callable).
            names: names it answers to.
            restart: restart type (default ``transient``).
            mailbox: mailbox bounds and policy.
            **options: further :class:`ChildSpec` fields.

        Raises:
            RuntimeError: the system is not running.
        """
        spec = ChildSpec(
            factory, names=names, restart=restart, mailbox=mailbox or MailboxConfig(), **options
        )
        ref = await self.root.start_child(spec)
        assert isinstance(ref, ActorRef)
        return ref

    async def send(self, address: str, message: Any, *, timeout: float | None = None) -> Delivery:
        """Send to any address and return what it reached; see :meth:`actors.Runtime.send`."""
        return await self.runtime.send(address, message, timeout=timeout)

    async def publish(self, group: str, message: Any) -> Delivery:
        """Send to every member of ``group``; see :meth:`actors.Runtime.publish`."""
        return await self.runtime.publish(group, message)

    async def broadcast(self, message: Any) -> Delivery:
        """Send to every member of the ``all`` group; see :meth:`actors.Runtime.broadcast`."""
        return await self.runtime.broadcast(message)

    async def ask(self, address: str, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Ask the one actor at ``address``; see :meth:`actors.Runtime.ask`."""
        return await self.runtime.ask(address, message, timeout=timeout)


def _only_wraps(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether ``group`` holds ``exc`` and, besides it, only cancellations."""
    cancelled = anyio.get_cancelled_exc_class()
    rest = group.split(lambda e: e is exc or isinstance(e, cancelled))[1]
    return rest is None and group.subgroup(lambda e: e is exc) is not None


class _Forward:
    __slots__ = ("_status",)

    def __init__(self, status: anyio.abc.TaskStatus[None]) -> None:
        self._status = status

    def started(self, value: object = None) -> None:
        self._status.started()
