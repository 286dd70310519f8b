"""One WebSocket connection: the socket side of a connection actor.

Theory of operation: a connection is three layers. The
:class:`~supervisor.server._core.ConnectionCore` (``_core.py``) does everything that
needs no I/O: it parses bytes into messages, assembles fragments, keeps the
outbound buffer and its slow-consumer verdicts, frames what goes out and keeps
the closing handshake's books. A *driver* (``_drivers.py``) moves bytes
between the core and the socket: asyncio transport callbacks on plain TCP, or
anyio streams (trio, and TLS on either backend). The :class:`Connection` in
between is what handlers see (``send``, ``close``, ``recv``...) and what ties
the socket to the connection's actor: it hands each message to the actor
(beginning its step in the read callback when the driver allows it, see
``Cell.step_inline``), acts on what the core reports (a close, dropped
messages, a pong), and keeps the connection's state and its gauge.

Backpressure: a full ``block`` mailbox makes the driver stop reading until the
actor took the message (TCP backpressure on the client); an outbound buffer
over its limit stops reading too, since reading is what queues pongs.

Closing: whoever closes, the connection ends up telling its actor to drain
(finish its mailbox, then ``on_close``); and whenever the actor ends for good,
the connection closes — with 1011 if the actor crashed past its restart
intensity, 1001 while the server drains, 1000 otherwise.

Detaching (routes with ``resume``, see ``_resume``): when the socket breaks
without a closing handshake, the connection keeps its actor and swaps its
socket side for a parked one (a core without a socket, :class:`_Parked` for a
driver), where what the actor sends waits under the same limit and policy; the
old driver's :class:`DriverPort` is pointed at a :class:`_Husk`, and the driver
finishes against it. A resume swaps in the
new socket's core and driver (:meth:`Connection._reattach`); the grace window's
end finalizes the connection as any other end would.

A connection reaches its server only through :class:`ConnectionHost`, and its
socket only through a :class:`Driver`; the driver reaches the connection only
through the :class:`DriverPort` the connection gives it. A driver for another
transport implements :class:`Driver` and feeds the core, as the ASGI one does.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
from websockets.protocol import State
from websockets.server import ServerProtocol

from actors import ActorRef, Clock, DeadLetter, MailboxClosed, MailboxFull
from actors._actor import Cell, Envelope, Exit, ExitKind
from actors._backend import primitives

from .._constants import CLEAN_CLOSE_CODES, SHUTDOWN_REASON, CloseCode
from .._exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, OutboundFull
from ._app import RESUMED, FromClient, Handler, Request, RouteOptions
from ._core import (
    ARM_CLOSE_TIMER,
    FAILED,
    RESCHEDULE,
    CloseRecorded,
    ConnectionCore,
    InboundLimited,
    MessagesDropped,
    PongReceived,
    TrafficCounters,
)
from ._keepalive import Keepalive, KeepaliveConfig
from ._limits import InboundLimiter
from ._outbound import OutboundItem, OutboundVerdict, frame_header, wire_message
from ._resume import ResumeRefusal, announcement

if TYPE_CHECKING:
    from ..metrics import LimitName
    from ._config import ServerConfig

__all__ = [
    "Connection",
    "ConnectionHost",
    "ConnectionState",
    "ConnectionStatistics",
    "Driver",
    "DriverPort",
]

_ACCEPT = OutboundVerdict.ACCEPT
_WAIT = OutboundVerdict.WAIT


class ConnectionState(enum.StrEnum):
    """Where a connection is in its life."""

    OPEN = "open"
    DETACHED = "detached"
    """Its socket broke; its actor waits for the client to resume (routes with ``resume``)."""
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


# Members as module constants: on Python 3.11 ``ConnectionState.CLOSING`` is a
# lookup of about 0.15 µs, and the end of every connection makes a dozen.
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED
_ABNORMAL_CLOSURE = CloseCode.ABNORMAL_CLOSURE


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of one connection: its traffic, and what the server holds for it.

    Attributes:
        messages_in: complete messages received from the client.
        messages_out: messages written to the client.
        bytes_in: bytes read from the socket.
        bytes_out: bytes written to the socket.
        buffered_bytes: bytes waiting in the outbound buffer (see
            :attr:`Connection.buffered_bytes`).
        partial_bytes: bytes of the fragmented message being assembled.
        partial_fragments: how many fragments of it have arrived.
        reading_paused: whether the server has stopped reading from the client:
            its mailbox is full under ``block``, the outbound buffer is over
            its limit, or the client is over its route's inbound rate.
        inline_steps: messages whose handler step began in the read callback
            itself, without the mailbox (asyncio, plain TCP: see
            ``docs/architecture.md``).
    """

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    buffered_bytes: int
    partial_bytes: int
    partial_fragments: int
    reading_paused: bool
    inline_steps: int


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Gauge(Protocol):
    def inc(self, amount: int = 1) -> None: ...
    def dec(self, amount: int = 1) -> None: ...


class HostCounters(TrafficCounters, Protocol):
    """The server's batched metrics a connection updates."""

    @property
    def ping_rtt(self) -> _Observer: ...
    @property
    def states(self) -> Mapping[str, _Gauge]: ...


class ConnectionHost(Protocol):
    """What a connection needs from its server, and all it may reach of it."""

    @property
    def config(self) -> ServerConfig:
        """``max_fragments``, ``keepalive`` and ``close_timeout`` are read."""

    @property
    def clock(self) -> Clock: ...
    @property
    def counters(self) -> HostCounters: ...
    @property
    def draining(self) -> bool:
        """Whether the server is shutting down (a connection then never detaches)."""

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``fn`` in a task of the server; False once the server is stopping."""

    def schedule_keepalive(self, conn: Connection) -> None:
        """``conn.keepalive``'s next deadline may have moved earlier."""

    def outbound_dropped(self, address: str, policy: str, count: int) -> None:
        """``count`` outbound messages will never be written (metrics, dead letters)."""

    def dead_letter(self, letter: DeadLetter) -> None:
        """A message to the connection that nobody will handle."""

    def limited(self, limit: LimitName, conn: Connection) -> None:
        """A limit acted on ``conn`` (counted, and logged at a bounded rate)."""

    def connection_detached(self, conn: Connection) -> None:
        """The connection's socket broke and its actor waits for a resume."""

    def connection_closed(
        self, conn: Connection, code: int, reason: str, initiator: str, label: str
    ) -> None:
        """The connection is over (called once)."""


@dataclass(slots=True, eq=False)
class DriverPort:
    """What a driver may reach of its connection, and all of it.

    A connection makes one for its driver (:meth:`Driver.bind`) and keeps no
    reference to it. The steps are the connection's own bound methods: calling
    one through the port costs what calling the method itself would.

    A driver reads (feeding ``core.receive_data`` and handing what it returns
    to :attr:`deliver`, then :attr:`settle`), writes what
    ``core.data_to_send()`` returns (then :attr:`after_output` when
    ``core.events`` is not ``None`` or ``core.room_wanted``), and calls
    :attr:`finalize` once when the socket is gone.

    Attributes:
        connection: the connection, for its public API only (``address`` for
            logs, ``abort()``).
        core: the connection's Sans-I/O core.
        clock: the server's clock (``now`` for the core, the driver's sleeps).
        close_timeout: seconds the peer has to end the connection once asked to.
        start_soon: run a coroutine function in a task of the server; False once
            the server is stopping.
        deliver: ``(messages, inline)``: hand a read's messages to the actor, in
            order; ``inline``: in a read callback, where an idle actor's step may
            begin at once. ``None`` once all were handed on, else the index of
            the first that found the mailbox full under ``block``: stop reading,
            :attr:`deliver_waiting` for it, then go on with the rest.
        deliver_waiting: put one message in the mailbox, waiting for room.
        settle: ``(now)``, after a read's messages were handed on: True while
            the outbound buffer is over its limit (read nothing more until it
            is not: reading is what queues pongs).
        after_output: act on the core's events and wake whoever waits for room.
        wait_for_room: wait until the outbound buffer shrinks or the connection
            closes.
        room: wake whoever waits for room (the writer ended).
        lost: the socket is gone or being dropped.
        finalize: account for the end of the connection (idempotent).
    """

    connection: Connection
    core: ConnectionCore
    clock: Clock
    close_timeout: float
    start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], bool]
    deliver: Callable[[list[str | bytes], bool], int | None]
    deliver_waiting: Callable[[str | bytes], Awaitable[None]]
    settle: Callable[[float], bool]
    after_output: Callable[[], None]
    wait_for_room: Callable[[], Awaitable[None]]
    room: Callable[[], None]
    lost: Callable[[], None]
    finalize: Callable[[], None]


class Driver(Protocol):
    """Moves bytes (or whole messages) between a connection's core and its socket,
    reaching the connection only through the :class:`DriverPort` it is given."""

    #: In transport callbacks (no task per connection): the server aborts these
    #: when it stops, as no cancellation reaches them.
    uses_callbacks: bool
    #: ``Connection.send`` lets other tasks run once per this many calls.
    send_batch: int
    #: The core frames what is sent (False: the driver's peer frames whole
    #: messages itself, as an ASGI server does).
    framed: bool

    def bind(self, port: DriverPort) -> None:
        """Serve the connection behind ``port`` (called once by its constructor)."""

    def flush_soon(self) -> None:
        """Messages were queued: write them soon (by the end of this loop turn)."""

    def flush_now(self) -> None:
        """Something urgent is due (a pong, a close frame): write it now if possible."""

    def flush_pending(self) -> None:
        """The buffer is full: write at once what only waits for a scheduled write."""

    def write_direct(self, item: OutboundItem) -> bool:
        """Write a pre-encoded frame at once, ahead of nothing; False: queue it."""

    def arm_close_timer(self) -> None:
        """Give the peer ``close_timeout`` seconds to end the connection, then drop it."""

    def abort(self) -> None:
        """Drop the socket now."""

    def reading_paused(self) -> bool:
        """Whether reading is stopped (backpressure)."""

    def closed(self) -> Awaitable[None]:
        """Wait until the socket is closed."""

    def start(self, resume: bool) -> None:
        """Begin serving without the caller's task (a transport driver takes its
        transport over; ``resume``: reading was paused during the handshake)."""

    def run(self) -> Awaitable[None]:
        """Serve in the caller's task until the connection ends; never raises for I/O."""


class _Ended:
    """The driver of a finished connection: nothing left to do.

    A connection drops its real driver when it ends: the two refer to each
    other, and a cycle would leave every closed connection to the garbage
    collector instead of freeing it at once.
    """

    uses_callbacks = False
    send_batch = 1
    framed = False

    def bind(self, port: DriverPort) -> None:
        """Nothing to bind."""

    def flush_soon(self) -> None:
        """Nothing is written any more."""

    def flush_now(self) -> None:
        """Nothing is written any more."""

    def flush_pending(self) -> None:
        """Nothing is written any more."""

    def write_direct(self, item: OutboundItem) -> bool:
        """Nothing is written any more."""
        return False

    def arm_close_timer(self) -> None:
        """The connection is closed already."""

    def abort(self) -> None:
        """The socket is gone already."""

    def reading_paused(self) -> bool:
        """Nothing is read any more."""
        return False

    async def closed(self) -> None:
        """The socket is closed."""

    def start(self, resume: bool) -> None:
        """A finished connection does not start again."""

    async def run(self) -> None:
        """A finished connection does not run again."""


_ENDED = _Ended()


class _Parked(_Ended):
    """The driver of a detached connection: no socket, so nothing is written; what
    is sent waits in the outbound buffer. Closing it (the handler's ``close``, the
    actor's end, a slow-consumer disconnect) ends the connection at once."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def flush_now(self) -> None:
        """Nothing is written; a close ends the detached connection now."""
        conn = self._conn
        if conn._core.closing:
            conn._finalize()

    def abort(self) -> None:
        """End the detached connection now."""
        self._conn._finalize()


class _Husk:
    """What the driver of a broken socket serves once its connection detached.

    Detaching points the driver's :class:`DriverPort` here: the driver runs to
    its end (a last callback, a cancelled task) against the socket's own core,
    and nothing it reads or reports reaches the connection, which has moved on.
    """

    __slots__ = ("_core", "_driver", "_finished", "address")

    def __init__(self, address: str, core: ConnectionCore, driver: Driver) -> None:
        self._core = core
        self._driver = driver
        self._finished = False
        self.address = address

    def take_over(self, port: DriverPort) -> None:
        """Make ``port``'s steps this husk's (the driver holds the port itself)."""
        port.connection = cast("Connection", self)  # for its address and abort() only
        port.deliver = self.deliver
        port.deliver_waiting = self.deliver_waiting
        port.settle = self.settle
        port.after_output = self.after_output
        port.wait_for_room = self.wait_for_room
        port.room = self.room
        port.lost = self.lost
        port.finalize = self.finalize

    def deliver(self, messages: list[str | bytes], inline: bool) -> int | None:
        return None  # read from a socket its client left: nobody reads them

    async def deliver_waiting(self, message: str | bytes) -> None:
        """Nobody reads it."""

    def settle(self, now: float) -> bool:
        self._core.after_read(now)
        self._core.take_events()
        return False

    def after_output(self) -> None:
        self._core.take_events()
        self._core.room_wanted = False

    async def wait_for_room(self) -> None:
        """Nothing is queued: never wait."""

    def room(self) -> None:
        """Nobody waits."""

    def lost(self) -> None:
        self._core.lost()
        self._core.take_events()

    def abort(self) -> None:
        self._driver.abort()

    def finalize(self) -> None:
        if not self._finished:
            self._finished = True
            self._core.finish()  # ends the parser; the buffer was moved on already
            self._core.take_events()
            self._driver = _ENDED


#: A relayed connection's keepalive: none (the relay's node keeps its socket alive).
_NO_KEEPALIVE = KeepaliveConfig(ping_interval=None, message_timeout=None)


def _parked_protocol() -> ServerProtocol:
    """A protocol past its handshake with no socket behind it: a detached core's."""
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    return protocol


class Connection:
    """One open WebSocket connection, as its actor and the app see it.

    Attributes:
        request: the handshake request (path, params, query, headers, cookies,
            client address).
        subprotocol: the negotiated subprotocol, if any.
        address: the connection actor's address (``conn:<node>.<n>``).
        state: the :class:`ConnectionState`.
        ref: a reference to the connection's actor.
        resume_token: on a route with ``resume``, the token its client resumes
            it with (also the connection's first message); else ``None``.
    """

    __slots__ = (
        "_announcement",
        "_attachments",
        "_checkpoint",
        "_claiming",
        "_core",
        "_driver",
        "_finished",
        "_frames_once",
        "_grace",
        "_host",
        "_parked",
        "_port",
        "_sends",
        "_space",
        "_uses_callbacks",
        "address",
        "cell",
        "keepalive",
        "opened_at",
        "ref",
        "request",
        "resume_token",
        "route",
        "state",
        "subprotocol",
    )

    def __init__(
        self,
        host: ConnectionHost,
        protocol: ServerProtocol,
        request: Request,
        route: RouteOptions,
        subprotocol: str | None,
        driver: Driver,
    ) -> None:
        self._host = host
        self.request = request
        self.route = route
        self.subprotocol = subprotocol
        self.address = ""
        self.state = ConnectionState.OPEN
        self.opened_at = now = host.clock.now()
        self._core = core = self._new_core(protocol, now)
        #: The keepalive deadlines (the server's keepalive task reads them).
        self.keepalive: Keepalive = core.keepalive
        self._space: anyio.Event | None = None
        #: The backend's checkpoint, looked up at the first batch of sends that needs it.
        self._checkpoint: Callable[[], Awaitable[None]] | None = None
        self._sends = 0
        self._finished = False
        self.cell: Cell | None = None
        self.ref: ActorRef | None = None
        #: The token a client resumes this connection with (routes with ``resume``).
        self.resume_token: str | None = None
        self._parked = False  # detached: the socket side is a parked core
        self._attachments = 0  # sockets it was re-attached to
        self._announcement: OutboundItem | None = None  # the current socket's, until taken
        self._grace: anyio.CancelScope | None = None
        self._driver: Driver = driver
        self._uses_callbacks = driver.uses_callbacks
        self._port: DriverPort | None = None
        self._frames_once = False
        # Set while another node is asked for this connection's actor (see ``_relay``):
        # what the client sends meanwhile waits in the socket.
        self._claiming: anyio.Event | None = None
        self._bind(driver, protocol)

    def _bind(self, driver: Driver, protocol: ServerProtocol) -> None:
        """Serve the connection through ``driver``, over the current core."""
        self._driver = driver
        self._uses_callbacks = driver.uses_callbacks
        # Fan-out may frame a message once for every member (see _deliver_direct).
        self._frames_once = driver.framed and not protocol.extensions
        host = self._host
        port = DriverPort(
            self,
            self._core,
            host.clock,
            host.config.close_timeout,
            host.start_soon,
            self._deliver,
            self._deliver_waiting,
            self._settle,
            self._after_output,
            self._wait_for_room,
            self._room,
            self._lost,
            self._finalize,
        )
        # Kept only on a route with ``resume``: detaching turns the port into a husk's.
        self._port = port if self.route.resume is not None else None
        driver.bind(port)

    def _new_core(
        self, protocol: ServerProtocol, now: float, keepalive: KeepaliveConfig | None = None
    ) -> ConnectionCore:
        route = self.route
        config = self._host.config
        return ConnectionCore(
            protocol,
            self._host.counters,
            keepalive=keepalive or config.keepalive,
            now=now,
            outbound_limit=route.outbound_limit,
            slow_consumer=route.slow_consumer,
            slow_consumer_code=route.slow_consumer_code,
            max_fragments=config.max_fragments,
            max_size=config.max_size,
            inbound=(
                None
                if route.inbound_rate is None and route.inbound_byte_rate is None
                else InboundLimiter(
                    now,
                    messages=route.inbound_rate,
                    bytes_=route.inbound_byte_rate,
                    policy=route.inbound_policy,
                    max_pause=config.keepalive.ping_timeout / 2,
                )
            ),
        )

    # -- what handlers call ------------------------------------------------------------

    @property
    def params(self) -> Any:
        """The route parameters (``/chat/{room}`` → ``conn.params["room"]``)."""
        return self.request.params

    @property
    def remote_address(self) -> tuple[str, int]:
        """The peer's address as the socket sees it."""
        return self.request.remote_address

    @property
    def client_address(self) -> str:
        """The real client IP (the forwarded one behind trusted proxies)."""
        return self.request.client_address

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting in the outbound buffer: messages, and control frames (pongs)."""
        return self._core.outbound.bytes

    @property
    def messages_in(self) -> int:
        """Complete messages received from the client."""
        return self._core.messages_in

    @property
    def messages_out(self) -> int:
        """Messages written to the client."""
        return self._core.messages_out

    @property
    def bytes_in(self) -> int:
        """Bytes read from the socket."""
        return self._core.bytes_in

    @property
    def bytes_out(self) -> int:
        """Bytes written to the socket."""
        return self._core.bytes_out

    @property
    def uses_callbacks(self) -> bool:
        """Whether the socket side runs in transport callbacks (asyncio, plain TCP)."""
        return self._uses_callbacks

    def statistics(self) -> ConnectionStatistics:
        """Return a snapshot of the connection's counters and buffers. Cost: O(1)."""
        core = self._core
        partial_bytes, partial_fragments = core.partial
        return ConnectionStatistics(
            messages_in=core.messages_in,
            messages_out=core.messages_out,
            bytes_in=core.bytes_in,
            bytes_out=core.bytes_out,
            buffered_bytes=core.outbound.bytes,
            partial_bytes=partial_bytes,
            partial_fragments=partial_fragments,
            reading_paused=self._driver.reading_paused(),
            inline_steps=0 if self.cell is None else self.cell.inline_steps,
        )

    def _closed_error(self) -> ConnectionClosed:
        core = self._core
        code, reason, initiator = core.close_info or (
            *(core.close_request or (CloseCode.ABNORMAL_CLOSURE, "")),
            "server",
        )
        cls = ConnectionClosedOK if code in CLEAN_CLOSE_CODES else ConnectionClosedError
        return cls(self.address, code=code, reason=reason, initiator=initiator)

    def close_info(self) -> tuple[int, str]:
        """Return the close code and reason, as known now (``(1000, "")`` if not closing)."""
        core = self._core
        if core.close_info is not None:
            return core.close_info[0], core.close_info[1]
        if core.close_request is not None:
            return core.close_request
        if self.state is ConnectionState.DRAINING:
            return CloseCode.GOING_AWAY, SHUTDOWN_REASON
        return CloseCode.NORMAL_CLOSURE, ""

    def _encode(self, message: str | bytes | bytearray | memoryview) -> OutboundItem:
        if isinstance(message, str):
            return OutboundItem(message.encode(), True)
        if isinstance(message, bytes):
            return OutboundItem(message, False)
        # A tuple, not ``bytearray | memoryview``, which would build a union per call.
        if isinstance(message, (bytearray, memoryview)):
            return OutboundItem(bytes(message), False)
        raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")

    def send_nowait(self, message: str | bytes) -> None:
        """Queue ``message`` for the client without waiting (str → text, bytes → binary).

        A message that does not fit the outbound buffer meets the route's
        slow-consumer policy.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            OutboundFull: the buffer is full and the policy is ``block``.
            TypeError: ``message`` is neither str nor bytes.
        """
        core = self._core
        if core.close_request is not None or core.close_info is not None:
            raise self._closed_error()
        self._enqueue(self._encode(message), wait_ok=False)

    async def send(self, message: str | bytes) -> None:
        """Queue ``message`` for the client.

        Under the ``block`` policy, waits until the buffer has room; other
        policies never wait (see :meth:`send_nowait`). A checkpoint at least
        every 32nd call: a loop that only sends still lets other tasks run and
        can be cancelled.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: ``message`` is neither str nor bytes.
        """
        core = self._core
        if core.close_request is not None or core.close_info is not None:
            raise self._closed_error()
        item = self._encode(message)
        while not self._enqueue(item, wait_ok=True):
            await self._wait_for_room()
            if core.close_request is not None or core.close_info is not None:
                raise self._closed_error()
        self._sends += 1
        if self._sends >= self._driver.send_batch:
            self._sends = 0
            checkpoint = self._checkpoint
            if checkpoint is None:
                checkpoint = self._checkpoint = primitives().checkpoint
            await checkpoint()

    def _enqueue(self, item: OutboundItem, *, wait_ok: bool) -> bool:
        """Apply the slow-consumer policy to ``item``; return False if the caller must wait.

        Used by :meth:`send` and by group fan-out with pre-encoded frames.
        """
        core = self._core
        buffer = core.outbound
        if buffer.bytes + len(item.payload) <= buffer.limit:
            buffer.append(item)
            self._driver.flush_soon()
            return True
        # What waits for a scheduled write is not a backlog: write it now, and the
        # limit applies to what the socket cannot take.
        self._driver.flush_pending()
        verdict = core.offer(item)
        if verdict is _WAIT:
            if wait_ok:
                return False
            raise OutboundFull(self.address, limit=buffer.limit)
        if core.events is not None:
            self._handle_events()
        if verdict is _ACCEPT or verdict is OutboundVerdict.EVICT_OLDEST:
            self._driver.flush_soon()
        return True

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close after flushing what is queued; returns when the socket is closed.

        Idempotent: later calls only wait.
        """
        self.close_nowait(code, reason)
        if not self._finished:
            await self._driver.closed()

    def close_nowait(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake after what is queued has been written."""
        if self._core.close(code, reason):
            self._set_state(ConnectionState.CLOSING)
            self._driver.flush_now()

    def fail(self, code: int, reason: str = "", *, label: str | None = None) -> None:
        """Close at once: discard the outbound buffer, then start the closing handshake.

        What was queued is dropped (and counted) now, so that the close frame is
        the next thing written after the batch the socket is taking, if any
        (about 64 KiB at most). What the kernel's socket buffer already holds
        cannot be taken back: a peer sees the close frame only once it has read
        that. The peer gets ``close_timeout`` seconds from now to complete the
        closing handshake; after that the socket is closed, with or without a
        close frame.
        """
        self._core.fail(code, reason, label=label)
        self._handle_events()

    async def recv(self) -> str | bytes:
        """Return the next message from the client (websockets-style handlers only).

        Messages other actors send meanwhile go to ``on_receive`` (by default:
        forwarded to the client).

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        behaviour = self.cell.behaviour if self.cell is not None else None
        if behaviour is None:
            raise self._closed_error()
        while True:
            try:
                message = await behaviour.context.next_message()
            except anyio.EndOfStream:
                raise self._closed_error() from None
            if message.__class__ is FromClient:
                data: str | bytes = message.data
                return data
            await behaviour._receiver()(message)

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    # -- what the server calls ----------------------------------------------------------

    def send_ping(self) -> None:
        """Send a keepalive ping now (called by the server's keepalive task)."""
        if self._core.ping(self.keepalive.ping_payload):
            self._driver.flush_now()

    def drain(self) -> None:
        """Server shutdown: let the actor finish its mailbox, then close with 1001."""
        if self.state is ConnectionState.OPEN or self.state is ConnectionState.DETACHED:
            self._set_state(ConnectionState.DRAINING)
            if self.cell is not None and not self.cell.is_terminated:
                self.cell.request_drain()
            else:
                self.close_nowait(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    def abort(self) -> None:
        """Stop all I/O at once (close timeout, forced shutdown)."""
        self._lost()
        self._driver.abort()

    def keepalive_timed_out(self) -> None:
        """The client stopped answering pings: fail with 1011, or detach (``resume``)."""
        if self._detachable():
            self._detach()
        else:
            self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", label="timeout")

    # -- resuming (routes with ``resume``) ----------------------------------------------

    @property
    def resumable(self) -> bool:
        """Whether a client may resume this connection now: it is detached, or
        open (its client came back before the server saw the old socket break)."""
        return (self._parked and self.state is ConnectionState.DETACHED) or self._detachable()

    def _detachable(self) -> bool:
        cell = self.cell
        return (
            self.resume_token is not None  # not under the ASGI adapter, which issues none
            and self.state is ConnectionState.OPEN
            and not self._parked
            and self._core.close_request is None
            and cell is not None
            and not cell.is_terminated
            and not self._host.draining
        )

    def _announce(self, token: str, *, resumed: bool, refused: ResumeRefusal | None = None) -> None:
        """Queue the token's message, the first the client gets on this socket."""
        resume = self.route.resume
        assert resume is not None
        self.resume_token = token
        text = announcement(token, resume.grace, resumed=resumed, refused=refused)
        item = self._announcement = OutboundItem(text.encode(), True)
        self._core.outbound.append(item)
        self._driver.flush_soon()

    def _detach(self) -> None:
        """The socket is gone: keep the actor, park what waits to be sent, and let
        the old driver finish with a husk (see :class:`_Husk`)."""
        old, driver, port = self._core, self._driver, self._port
        assert port is not None
        _Husk(self.address, old, driver).take_over(port)
        self._port = None
        parked = self._new_core(_parked_protocol(), self._host.clock.now())
        for item in old.outbound.take_all():  # what the socket never took
            if item is not self._announcement:  # that socket's own: the next gets its own
                parked.outbound.append(item)
        self._announcement = None
        old.outbound.clear()  # its control frames: the old driver waits for room no more
        _carry_counts(old, parked)
        self._core = parked
        self.keepalive = parked.keepalive
        self._driver = _Parked(self)
        self._uses_callbacks = False
        self._parked = True
        self._set_state(ConnectionState.DETACHED)
        self._room()  # a sender waiting for room looks again, at the parked buffer
        driver.abort()  # gone already, or given up for a new socket
        self._host.connection_detached(self)
        resume = self.route.resume
        assert resume is not None
        scope = self._grace = anyio.CancelScope()
        attachments = self._attachments

        async def grace() -> None:
            with scope:
                await self._host.clock.sleep(resume.grace)
                if self._parked and self._attachments == attachments:
                    self._expire()

        if not self._host.start_soon(grace):
            self._expire()

    def _expire(self) -> None:
        """Nobody came back within the grace window: end as a broken connection."""
        core = self._core
        if self._finished or core.closing:
            return
        core.close_info = (CloseCode.ABNORMAL_CLOSURE, "resume window expired", "network")
        core.reason_label = "resume_expired"
        self._finalize()

    def _reattach(
        self,
        protocol: ServerProtocol,
        request: Request,
        subprotocol: str | None,
        driver: Driver,
        keepalive: KeepaliveConfig | None = None,
    ) -> None:
        """Serve this connection on a new socket whose 101 is written (or on a relay to
        another node's socket, see ``_relay``): the client is told first, then gets
        what waited, then live traffic."""
        if not self._parked:
            self._detach()  # taken over: the old socket (or relay) is still open
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._attachments += 1
        parked = self._core
        core = self._core = self._new_core(protocol, self._host.clock.now(), keepalive)
        _carry_counts(parked, core)
        self.keepalive = core.keepalive
        self.request = request
        self.subprotocol = subprotocol
        self._parked = False
        self._bind(driver, protocol)
        self._set_state(ConnectionState.OPEN)
        assert self.resume_token is not None
        self._announce(self.resume_token, resumed=True)
        framed = driver.framed
        for item in parked.outbound.take_all():
            if item.frame and not framed:  # a fan-out's frame: its payload, for a relay
                item = OutboundItem(item.payload[len(item.payload) - item.size :], item.text)
            core.outbound.append(item)
        self._room()  # a sender waiting for room looks again, at the new buffer
        self._tell_resumed()

    def _relay(self, driver: Driver) -> None:
        """Serve this connection through a relay to a socket on another node (see
        ``_relay``): no keepalive here, the relay's node pings its own socket."""
        self._reattach(_parked_protocol(), self.request, self.subprotocol, driver, _NO_KEEPALIVE)

    def _tell_resumed(self) -> None:
        """Have the handler's ``on_resume`` run, after what waited was queued."""
        cell = self.cell
        handler = self.route.handler
        if cell is None or cell.is_terminated:
            return
        if getattr(handler, "on_resume", Handler.on_resume) is Handler.on_resume:
            return  # the default does nothing
        try:
            cell.mailbox.put_nowait(Envelope(RESUMED))
        except (MailboxFull, MailboxClosed):
            self._host.dead_letter(DeadLetter(self.address, RESUMED, "dropped", "mailbox full"))

    # -- wiring to the actor -------------------------------------------------------------

    def _attach(self, ref: ActorRef, cell: Cell, *, relay: bool = False) -> None:
        """Bind the connection actor (called once, right after it is spawned).

        ``relay``: the actor relays another node's connection actor (see ``_relay``).
        """
        self.ref = ref
        self.cell = cell
        self.address = ref.address
        cell.on_terminate = self._actor_ended
        if relay:
            cell.direct = self._deliver_relayed
        elif getattr(self.route.handler, "on_receive", None) is Handler.on_receive:
            # The handler only forwards what other actors send: skip its mailbox.
            cell.direct = self._deliver_direct
        claiming, self._claiming = self._claiming, None
        if claiming is not None:
            claiming.set()

    def _deliver_relayed(self, message: Any, cache: dict[str, Any]) -> bool:
        """What the home node relays: its messages straight to the outbound buffer,
        its instructions (JSON objects) to the relay's mailbox, after them."""
        if message.__class__ is dict:
            return False
        return self._deliver_direct(message, cache)

    def _deliver_direct(self, message: Any, cache: dict[str, Any]) -> bool:
        """Queue a message from another actor straight into the outbound buffer.

        Encodes once per fan-out: the first recipient stores the payload (and,
        for uncompressed connections, the complete frame) in ``cache``; the
        others reuse the same bytes.
        """
        core = self._core
        if core.close_request is not None or core.close_info is not None:
            self._host.dead_letter(
                DeadLetter(self.address, message, "stopped", "connection closing")
            )
            return True
        item = cache.get("item")
        if item is None:
            try:
                item = self._encode(wire_message(message))
            except (TypeError, ValueError):
                return False  # let on_receive deal with it (and fail loudly)
            cache["item"] = item
        if self._frames_once:
            framed = cache.get("frame")
            if framed is None:
                framed = cache["frame"] = OutboundItem(
                    frame_header(item.text, len(item.payload)) + item.payload,
                    item.text,
                    frame=True,
                    size=len(item.payload),
                )
            item = framed
            if self._driver.write_direct(item):
                return True
        try:
            self._enqueue(item, wait_ok=False)
        except OutboundFull:
            self._host.outbound_dropped(self.address, "block_timeout", 1)
        return True

    def _actor_ended(self, exit_: Exit) -> None:
        core = self._core
        if core.close_request is not None or core.close_info is not None:
            return  # closing already (the usual end): close_nowait would do nothing
        if exit_.kind is ExitKind.CRASHED:
            # Unlike a dead peer, a crash keeps what the handler sent before it: flush, then 1011.
            self.close_nowait(CloseCode.INTERNAL_ERROR, "internal error")
        elif self.state is ConnectionState.DRAINING:
            self.close_nowait(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        else:
            self.close_nowait(CloseCode.NORMAL_CLOSURE, "")

    def _set_state(self, state: ConnectionState) -> None:
        gauges = self._host.counters.states
        gauges[self.state].dec()
        self.state = state
        if state is not _CLOSED:
            gauges[state].inc()

    # -- for drivers ----------------------------------------------------------------------

    def _deliver(self, messages: list[str | bytes], inline: bool) -> int | None:
        """Hand ``messages`` to the actor, in order.

        ``inline``: the driver reads in a callback outside any task, where an
        idle actor's step may begin at once (``Cell.step_inline``).

        Returns:
            ``None`` once all were handed on, or the index of the first that
            found the mailbox full under ``block``: the driver stops reading,
            waits for room with :meth:`_deliver_waiting`, then goes on with the
            rest.
        """
        ref = self.ref
        if ref is None:
            # Claiming: wait (reading paused) for the actor. Else nobody will read them.
            return None if self._claiming is None else 0
        cell = self.cell
        index = 0
        for message in messages:
            envelope = FromClient(message)
            if inline and cell is not None and cell.step_inline(envelope):
                # Request/response: the idle actor's step ran here, in the read
                # callback; no mailbox, no task switch (see actors/_inline.py).
                index += 1
                continue
            try:
                # The driver already yields at every socket read: no extra checkpoint here.
                ref.tell_nowait(envelope)
            except MailboxFull:
                return index
            except MailboxClosed:
                pass  # the actor ended and the connection is closing: nobody will read it
            index += 1
        return None

    async def _deliver_waiting(self, message: str | bytes) -> None:
        """Put ``message`` in the mailbox, waiting for room (reading is paused meanwhile)."""
        claiming = self._claiming
        if claiming is not None:
            await claiming.wait()
        ref = self.ref
        if ref is None:
            return  # the connection ended before its actor was known
        with contextlib.suppress(MailboxFull, MailboxClosed):
            await ref.tell(FromClient(message))

    def _settle(self, now: float) -> bool:
        """After a read's messages were handed on: let the core settle it (counters,
        the close, pongs), act on what it reports, write what is due.

        Returns:
            Whether the outbound buffer is over its limit: read nothing more
            until it is not (reading is what queues pongs).
        """
        core = self._core
        if core.after_read(now):
            if core.events is not None:
                self._handle_events()
            self._driver.flush_now()
        elif core.events is not None:
            self._handle_events()
        buffer = core.outbound
        return buffer.bytes > buffer.limit

    def _after_output(self) -> None:
        """After ``ConnectionCore.data_to_send``, when the core has events or
        someone waits for room (a driver checks both before calling)."""
        if self._core.events is not None:
            self._handle_events()
        self._room()

    def _handle_events(self) -> None:
        core = self._core
        events, core.events = core.events, None  # core.take_events(), without the call
        for event in events or ():
            if event.__class__ is CloseRecorded:
                assert isinstance(event, CloseRecorded)
                if event.code == _ABNORMAL_CLOSURE and self._detachable():
                    self._detach()  # no closing handshake: the client may come back
                    return
                if self.state is not _CLOSING and self.state is not _CLOSED:
                    self._set_state(_CLOSING)
                if self.cell is not None and not self.cell.is_terminated:
                    self.cell.request_drain()
                if self._space is not None:  # someone waits for room or the close
                    self._room()
            elif event.__class__ is MessagesDropped:
                assert isinstance(event, MessagesDropped)
                self._host.outbound_dropped(self.address, event.policy, event.count)
            elif event.__class__ is PongReceived:
                assert isinstance(event, PongReceived)
                self._host.counters.ping_rtt.observe(event.rtt)
                # The next ping is now due before the pong deadline the server waits for.
                self._host.schedule_keepalive(self)
            elif event.__class__ is InboundLimited:
                assert isinstance(event, InboundLimited)
                self._host.limited("inbound_close" if event.closed else "inbound_delay", self)
            elif event is FAILED:
                self._room()
                if self.state is not _CLOSING:
                    self._set_state(_CLOSING)
                self._driver.flush_now()
            elif event is ARM_CLOSE_TIMER and not self._finished:
                self._driver.arm_close_timer()
            elif event is RESCHEDULE:
                self._host.schedule_keepalive(self)

    def _room(self) -> None:
        """Wake whoever waits for the outbound buffer to shrink (a ``send`` under
        ``block``, a reader paused by it) or for the connection to close."""
        space = self._space
        if space is not None:
            self._space = None
            self._core.room_wanted = False
            space.set()

    async def _wait_for_room(self) -> None:
        """Wait until :meth:`_room` is next called."""
        space = self._space
        if space is None:
            # anyio's Event: several tasks may wait for room on one connection.
            space = self._space = anyio.Event()
            self._core.room_wanted = True
        await space.wait()

    def _lost(self) -> None:
        """The socket is gone or being dropped."""
        core = self._core
        if core.close_info is None:  # else the end is known already
            core.lost()
        if core.events is not None:
            self._handle_events()

    def _finalize(self) -> None:
        """Account for the end of the connection (once)."""
        if self._finished:
            return
        self._finished = True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        claiming, self._claiming = self._claiming, None
        if claiming is not None:
            claiming.set()  # a read waiting for the actor: there will be none
        core = self._core
        code, reason, initiator, label = core.finish()
        if self.state is not _CLOSED:
            self._set_state(_CLOSED)
        if self.cell is not None and not self.cell.is_terminated:
            self.cell.request_drain()
        if core.events is not None:
            self._handle_events()
        if self._space is not None:  # someone waits for room or the close
            self._room()
        self._driver = _ENDED  # no cycle left: freed without the garbage collector
        self._port = None
        self._host.connection_closed(self, code, reason, initiator, label)


def _carry_counts(old: ConnectionCore, new: ConnectionCore) -> None:
    """A connection's traffic counts span its sockets."""
    new.messages_in, new.messages_out = old.messages_in, old.messages_out
    new.bytes_in, new.bytes_out = old.bytes_in, old.bytes_out
