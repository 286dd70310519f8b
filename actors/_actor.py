"""Actors: behaviours, references, and the cell that runs a behaviour.

Theory of operation: a :class:`Cell` owns an actor's address and mailbox for its
whole life. A supervisor runs the cell's *incarnations*: each incarnation makes
a fresh behaviour from the factory, calls ``on_start`` (or ``on_restart``), then
takes messages from the mailbox one at a time until it is told to stop, drains,
or the behaviour raises. The incarnation reports how it ended as an
:class:`Exit`; whether to run another one is the supervisor's decision. When
the actor is finished for good, :meth:`Cell.terminate` closes the mailbox,
turns what is left into dead letters, fails pending ``ask`` calls and removes
the address, its names and its groups.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import sniffio

from ._deadletters import DeadLetter
from ._exceptions import ActorRestarted, ActorStopped, MailboxFull
from ._inline import Resume, Suspended, TaskRunning, step_as
from ._mailbox import Mailbox, MailboxConfig, MailboxStatistics

if TYPE_CHECKING:
    from ._history import Position, Recovery
    from ._runtime import Delivery, Runtime
    from ._timers import Timers

__all__ = ["Actor", "ActorRef", "Cell", "Context", "Exit", "ExitKind", "Reply", "TimerEnvelope"]

# Yield to the event loop at least this often while a mailbox stays non-empty, so
# one busy actor cannot starve the rest when its handler never awaits.
_BATCH: Final = 64


_RENAMED: Final = {
    "started": "on_start",
    "receive": "on_receive",
    "stopping": "on_stop",
    "restarted": "on_restart",
}
"""Hooks renamed to the ``on_*`` scheme of connection handlers: old name → new name."""


class Actor:
    """The behaviour of an actor. Subclass it and override the ``on_*`` hooks you need.

    Every hook may be ``async def`` (runs on the event loop) or plain ``def``
    (runs in a worker thread through :func:`anyio.to_thread.run_sync`, so a
    blocking call there cannot stall other actors). Connection handlers
    (:class:`supervisor.Handler`) use the same scheme, plus their own
    ``on_connect``, ``on_message`` and ``on_close``.

    The hooks were called ``started``, ``receive``, ``stopping`` and
    ``restarted`` before; a subclass that still defines those works, with a
    ``DeprecationWarning`` when the class is created.

    The runtime sets :attr:`context` before the first hook runs.
    """

    context: Context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in _RENAMED.items():
            if old in cls.__dict__:
                warnings.warn(
                    f"{cls.__name__}.{old}() is deprecated: name it {new}() "
                    "(same arguments, same meaning)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                if new not in cls.__dict__:
                    setattr(cls, new, cls.__dict__[old])

    async def on_start(self) -> None:
        """Called once when the actor starts, before its first message."""

    async def on_receive(self, message: Any) -> Any:
        """Handle one message. The return value is the reply to an ``ask``.

        Raising crashes this incarnation: the message becomes a dead letter and
        the supervisor decides what happens next.
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle messages")

    async def on_stop(self) -> None:
        """Called when the actor stops (not when it crashes)."""

    async def on_restart(self, error: Exception) -> None:
        """Called instead of :meth:`on_start` on a behaviour created by a restart.

        Args:
            error: what crashed the previous behaviour.
        """
        await _invoke(self.on_start)

    def tell_self(self, message: Any) -> None:
        """Queue ``message`` in this actor's own mailbox, behind what is already there.

        Never waits (an actor waiting for room in its own mailbox would wait
        forever). For a message later in time, use ``self.context.timers``.

        Raises:
            MailboxFull: the mailbox is full under ``block`` or ``reject``.
            MailboxClosed: the actor has stopped.
        """
        self.context.self.tell_nowait(message)

    # The old names, for code that calls them through super(): the base behaviour.
    async def started(self) -> None:
        """Deprecated name of :meth:`on_start`."""
        await Actor.on_start(self)

    async def stopping(self) -> None:
        """Deprecated name of :meth:`on_stop`."""
        await Actor.on_stop(self)

    async def restarted(self, error: Exception) -> None:
        """Deprecated name of :meth:`on_restart`."""
        await Actor.on_restart(self, error)

    def _receiver(self) -> Callable[[Any], Any]:
        """The callable that handles each message (a connection handler dispatches)."""
        return self.on_receive


async def _invoke(fn: Callable[..., Any], *args: Any) -> Any:
    function = getattr(fn, "__func__", None)  # a method: its function is a stable key
    is_async = (
        _is_coroutine_function(function)
        if function is not None
        else inspect.iscoroutinefunction(fn)
    )
    if is_async:
        return await fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


@functools.lru_cache(maxsize=1024)
def _is_coroutine_function(function: Callable[..., Any]) -> bool:
    # Asked for the hooks of every actor that starts: looked up once per method.
    return inspect.iscoroutinefunction(function)


class Reply:
    """The slot an ``ask`` waits on. Settled once; later settlements are ignored."""

    __slots__ = ("_event", "error", "settled", "value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.settled = False

    def set(self, value: Any) -> None:
        """Deliver the reply."""
        if not self.settled:
            self.settled = True
            self.value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        """Fail the request with ``error``."""
        if not self.settled:
            self.settled = True
            self.error = error
            self._event.set()

    async def wait(self) -> Any:
        """Wait for the reply and return it, or raise the failure."""
        await self._event.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Envelope:
    """A message in a mailbox, with the reply slot of an ``ask``."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: Reply | None = None) -> None:
        self.message = message
        self.reply = reply


class TimerEnvelope(Envelope):
    """A timer's message as it sits in a mailbox, with the timer it came from."""

    __slots__ = ("key", "timer_id")

    def __init__(self, message: Any, key: Any, timer_id: int) -> None:
        super().__init__(message)
        self.key = key
        self.timer_id = timer_id


class _Signal(enum.Enum):
    STOP = "stop"  # stop at once (external); no restart
    EXIT = "exit"  # the actor stopped itself (a normal exit)
    DRAIN = "drain"  # finish the mailbox, then stop
    RESUME = "resume"  # finish the step that began inline (Cell.step_inline) first


class ExitKind(enum.StrEnum):
    """How an incarnation ended."""

    STOPPED = "stopped"
    """Stopped from outside (``ref.stop()``, supervisor shutdown); never restarted."""
    EXITED = "exited"
    """The actor stopped itself (``context.stop()``): a normal exit."""
    DRAINED = "drained"
    """Finished its mailbox after a drain request; never restarted."""
    CRASHED = "crashed"
    """The behaviour raised."""
    KILLED = "killed"
    """Cancelled (shutdown timeout elapsed, or a sibling's restart)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """The end of one incarnation.

    Attributes:
        kind: how it ended.
        error: the exception, for ``CRASHED``.
    """

    kind: ExitKind
    error: Exception | None = None


# Exits without an error are values: one each (an ``Exit`` costs a frozen dataclass's
# construction, and a connection's actor ends with one).
_STOPPED = Exit(ExitKind.STOPPED)
_DRAINED = Exit(ExitKind.DRAINED)
_EXITED = Exit(ExitKind.EXITED)


class ActorRef:
    """A handle to send to one actor. Cheap to copy, hashable, valid after the actor stops.

    Sends to a stopped actor raise ``MailboxClosed``.
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def address(self) -> str:
        """The actor's address, e.g. ``actor:3fa9c2.17``."""
        return self._cell.address

    @property
    def alive(self) -> bool:
        """Whether the actor has not stopped for good."""
        return not self._cell.is_terminated

    async def tell(self, message: Any, *, timeout: float | None = None) -> None:
        """Queue ``message``; never waits for it to be processed.

        Waits for mailbox space only under the ``block`` policy. Always a checkpoint.

        Raises:
            MailboxFull: refused by the overflow policy or timed out.
            MailboxClosed: the actor has stopped.
        """
        await self._cell.mailbox.put(Envelope(message), timeout=timeout)

    def tell_nowait(self, message: Any) -> None:
        """Queue ``message`` without waiting.

        Raises:
            MailboxFull: the mailbox is full under ``block`` or ``reject``.
            MailboxClosed: the actor has stopped.
        """
        self._cell.mailbox.put_nowait(Envelope(message))

    async def ask(self, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Send ``message`` and wait for the value ``on_receive`` returns.

        Raises:
            AskTimeout: no reply within ``timeout`` seconds.
            ActorRestarted: the actor crashed while handling this request.
            ActorStopped: the actor stopped before handling it.
            MailboxFull: the mailbox refused the request.
            MailboxClosed: the actor had already stopped.
        """
        return await self._cell.runtime.ask_cell(self._cell, message, timeout=timeout)

    def stop(self) -> None:
        """Ask the actor to stop after the message it is handling; it is not restarted.

        Messages still queued become dead letters. Bypasses a full mailbox.
        """
        self._cell.request_stop()

    def drain(self) -> None:
        """Ask the actor to handle what its mailbox holds now, then stop."""
        self._cell.request_drain()

    async def wait_stopped(self) -> None:
        """Wait until the actor has stopped for good."""
        await self._cell.terminated.wait()

    def statistics(self) -> MailboxStatistics:
        """Return the actor's mailbox statistics."""
        return self._cell.mailbox.statistics()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    def __repr__(self) -> str:
        return f"<ActorRef {self.address}>"


class Context:
    """What a behaviour knows of itself and its surroundings (``self.context``)."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def address(self) -> str:
        """This actor's address."""
        return self._cell.address

    @property
    def self(self) -> ActorRef:
        """A reference to this actor."""
        return self._cell.ref

    @property
    def runtime(self) -> Runtime:
        """The runtime: ``send``, ``publish``, ``broadcast``, ``ask`` to any address."""
        return self._cell.runtime

    @property
    def restarts(self) -> int:
        """How many times this actor has been restarted."""
        return self._cell.restarts

    @property
    def timers(self) -> Timers:
        """This actor's timers (``send_after``, ``send_interval``, ``cancel``), all
        cancelled when it stops, crashes or restarts."""
        return self._cell.timers

    def register(self, name: str, *, meta: Any = None) -> None:
        """Answer to ``name`` too (several actors may share one name).

        ``meta`` (JSON-serialisable with a Redis backplane) is what presence
        reports for this actor under ``name`` (see ``Runtime.presence``).
        """
        self._cell.runtime.add_member(name, self._cell, meta)

    def unregister(self, name: str) -> None:
        """Stop answering to ``name``."""
        self._cell.runtime.remove_member(name, self._cell)

    def join(self, group: str, *, meta: Any = None) -> None:
        """Join ``group``; a ``publish`` to it reaches this actor.

        ``meta``: what presence reports for this actor in ``group`` (a display
        name, a device...); JSON-serialisable with a Redis backplane.
        """
        self._cell.runtime.add_member(group, self._cell, meta)

    def leave(self, group: str) -> None:
        """Leave ``group``."""
        self._cell.runtime.remove_member(group, self._cell)

    async def send(self, address: str, message: Any) -> Delivery:
        """Send to any address and return what it reached; see :meth:`Runtime.send`."""
        return await self._cell.runtime.send(address, message)

    async def publish(self, group: str, message: Any) -> Delivery:
        """Send to every member of ``group``; see :meth:`Runtime.publish`."""
        return await self._cell.runtime.publish(group, message)

    async def broadcast(self, message: Any) -> Delivery:
        """Send to every member of the ``all`` group; see :meth:`Runtime.broadcast`."""
        return await self._cell.runtime.broadcast(message)

    async def ask(self, address: str, message: Any, *, timeout: float | None = 5.0) -> Any:
        """Ask the one actor at ``address``; see :meth:`Runtime.ask`."""
        return await self._cell.runtime.ask(address, message, timeout=timeout)

    async def recover(self, address: str, since: Position, *, meta: Any = None) -> Recovery:
        """Join ``address`` (with presence ``meta``, as :meth:`join`), which keeps a
        history, and return what this actor missed after ``since`` (the position of
        the last record its client saw).

        Call it instead of :meth:`join`. The history is read *after* joining,
        and records that arrive meanwhile are held back, so that the returned
        :attr:`Recovery.records` (the missed records, then the live ones that
        arrived while recovering) are followed by the later live records with
        no gap and no duplicate. Hand them to the client before this hook
        returns: later live records wait in the mailbox until it does (this
        actor's mailbox takes them from now on, even if its handler only forwards).

        When the history no longer covers ``since`` (trimmed by size or age, a
        new epoch, the backplane down), :attr:`Recovery.ok` is false and the
        records are only the live ones: the behaviour decides what its client
        is told. Cost: one read of the history (a round trip to Redis in a cluster).

        Raises:
            ValueError: ``address`` has no history.
        """
        return await self._cell.runtime.recover(self._cell, address, since, meta=meta)

    def watch(self, target: ActorRef | str) -> None:
        """Receive a :class:`~actors.Down` message when ``target`` ends for good.

        ``target`` is a reference or an actor address, on this node or (through
        the backplane) another one. A target that has already ended, or that does
        not exist, gives a ``Down`` at once (``NO_ACTOR`` when there was none); a
        target whose node the backplane reports lost gives ``NODE_LOST``.
        Restarts do not count as ends. Watching twice is watching once. Cost:
        O(1); one backplane message for a remote target.
        """
        cell = self._target(target)
        if cell is None:
            from ._monitor import Down, DownReason

            address = target if isinstance(target, str) else target.address
            if self._cell.runtime.watch_remote(self._cell, address):
                return
            self._cell._deliver_down(Down(address, DownReason.NO_ACTOR))
            return
        self._cell.watch(cell)

    def unwatch(self, target: ActorRef | str) -> None:
        """Stop watching ``target``; no ``Down`` will come for it."""
        cell = self._target(target)
        if cell is not None:
            self._cell.unwatch(cell)
        elif isinstance(target, str):
            self._cell.runtime.unwatch_remote(self._cell, target)

    def _target(self, target: ActorRef | str) -> Cell | None:
        if isinstance(target, ActorRef):
            return target._cell
        return self._cell.runtime.cell(target)

    def stop(self) -> None:
        """Stop this actor after the current message: a normal exit."""
        self._cell.mailbox.put_control(_Signal.EXIT)

    async def next_message(self) -> Any:
        """Take the next message from this actor's own mailbox.

        For behaviours that run their own receive loop inside a hook (the
        websockets-style ``async def handler(conn)``). An ``ask`` taken this
        way is answered with ``None``.

        Raises:
            anyio.EndOfStream: the actor was asked to stop or drain; the signal
                stays queued, so the actor stops once the hook returns.
        """
        mailbox = self._cell.mailbox
        item = await mailbox.get()
        if isinstance(item, Envelope):
            if item.reply is not None:
                item.reply.set(None)
            return item.message
        mailbox.put_control(item)
        raise anyio.EndOfStream


Factory = Callable[[], Actor]


def _ended() -> Actor:
    """The factory of a terminated cell (its own may refer back to the cell's owner)."""
    raise RuntimeError("this actor has terminated: it is never started again")


class Cell:
    """An actor's lasting identity: address, mailbox, memberships, incarnations.

    Args:
        runtime: the runtime it belongs to.
        address: its unique address.
        factory: makes a fresh behaviour for each incarnation.
        mailbox: the mailbox bounds.
        kind: label for metrics (``service``, ``connection``, ...).
    """

    __slots__ = (
        "__weakref__",
        "_inline",
        "_parked",
        "_ref",
        "_terminated",
        "_timers",
        "address",
        "behaviour",
        "direct",
        "end_idle",
        "factory",
        "inline_steps",
        "is_terminated",
        "kind",
        "mailbox",
        "memberships",
        "on_terminate",
        "remote_watchers",
        "restarts",
        "runtime",
        "termination",
        "watchers",
        "watching",
    )

    def __init__(
        self,
        runtime: Runtime,
        address: str,
        factory: Factory,
        *,
        mailbox: MailboxConfig | None = None,
        kind: str = "service",
    ) -> None:
        self.runtime = runtime
        self.address = address
        self.factory = factory
        self.kind = kind
        self.mailbox: Mailbox[Envelope | _Signal] = Mailbox(
            mailbox, address=address, clock=runtime.clock, on_drop=self._dropped
        )
        self._ref: ActorRef | None = ActorRef(self)
        self.behaviour: Actor | None = None
        #: While the actor's task waits for its next message with nothing queued
        #: (asyncio, async ``receive`` only): that task, for :meth:`step_inline`.
        self._parked: asyncio.Task[Any] | None = None
        #: A step :meth:`step_inline` began and the task must finish first:
        #: ``(envelope, when it started, the suspended rest or the exception)``.
        self._inline: tuple[Envelope, float, Suspended | Exception] | None = None
        #: Messages whose step began inline (see :meth:`step_inline`).
        self.inline_steps = 0
        self.memberships: set[str] = set()
        #: Optional fast path for sends to this actor's addresses: called with the
        #: message and a per-send cache shared by all recipients of one fan-out; it
        #: returns True when it has taken the message without the mailbox (used by
        #: connection actors that only forward messages to their client).
        self.direct: Callable[[Any, dict[str, Any]], bool] | None = None
        self.restarts = 0
        # The event is created only when someone waits: idle actors stay small.
        self._terminated: anyio.Event | None = None
        self.is_terminated = False
        self.termination: Exit | None = None
        self._timers: Timers | None = None
        #: Cells that watch this one (created at the first watch).
        self.watchers: dict[Cell, None] | None = None
        #: Cells this one watches, so that its end removes its watches.
        self.watching: dict[Cell, None] | None = None
        #: Addresses of actors on other nodes that watch this one.
        self.remote_watchers: set[str] | None = None
        #: Called once with the final :class:`Exit` when the actor ends for good.
        self.on_terminate: Callable[[Exit], None] | None = None
        #: Set by its supervisor while the cell waits, never started and with
        #: nothing queued, for its first message (a parked child, see
        #: ``Supervisor.start_child_nowait``): a stop or drain then hands it the
        #: exit, and the cell ends at once, with no signal queued and no task.
        self.end_idle: Callable[[Exit], None] | None = None

    @property
    def timers(self) -> Timers:
        """The actor's timers, created at first use."""
        timers = self._timers
        if timers is None:
            from ._timers import Timers

            timers = self._timers = Timers(self)
        return timers

    @property
    def ref(self) -> ActorRef:
        """Its reference: the same object for as long as the actor lives."""
        ref = self._ref
        return ref if ref is not None else ActorRef(self)

    def _dropped(self, item: Envelope | _Signal, policy: str) -> None:
        self.runtime.instrumentation.message_dropped(policy)
        if isinstance(item, Envelope):
            if item.reply is not None:
                config = self.mailbox.config
                item.reply.fail(MailboxFull(self.address, capacity=config.capacity, policy=policy))
            self.runtime.dead_letters.post(
                DeadLetter(self.address, item.message, "dropped", policy)
            )

    def request_stop(self) -> None:
        """Queue a stop signal ahead of all messages (no-op once terminated).

        A cell that was never started and has nothing queued (see
        :attr:`end_idle`) ends at once instead, as it would on that signal.
        """
        end_idle = self.end_idle
        if end_idle is not None:
            end_idle(_STOPPED)
        elif not self.mailbox.closed:
            self.mailbox.put_control(_Signal.STOP)

    def request_drain(self) -> None:
        """Queue a drain signal ahead of all messages (no-op once terminated).

        A cell that was never started and has nothing queued (see
        :attr:`end_idle`) ends at once instead: a drain of an empty mailbox.
        """
        end_idle = self.end_idle
        if end_idle is not None:
            end_idle(_DRAINED)
        elif not self.mailbox.closed:
            self.mailbox.put_control(_Signal.DRAIN)

    def idle_exit(self) -> Exit | None:
        """How this cell would end if it ran now, when that needs no behaviour at all.

        The exit for a stop, drain or exit signal with no message queued (a drain
        of an empty mailbox ends at once); ``None`` if there is work to do. For a
        cell that was never started (see ``Supervisor.start_child_nowait``).
        """
        mailbox = self.mailbox
        if len(mailbox):
            return None
        signal = mailbox.peek_control()
        if signal is _Signal.DRAIN:
            return _DRAINED
        if signal is _Signal.STOP:
            return _STOPPED
        if signal is _Signal.EXIT:
            return _EXITED
        return None

    @property
    def terminated(self) -> anyio.Event:
        """An event set once the actor has ended for good."""
        if self._terminated is None:
            self._terminated = anyio.Event()
            if self.is_terminated:
                self._terminated.set()
        return self._terminated

    async def run_incarnation(
        self, error: Exception | None = None, *, on_started: Callable[[], None] | None = None
    ) -> Exit:
        """Create a behaviour and run it until it stops, drains or crashes.

        Args:
            error: the crash that caused this restart, or ``None`` for a first start.
            on_started: called once ``on_start``/``on_restart`` has returned.

        Returns:
            How the incarnation ended. Cancellation propagates (the caller maps
            it to ``KILLED``); a request in progress then fails its ``ask``.
        """
        if self._timers is not None:
            self._timers.cancel_all()  # nothing of an earlier incarnation fires in this one
        self._drop_inline("restarted")  # begun by an incarnation that was cancelled
        try:
            behaviour = self.factory()
            behaviour.context = Context(self)
            self.behaviour = behaviour
            if error is None:
                await _invoke(behaviour.on_start)
            else:
                self.restarts += 1
                await _invoke(behaviour.on_restart, error)
        except Exception as exc:
            return Exit(ExitKind.CRASHED, exc)
        if on_started is not None:
            on_started()
        try:
            exit_ = await self._loop(behaviour)
            if exit_.kind is not ExitKind.CRASHED:
                try:
                    await _invoke(behaviour.on_stop)
                except Exception as exc:
                    return Exit(ExitKind.CRASHED, exc)
            return exit_
        finally:
            if self._timers is not None:
                self._timers.cancel_all()  # none fires during a restart's backoff either

    async def _loop(self, behaviour: Actor) -> Exit:
        mailbox = self.mailbox
        receive = behaviour._receiver()
        is_async = inspect.iscoroutinefunction(receive)
        runtime = self.runtime
        instrumentation = runtime.instrumentation
        now = runtime.clock.now
        kind = self.kind
        draining = False
        budget = _BATCH
        pending = mailbox.pending
        # Steps may begin inline (step_inline) only on asyncio, for async receive.
        task = (
            asyncio.current_task()
            if is_async and sniffio.current_async_library() == "asyncio"
            else None
        )
        while True:
            if pending():
                item = mailbox.get_nowait()
                budget -= 1
                if budget <= 0:
                    budget = _BATCH
                    await anyio.lowlevel.checkpoint()
            else:
                # Not waiting inside an except clause: an idle actor would keep the
                # exception, its traceback and their frames alive.
                if draining:
                    return Exit(ExitKind.DRAINED)
                budget = _BATCH
                self._parked = task
                try:
                    item = await mailbox.get()
                except anyio.EndOfStream:
                    return Exit(ExitKind.STOPPED)
                finally:
                    self._parked = None
            if item is _Signal.RESUME:
                crashed = await self._finish_inline()
                if crashed is not None:
                    return crashed
                continue
            if item.__class__ is not Envelope:
                if isinstance(item, TimerEnvelope):
                    timers = self._timers
                    if timers is None or not timers.accept(item):
                        continue  # its timer was cancelled or replaced after it was queued
                else:
                    if item is _Signal.STOP:
                        return Exit(ExitKind.STOPPED)
                    if item is _Signal.EXIT:
                        return Exit(ExitKind.EXITED)
                    draining = True
                    continue
            envelope = item
            wait = mailbox.last_wait
            started = mailbox.last_taken
            try:
                if is_async:
                    result = await receive(envelope.message)
                else:
                    result = await anyio.to_thread.run_sync(receive, envelope.message)
            except Exception as exc:
                self._fail_current(envelope, exc)
                return Exit(ExitKind.CRASHED, exc)
            except BaseException:
                # Cancelled mid-message: whoever asked learns it now, not at timeout.
                if envelope.reply is not None:
                    envelope.reply.fail(ActorStopped(self.address))
                raise
            instrumentation.message_processed(kind, wait, now() - started)
            if envelope.reply is not None:
                envelope.reply.set(result)

    def step_inline(self, message: Any) -> bool:
        """Begin the step for ``message`` now, in the caller's transport callback
        (or in the caller's task, which steps aside meanwhile).

        Only while the actor's task waits for its next message with nothing
        queued (asyncio, async ``receive``); otherwise nothing happens and the
        caller queues the message as usual. The step runs on the task's behalf
        (see :mod:`actors._inline`): one message at a time and in order, as
        through the mailbox. A step that finishes without suspending costs no
        task switch; one that suspends, or raises, is handed to the task, which
        finishes it (or crashes with it) before anything else.

        Returns:
            Whether the message was taken.
        """
        task = self._parked
        if task is None or self.mailbox.pending():
            return False
        behaviour = self.behaviour
        assert behaviour is not None
        clock = self.runtime.clock
        started = clock.now()
        # Not parked while the step runs: a message it sends to itself is queued.
        self._parked = None
        rest: Suspended | Exception | None
        try:
            _, rest = step_as(task, behaviour._receiver()(message), aside=True)
        except TaskRunning:
            self._parked = task
            return False
        except Exception as exc:
            rest = exc
        self.inline_steps += 1
        if rest is None:
            self._parked = task
            self.runtime.instrumentation.message_processed(self.kind, 0.0, clock.now() - started)
            return True
        self._inline = (Envelope(message), started, rest)
        self.mailbox.put_control(_Signal.RESUME, first=True)
        return True

    async def _finish_inline(self) -> Exit | None:
        """Finish the step that :meth:`step_inline` began; the exit if it crashed."""
        inline = self._inline
        if inline is None:
            return None  # dropped with the incarnation that began it (_drop_inline)
        self._inline = None
        envelope, started, rest = inline
        try:
            if isinstance(rest, Exception):
                raise rest
            await Resume(rest)
        except Exception as exc:
            self._fail_current(envelope, exc)
            return Exit(ExitKind.CRASHED, exc)
        runtime = self.runtime
        runtime.instrumentation.message_processed(self.kind, 0.0, runtime.clock.now() - started)
        return None

    def _drop_inline(self, reason: str) -> None:
        """Abandon a step begun inline that its incarnation will never finish."""
        inline = self._inline
        if inline is not None:
            self._inline = None
            envelope, _, rest = inline
            if isinstance(rest, Suspended):
                rest.coro.close()
            self.runtime.dead_letters.post(
                DeadLetter(self.address, envelope.message, "stopped", reason)
            )

    def _fail_current(self, envelope: Envelope, exc: Exception) -> None:
        if envelope.reply is not None:
            envelope.reply.fail(ActorRestarted(self.address, error=repr(exc)))
        self.runtime.dead_letters.post(
            DeadLetter(self.address, envelope.message, "failed", repr(exc))
        )

    def watch(self, target: Cell) -> None:
        """Have this cell get a ``Down`` message when ``target`` ends (at once if it has)."""
        from ._monitor import Down

        if target.is_terminated:
            exit_ = target.termination or Exit(ExitKind.STOPPED)
            self._deliver_down(Down.of(target.address, exit_))
            return
        if target.watchers is None:
            target.watchers = {}
        target.watchers[self] = None
        if self.watching is None:
            self.watching = {}
        self.watching[target] = None

    def unwatch(self, target: Cell) -> None:
        """Stop watching ``target`` (no ``Down`` will come for it)."""
        if target.watchers is not None:
            target.watchers.pop(self, None)
        if self.watching is not None:
            self.watching.pop(target, None)

    def _deliver_down(self, down: Any) -> None:
        if self.is_terminated:
            return
        try:
            self.mailbox.put_nowait(Envelope(down))
        except Exception as exc:  # MailboxFull: the watcher cannot take it; say so
            self.runtime.dead_letters.post(DeadLetter(self.address, down, "dropped", repr(exc)))

    def _end_watches(self, exit_: Exit) -> None:
        watching, self.watching = self.watching, None
        for target in watching or ():
            if target.watchers is not None:
                target.watchers.pop(self, None)
        watchers, self.watchers = self.watchers, None
        remote, self.remote_watchers = self.remote_watchers, None
        if watchers or remote:
            from ._monitor import Down, wire_down

            down = Down.of(self.address, exit_)
            for watcher in watchers or ():
                if watcher.watching is not None:
                    watcher.watching.pop(self, None)
                watcher._deliver_down(down)
            for address in remote or ():
                self.runtime.post(address, wire_down(address, down))

    def terminate(self, exit_: Exit) -> None:
        """End this actor for good: close the mailbox, dead-letter the rest, free the address.

        Idempotent.
        """
        if self.is_terminated:
            return
        self.is_terminated = True
        self.termination = exit_
        self._parked = None
        self.end_idle = None
        if self._inline is not None:
            self._drop_inline(exit_.kind)
        for item in self.mailbox.close():
            if isinstance(item, Envelope):
                if item.reply is not None:
                    item.reply.fail(ActorStopped(self.address))
                self.runtime.dead_letters.post(
                    DeadLetter(self.address, item.message, "stopped", exit_.kind)
                )
        self.behaviour = None
        if self._timers is not None:
            self._timers.cancel_all()
        self.runtime.forget(self)
        if not (self.watching is None and self.watchers is None and self.remote_watchers is None):
            self._end_watches(exit_)
        # Drop every edge back to this cell (ref, callbacks bound to its owner): a
        # finished actor is then freed by reference counting, not by the collector.
        self._ref = None
        self.direct = None
        self.factory = _ended
        on_terminate, self.on_terminate = self.on_terminate, None
        if self._terminated is not None:
            self._terminated.set()
        if on_terminate is not None:
            on_terminate(exit_)
