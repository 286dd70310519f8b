"""The supervision tree: OTP strategies and restart types, Akka-style restarts.

Theory of operation: a :class:`Supervisor` runs each child's incarnations as
tasks in its own task group and listens to how they end. The rules it applies
are deliberately few:

* a child stopped from outside (``ref.stop()``, drain, shutdown) is never
  restarted; a child that stopped itself is restarted only if ``permanent``;
  a crashed child is restarted unless ``temporary``;
* every restart is recorded in the child's own sliding window and in the
  supervisor's; past the child's intensity the child is stopped for good (a
  connection then closes with 1011; a service is counted as an escalation);
  past the supervisor's, the supervisor stops all its children and raises
  :class:`~actors.Escalation` to its parent;
* a child marked ``critical`` that gives up (a service past its intensity, a
  supervisor that escalated) is not the parent's business: it goes straight to
  the process as a :class:`~actors.CriticalFailure` (``on_critical``);
* ``one_for_all`` / ``rest_for_one`` stop the affected siblings in reverse
  start order, then restart them in start order, after the failed child's
  backoff delay;
* a restart re-creates the behaviour on the same cell: same address, same
  mailbox; the message that failed became a dead letter in the cell.

Shutdown stops dynamic children in parallel, then static children in reverse
start order; each gets ``shutdown_timeout`` seconds before it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import sniffio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors import (
    Actor,
    ActorRef,
    Backoff,
    CriticalFailure,
    Escalation,
    Intensity,
    LeasePolicy,
    MailboxConfig,
    Runtime,
)
from actors._actor import Cell, Exit, ExitKind
from actors._backend import Waiter, primitives
from actors._policy import BackoffState, IntensityWindow

if TYPE_CHECKING:
    from ._singleton import SingletonKeeper

__all__ = ["ChildSpec", "Restart", "SingletonSpec", "Strategy", "Supervisor", "SupervisorSpec"]

_log = structlog.get_logger("wsup.supervisor")


class Strategy(enum.StrEnum):
    """Which children a supervisor restarts when one crashes."""

    ONE_FOR_ONE = "one_for_one"
    """Only the crashed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child."""
    REST_FOR_ONE = "rest_for_one"
    """The crashed child and those started after it."""


class Restart(enum.StrEnum):
    """When a child is restarted."""

    PERMANENT = "permanent"
    """After a crash, and after it stopped itself."""
    TRANSIENT = "transient"
    """After a crash only."""
    TEMPORARY = "temporary"
    """Never."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one actor under a supervisor.

    Attributes:
        factory: makes a fresh behaviour (called again on every restart).
        id: a label for logs (defaults to the behaviour's class name).
        restart: when to restart it.
        shutdown_timeout: seconds it gets to stop before it is cancelled.
        mailbox: its mailbox bounds and overflow policy.
        intensity: the most restarts it may have in a window before it is stopped.
        backoff: the delay between consecutive restarts.
        kind: the metrics label (``service``, ``connection``).
        names: names it answers to from its first start until it stops.
        prefix: the address prefix (``actor`` gives ``actor:<node>.<n>``).
        critical: when it exceeds its intensity, stop the process (readiness
            503, drain, non-zero exit) rather than only this child.
        singleton: run it on one node of the cluster at a time, under a lease
            in the backplane (Redis); with the in-process backplane, once per
            process.
        lease: the lease's timing, for a singleton.
        lease_name: the lease's name (default: the id or factory name); nodes
            running the same app agree on it.
    """

    factory: Callable[[], Actor]
    id: str = ""
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    intensity: Intensity = field(default_factory=Intensity)
    backoff: Backoff = field(default_factory=Backoff)
    kind: str = "service"
    names: tuple[str, ...] = ()
    prefix: str = "actor"
    critical: bool = False
    singleton: bool = False
    lease: LeasePolicy = field(default_factory=LeasePolicy)
    lease_name: str = ""

    @property
    def label(self) -> str:
        """The id, or the factory's name."""
        return self.id or getattr(self.factory, "__name__", type(self.factory).__name__)


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor, which may itself be the child of another.

    Attributes:
        children: static children, started in order.
        strategy: which children a crash restarts.
        intensity: the most restarts of all its children in a window before it
            escalates; ``None`` never escalates (fit for independent dynamic
            children such as connections).
        id: a label for logs.
        restart: when its parent restarts it after it escalated.
        shutdown_timeout: seconds it gets to stop (as a child).
        backoff: the delay before its parent restarts it.
        critical: when it escalates, stop the process (readiness 503, drain,
            non-zero exit) instead of letting its parent restart it.
    """

    children: Sequence[ChildSpec | SupervisorSpec] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: Intensity | None = field(default_factory=lambda: Intensity(10, 10.0))
    id: str = "supervisor"
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = math.inf
    backoff: Backoff = field(default_factory=Backoff)
    critical: bool = False

    @property
    def label(self) -> str:
        """The id."""
        return self.id


@dataclass(frozen=True, slots=True)
class SingletonSpec(SupervisorSpec):
    """A subtree that runs on one node of the cluster at a time (made from a
    ``ChildSpec(singleton=True)``; rarely built by hand).

    Attributes:
        lease: the lease's name (default: the id).
        policy: the lease's timing.
    """

    lease: str = ""
    policy: LeasePolicy = field(default_factory=LeasePolicy)

    @property
    def lease_name(self) -> str:
        """The name of the lease in the backplane."""
        return self.lease or self.id


class _Done:
    """The ``done`` of a child that is not running: already set."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def is_set(self) -> bool:
        return True

    async def wait(self) -> None:
        await anyio.lowlevel.checkpoint()


_NOT_RUNNING = _Done()
_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})


class _Child:
    __slots__ = (
        "_backoff",
        "_window",
        "cell",
        "context",
        "done",
        "dynamic",
        "expected",
        "generation",
        "running",
        "scope",
        "spec",
        "sup",
    )

    def __init__(self, spec: ChildSpec | SupervisorSpec, cell: Cell | None, dynamic: bool) -> None:
        self.spec = spec
        self.cell = cell
        self.sup: Supervisor | SingletonKeeper | None = None
        self.dynamic = dynamic
        #: Fields added to this child's log lines (a connection's route and path).
        self.context: Mapping[str, Any] = _NO_CONTEXT
        # Restart bookkeeping, created at the first restart: most children never restart.
        self._window: IntensityWindow | None = None
        self._backoff: BackoffState | None = None
        self.scope: anyio.CancelScope | _TaskKill | None = None
        self.done: Waiter = _NOT_RUNNING
        self.running = False
        # Set when the supervisor itself stopped this child, so its exit is not a failure.
        self.expected = False
        # Counts incarnations; an exit reported by an older one is stale and ignored.
        self.generation = 0

    @property
    def label(self) -> str:
        return self.cell.address if self.cell is not None else self.spec.label

    @property
    def window(self) -> IntensityWindow:
        if self._window is None:
            spec = self.spec
            self._window = IntensityWindow(
                spec.intensity if isinstance(spec, ChildSpec) else Intensity(10**9, 1.0)
            )
        return self._window

    @property
    def backoff(self) -> BackoffState:
        if self._backoff is None:
            self._backoff = BackoffState(self.spec.backoff)
        return self._backoff

    @property
    def kind(self) -> str:
        return self.spec.kind if isinstance(self.spec, ChildSpec) else "supervisor"


@dataclass(slots=True)
class _Exited:
    child: _Child
    exit: Exit
    generation: int = 0


class _Shutdown:
    __slots__ = ("drain",)

    def __init__(self, drain: bool) -> None:
        self.drain = drain


class Supervisor:
    """Runs and restarts children according to a :class:`SupervisorSpec`.

    Use :meth:`run` as a task (``await task_group.start(sup.run)``); it returns
    after :meth:`shutdown`, or raises :class:`~actors.Escalation`.

    Args:
        runtime: the runtime its actors live in.
        spec: strategy, intensity and static children.
        on_critical: called when a ``critical`` child anywhere below gives up
            (the process should stop); without it, that failure is raised from
            :meth:`run` like an escalation.
    """

    def __init__(
        self,
        runtime: Runtime,
        spec: SupervisorSpec | None = None,
        *,
        on_critical: Callable[[CriticalFailure], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.spec = spec or SupervisorSpec()
        self.on_critical = on_critical
        # Insertion-ordered: start order, O(1) removal (thousands of dynamic children).
        self._children: dict[_Child, None] = {}
        self._window = IntensityWindow(self.spec.intensity) if self.spec.intensity else None
        self._tg: TaskGroup | None = None
        # Created by run(), closed when it returns.
        self._send: MemoryObjectSendStream[_Exited | _Shutdown] | None = None
        self._receive: MemoryObjectReceiveStream[_Exited | _Shutdown] | None = None
        self._pending_restarts: set[anyio.CancelScope] = set()
        self._stopping = False
        self.stopped = anyio.Event()
        # asyncio: dynamic children started without waiting run as bare tasks
        # (see start_child_nowait); the loop is set by run().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bare: set[asyncio.Task[None]] = set()

    # -- public ------------------------------------------------------------------

    @property
    def children(self) -> list[ActorRef]:
        """References to the live actor children (not sub-supervisors), in start order."""
        return [c.cell.ref for c in self._children if c.cell is not None]

    async def run(self, *, task_status: TaskStatus[Supervisor] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the static children in order, then supervise until shut down.

        Raises:
            Escalation: the restart intensity was exceeded; every child has
                been stopped first.
        """
        self.runtime.instrumentation.actor_started("supervisor")
        escalation: Escalation | None = None
        self._send, self._receive = anyio.create_memory_object_stream[_Exited | _Shutdown](math.inf)
        if sniffio.current_async_library() == "asyncio":
            self._loop = asyncio.get_running_loop()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    for spec in self.spec.children:
                        await self._start(spec, dynamic=False)
                    task_status.started(self)
                    escalation = await self._supervise()
                finally:
                    await self._cancel_bare()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            for child in list(self._children):
                self._finish(child, Exit(ExitKind.STOPPED))
            self._children.clear()
            self._send.close()
            self._receive.close()
            self.stopped.set()
            self.runtime.instrumentation.actor_stopped("supervisor")
        if escalation is not None:
            raise escalation

    async def start_child(self, spec: ChildSpec | SupervisorSpec) -> ActorRef | Supervisor:
        """Add a dynamic child and wait until its ``started`` hook has returned.

        Returns:
            The new actor's reference, or the new supervisor.

        Raises:
            RuntimeError: the supervisor is not running.
        """
        started: ActorRef | Supervisor = await self._start(spec, dynamic=True)
        return started

    def start_child_nowait(
        self,
        spec: ChildSpec,
        factory: Callable[[], Actor] | None = None,
        *,
        parked: bool = False,
        log_context: Mapping[str, Any] | None = None,
    ) -> ActorRef:
        """Add a dynamic actor child without waiting for its ``started`` hook.

        Args:
            spec: how to run it.
            factory: makes its behaviour instead of ``spec.factory`` (so one spec
                can serve many children that differ only in what they are built from).
            parked: on asyncio, start no task until the first message or signal
                arrives; a stop, drain or exit that arrives first, with nothing
                queued, ends the child without ever building its behaviour. Only
                for behaviours whose ``started`` and ``stopping`` do nothing (a
                connection handler without ``on_connect`` and ``on_close``). Has
                no effect on other backends.
            log_context: fields added to this child's ``actor.*`` log lines
                (a connection's route and path), bound once here.

        Raises:
            RuntimeError: the supervisor is not running or is shutting down.
        """
        tg = self._require_running()
        child = self._new_child(spec, dynamic=True, factory=factory)
        if log_context is not None:
            child.context = log_context
        assert child.cell is not None
        if self._loop is not None:
            if parked:
                cell = child.cell

                def unpark(exit_: Exit | None = None) -> None:
                    self._unpark(child, exit_)

                cell.mailbox.on_arrival(unpark)
                cell.end_idle = unpark
            else:
                self._start_bare(child)
        else:
            tg.start_soon(self._run_child, child, None)
        return child.cell.ref

    def _start_bare(self, child: _Child) -> None:
        # A bare asyncio task: anyio's start_soon adds a handle, a cancel scope and
        # an event per task, which a connection per child makes costly. run()
        # cancels and awaits these like its task group's own.
        assert self._loop is not None
        task = self._loop.create_task(self._run_child(child, None, bare=True))
        self._bare.add(task)
        task.add_done_callback(self._bare_done)

    def _unpark(self, child: _Child, exit_: Exit | None = None) -> None:
        """Something arrived for a parked child: run it, or end it if it is only told to.

        ``exit_``: a stop or drain that found it parked, nothing queued
        (``Cell.end_idle``): it ends for good now, as the signal would have
        ended it here once queued, without queuing it.
        """
        cell = child.cell
        assert cell is not None
        cell.end_idle = None
        if exit_ is not None:
            cell.mailbox.cancel_arrival()
            self._finish(child, exit_)
            return
        if cell.mailbox.closed or child not in self._children:
            return  # ended while parked (the supervisor stopped)
        exit_ = cell.idle_exit()
        if exit_ is not None and self._ends_for_good(child, exit_):
            # Stopped before it had anything to do: no task, no behaviour.
            self._finish(child, exit_)
        else:
            self._start_bare(child)

    def _bare_done(self, task: asyncio.Task[None]) -> None:
        self._bare.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # _run_child turns every failure into an exit; this is a bug in wsup.
            _log.error("supervisor.child_task_failed", exc_info=task.exception())

    async def _cancel_bare(self) -> None:
        if not self._bare:
            return
        tasks = list(self._bare)
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait(tasks)

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop every child (draining their mailboxes first if ``drain``), then return from
        :meth:`run`. Idempotent; wait with ``await sup.stopped.wait()``."""
        if not self._stopping:
            self._stopping = True
            if self._send is not None:
                # Closed once run() has returned (or was cancelled): nothing to stop.
                with contextlib.suppress(anyio.ClosedResourceError):
                    self._send.send_nowait(_Shutdown(drain))

    # -- starting ------------------------------------------------------------------

    def _require_running(self) -> TaskGroup:
        if self._tg is None or self._stopping:
            raise RuntimeError(f"supervisor {self.spec.id!r} is not running")
        return self._tg

    def _new_child(
        self,
        spec: ChildSpec | SupervisorSpec,
        *,
        dynamic: bool,
        factory: Callable[[], Actor] | None = None,
    ) -> _Child:
        cell = None
        if isinstance(spec, ChildSpec) and spec.singleton:
            from ._singleton import singleton_of

            inner = dataclasses.replace(spec, singleton=False)
            spec = singleton_of(inner, spec.label, spec.lease, spec.lease_name)
        if isinstance(spec, ChildSpec):
            cell = self.runtime.create_cell(
                factory or spec.factory, mailbox=spec.mailbox, kind=spec.kind, prefix=spec.prefix
            )
            for name in spec.names:
                self.runtime.add_member(name, cell)
        child = _Child(spec, cell, dynamic)
        self._children[child] = None
        return child

    async def _start(self, spec: ChildSpec | SupervisorSpec, *, dynamic: bool) -> Any:
        tg = self._require_running()
        child = self._new_child(spec, dynamic=dynamic)
        await tg.start(self._run_child, child, None)
        return child.cell.ref if child.cell is not None else child.sup

    async def _run_child(
        self,
        child: _Child,
        error: Exception | None,
        *,
        bare: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False

        def on_started() -> None:
            nonlocal started
            started = True
            task_status.started()

        generation = child.generation
        child.running = True
        child.done = primitives().event()
        exit_ = Exit(ExitKind.KILLED)
        if bare:
            # A bare asyncio task (start_child_nowait): killed by cancelling the task
            # itself, which costs less than entering and leaving a cancel scope.
            assert child.cell is not None
            task = asyncio.current_task()
            assert task is not None
            kill = _TaskKill(task)
            child.scope = kill
            try:
                exit_ = await child.cell.run_incarnation(error, on_started=on_started)
            except asyncio.CancelledError:
                if not kill.requested:
                    raise  # the supervisor itself is going away
                task.uncancel()
        else:
            with anyio.CancelScope() as scope:
                child.scope = scope
                try:
                    if child.cell is not None:
                        exit_ = await child.cell.run_incarnation(error, on_started=on_started)
                    elif isinstance(child.spec, SingletonSpec):
                        from ._singleton import SingletonKeeper

                        keeper = SingletonKeeper(self.runtime, child.spec, self.on_critical)
                        child.sup = keeper
                        await keeper.run(task_status=_Started(on_started))
                        exit_ = Exit(ExitKind.STOPPED)
                    else:
                        assert isinstance(child.spec, SupervisorSpec)
                        child.sup = Supervisor(
                            self.runtime, child.spec, on_critical=self.on_critical
                        )
                        await child.sup.run(task_status=_Started(on_started))
                        exit_ = Exit(ExitKind.STOPPED)
                except Escalation as exc:
                    exit_ = Exit(ExitKind.CRASHED, exc)
        child.scope = None
        child.running = False
        child.done.set()
        if not started:
            task_status.started()
        if (
            not child.expected
            and generation == child.generation
            and child in self._children
            and self._ends_for_good(child, exit_)
        ):
            # Nothing to decide (a connection that closed, say): finish here, without
            # a round trip through _supervise's queue and task.
            self._finish(child, exit_)
            return
        if self._send is not None:
            with contextlib.suppress(anyio.ClosedResourceError):
                self._send.send_nowait(_Exited(child, exit_, generation))

    # -- supervising ---------------------------------------------------------------

    async def _supervise(self) -> Escalation | None:
        assert self._receive is not None
        async for event in self._receive:
            if isinstance(event, _Shutdown):
                await self._stop_all(drain=event.drain)
                return None
            child, exit_ = event.child, event.exit
            # A group restart may run before the stopped siblings' exits are read here;
            # those exits then belong to an older incarnation and must not count.
            if child.expected or event.generation != child.generation:
                continue
            if child not in self._children:
                continue
            escalation = await self._on_exit(child, exit_)
            if escalation is not None:
                _log.error(
                    "supervisor.escalated",
                    supervisor=self.spec.id,
                    restarts=escalation.restarts,
                    within=escalation.within,
                )
                self.runtime.instrumentation.escalated()
                await self._stop_all(drain=False)
                return escalation
        return None  # pragma: no cover - the stream never ends while we hold a sender

    def _ends_for_good(self, child: _Child, exit_: Exit) -> bool:
        """Whether ``exit_`` ends ``child`` without a restart or a crash to report."""
        if self._stopping:
            # Shutting down: a child that ends now, for whatever reason, stays ended.
            return True
        kind = exit_.kind
        return kind in (ExitKind.STOPPED, ExitKind.DRAINED) or (
            kind is ExitKind.EXITED and child.spec.restart is not Restart.PERMANENT
        )

    async def _on_exit(self, child: _Child, exit_: Exit) -> Escalation | None:
        spec = child.spec
        kind = exit_.kind
        if self._ends_for_good(child, exit_):
            self._finish(child, exit_)
            return None
        error = exit_.error
        if isinstance(error, CriticalFailure):
            # Raised below only when nobody handles critical failures: pass it up as is.
            self._finish(child, exit_)
            return error
        if isinstance(error, Escalation) and spec.critical:
            # A critical subtree escalated (and counted it): the process decides now.
            self._finish(child, exit_)
            return self._critical(child, error.restarts, error.within, error)
        if kind in (ExitKind.CRASHED, ExitKind.KILLED):
            self.runtime.instrumentation.actor_crashed(child.kind)
            _log.error(
                "actor.crashed",
                actor=child.label,
                supervisor=self.spec.id,
                exc_info=error,
                **child.context,
            )
            if spec.restart is Restart.TEMPORARY:
                self._finish(child, exit_)
                return None
        now = self.runtime.clock.now()
        if not child.window.record(now):
            intensity = child.window.intensity
            _log.error(
                "actor.intensity_exceeded",
                actor=child.label,
                supervisor=self.spec.id,
                max_restarts=intensity.max_restarts,
                within=intensity.within,
                critical=spec.critical,
                **child.context,
            )
            self._finish(child, exit_)
            if child.kind == "connection":
                return None  # closed with 1011 and counted as such: that connection's business
            if spec.critical:
                return self._critical(child, intensity.max_restarts + 1, intensity.within, error)
            # A service given up is an escalation of its own: counted, alerted on.
            self.runtime.instrumentation.escalated()
            return None
        if self._window is not None and not self._window.record(now):
            intensity = self._window.intensity
            escalation = Escalation(
                self.spec.id, restarts=intensity.max_restarts + 1, within=intensity.within
            )
            escalation.__cause__ = error
            self._finish(child, exit_)
            return escalation
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        else:
            order = list(self._children)
            group = order[0 if strategy is Strategy.ONE_FOR_ALL else order.index(child) :]
        await self._stop_children([c for c in reversed(group) if c is not child], drain=False)
        delay = child.backoff.next_delay(now)
        self._require_running().start_soon(self._restart, group, child, error, delay)
        return None

    async def _restart(
        self, group: list[_Child], failed: _Child, error: Exception | None, delay: float
    ) -> None:
        scope = anyio.CancelScope()
        self._pending_restarts.add(scope)
        try:
            with scope:
                await self.runtime.clock.sleep(delay)
                for child in group:
                    if self._stopping:
                        # shutdown() was called while we slept; _stop_all will finish them.
                        return
                    if child not in self._children:
                        continue
                    child.expected = False
                    child.generation += 1
                    cause = error if child is failed and isinstance(error, Exception) else None
                    self.runtime.instrumentation.actor_restarted(child.kind)
                    _log.warning(
                        "actor.restarted",
                        actor=child.label,
                        supervisor=self.spec.id,
                        delay=round(delay, 4),
                        cause=type(error).__name__ if child is failed and error else None,
                        **child.context,
                    )
                    tg = self._require_running()
                    await tg.start(self._run_child, child, cause)
        finally:
            self._pending_restarts.discard(scope)

    def _critical(
        self, child: _Child, restarts: int, within: float, error: BaseException | None
    ) -> Escalation | None:
        """A critical child gave up: hand the failure to the process, or escalate."""
        failure = CriticalFailure(child.spec.label, restarts=restarts, within=within)
        failure.__cause__ = error
        if self.on_critical is None:
            return failure  # no process to tell: this supervisor escalates with it
        if not isinstance(error, Escalation):
            self.runtime.instrumentation.escalated()  # a nested supervisor counted its own
        _log.critical(
            "supervisor.critical_failed",
            child=child.spec.label,
            supervisor=self.spec.id,
            restarts=restarts,
            within=within,
        )
        self.on_critical(failure)
        return None

    # -- stopping --------------------------------------------------------------------

    async def _stop_children(self, children: Sequence[_Child], *, drain: bool) -> None:
        for child in children:
            await self._stop_child(child, drain=drain)

    async def _stop_child(self, child: _Child, *, drain: bool) -> None:
        child.expected = True
        if not child.running:
            return
        if child.cell is not None:
            if drain:
                child.cell.request_drain()
            else:
                child.cell.request_stop()
        elif child.sup is not None:
            child.sup.shutdown(drain=drain)
        timeout = child.spec.shutdown_timeout
        with self.runtime.clock.move_on_after(None if math.isinf(timeout) else timeout):
            await child.done.wait()
        if child.running and child.scope is not None:
            _log.warning("actor.shutdown_timeout", actor=child.label, timeout=timeout)
            child.scope.cancel()
            await child.done.wait()

    async def _stop_child_task(self, child: _Child, drain: bool) -> None:
        await self._stop_child(child, drain=drain)

    async def _stop_all(self, *, drain: bool) -> None:
        self._stopping = True
        for scope in list(self._pending_restarts):
            scope.cancel()
        dynamic = [c for c in self._children if c.dynamic]
        static = [c for c in self._children if not c.dynamic]
        if dynamic:
            async with anyio.create_task_group() as tg:
                for child in dynamic:
                    tg.start_soon(self._stop_child_task, child, drain)
        await self._stop_children(list(reversed(static)), drain=drain)
        for child in list(self._children):
            self._finish(child, Exit(ExitKind.DRAINED if drain else ExitKind.STOPPED))

    def _finish(self, child: _Child, exit_: Exit) -> None:
        self._children.pop(child, None)
        if child.cell is not None:
            child.cell.terminate(exit_)


class _TaskKill:
    """Stops a bare asyncio child task, as a cancel scope stops a task-group child."""

    __slots__ = ("_task", "requested")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self.requested = False

    def cancel(self) -> None:
        """Cancel the task; its ``_run_child`` then reports the child as killed."""
        self.requested = True
        self._task.cancel()


class _Started:
    """Adapts a plain callback to the ``task_status`` protocol."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: object = None) -> None:
        self._callback()
