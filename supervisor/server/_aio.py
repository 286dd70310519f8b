"""asyncio fast path for plain TCP: accepting and handshaking in transport callbacks.

Theory of operation: on asyncio, without TLS, each listening socket is served by
an acceptor (below) with a :class:`HandshakeProtocol` per accepted socket
instead of an accept task and a task per socket. The protocol is the callback
driver of the handshake (``_handshake``; the stream driver is
``Server._handshake``): it feeds the bytes that arrive to a ``RequestReader``
under the handshake timeout (one loop timer for every socket: :class:`Deadlines`),
asks the decision, and writes the
answer or the 101, all inside ``data_received``. Only when a handshake hook or
an HTTP handler returns an awaitable does the rest run in a task (reading
paused meanwhile). An accepted socket becomes a callback-mode
:class:`~supervisor.server._connection.Connection`: its transport is handed a new
protocol and what the parser already holds is processed.

Accepting is done here too, in a reader callback on each listening socket,
rather than by ``loop.create_server``: out of descriptors, asyncio reports each
failed ``accept()`` to the loop's exception handler (thousands a second), and
uvloop's libuv accepts and closes the waiting connections without a word (and
closes the listener for good on ``ENOBUFS``/``ENOMEM``). Here a failed
``accept()`` is classified, counted and throttled like on the stream path
(see ``_accept``), and a broken listener fails the server. Before each
``accept()`` the acceptor asks admission control (``Server.may_accept``, see
``_admission``): past ``max_handshakes`` or ``accept_rate`` it stops reading the
listening socket until a handshake ends or a token is back, and the next
connections wait in the listen backlog. At most :data:`ACCEPT_BATCH` sockets
are accepted per wake-up, and a :class:`Pacer` lets at most
:data:`TURN_REQUESTS` requests of the server port be decided per turn of the
loop; the others keep their bytes until a later turn. In a reconnect storm
hundreds of requests become readable in the same poll, and deciding them all
at once stalled every timer and open connection for hundreds of milliseconds.

After an HTTP answer other than 101 the socket lingers (:meth:`HandshakeProtocol.linger`):
closing a socket with unread input makes the kernel send a reset, and a
client still sending an oversized request would lose the answer to it. Unless
the answer keeps the connection alive (HTTP/1.1 keep-alive,
``Handshake.keeps_alive``): then the same protocol takes the next request,
under the handshake timeout again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import math
import select
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, cast

import structlog

from ._accept import AcceptFailure, classify_accept_error
from ._handshake import (
    LINGER_BYTES,
    Answer,
    HookCall,
    HTTPRequest,
    Socket,
    Upgrade,
)

if TYPE_CHECKING:
    from ._server import Handshakes, Server

__all__ = [
    "HandshakeProtocol",
    "enter_callback",
    "exit_callback",
    "serve_sockets",
]

_log = structlog.get_logger("wsup.server")

#: Sockets accepted per wake-up of a listening socket at most, and requests decided
#: per turn of the event loop at most (:class:`Pacer`): in a burst of reconnects
#: each turn then costs some 32 handshakes (about 10 ms of CPU), not a thousand.
#: Accepting no faster than the turn decides keeps the queue in the listen backlog:
#: accepting 256 per wake-up queued sockets in the process faster than they were
#: decided, their clients gave up waiting, and a storm cost 3.5 times the CPU.
#: Measured with ``python -m bench.burst`` and the storm scenario
#: (``docs/performance.md``, "The event loop during a storm").
ACCEPT_BATCH: Final = 32
TURN_REQUESTS: Final = 32

try:
    import sniffio

    _library: Any = sniffio.thread_local
except ImportError:  # pragma: no cover - anyio then asks asyncio, which works in callbacks
    _library = None


def enter_callback() -> str | None:
    """Mark a transport callback as running on asyncio; returns what to restore.

    Outside a task sniffio cannot tell that asyncio is running, and anyio asks
    it whenever an anyio object is made (a cancel scope for a new task, an
    event). Pair with :func:`exit_callback`.
    """
    if _library is None:
        return None
    previous: str | None = _library.name
    _library.name = "asyncio"
    return previous


def exit_callback(previous: str | None) -> None:
    """Undo :func:`enter_callback`."""
    if _library is not None:
        _library.name = previous


class HandshakeProtocol(asyncio.Protocol):
    """One accepted socket, from ``connection_made`` until its handshake is decided."""

    __slots__ = (
        "_body",
        "_connecting",
        "_deadlines",
        "_decided",
        "_held",
        "_host",
        "_linger_left",
        "_ops_only",
        "_paced",
        "_pacer",
        "_protocol",
        "_reader",
        "_request",
        "_served",
        "_socket",
        "_started",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        host: Handshakes,
        socket: Socket,
        deadlines: Deadlines,
        pacer: Pacer | None = None,
    ) -> None:
        self._host = host
        self._ops_only = socket.ops_only
        #: The socket's handshake timeout (and, kept alive, its idle timeout).
        self._deadlines = deadlines
        #: Paces the requests of the server port (None: operational ports, never paced).
        self._pacer = pacer
        #: Bytes read while waiting for a turn of the pacer; None when not waiting.
        self._paced: list[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        #: The lingering close's deadline (see :meth:`linger`).
        self._timer: asyncio.TimerHandle | None = None
        #: The rest of the loop's ``connect_accepted_socket``, run by :meth:`_connected`.
        self._connecting: Coroutine[Any, Any, Any] | None = None
        self._decided = False
        self._started = 0.0
        #: Bytes still to discard while lingering; None before.
        self._linger_left: int | None = None
        self._protocol = protocol = host.new_protocol()
        self._socket = socket
        self._reader = host.reader(protocol, socket)
        #: The request being answered (None for an answer to bytes that were not one).
        self._request: HTTPRequest | None = None
        #: Requests answered with the connection kept alive.
        self._served = 0
        #: Bytes read while a decision ran in a task: the next requests.
        self._held: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        host = self._host
        self._transport = transport = cast(asyncio.Transport, transport)
        # Writing pauses as soon as the socket does not take everything: the
        # connection's outbound buffer, not the transport's, holds the backlog.
        transport.set_write_buffer_limits(0)
        self._started = host.opened(self._ops_only)
        host.unowned.add(self)
        self._deadlines.add(self)

    def complete_later(self, connecting: Coroutine[Any, Any, Any]) -> None:
        """Run ``connecting`` (the loop's ``connect_accepted_socket``, waiting for
        ``connection_made``) to its end at this socket's first callback."""
        self._connecting = connecting

    def _connected(self) -> None:
        """Run the rest of the loop's ``connect_accepted_socket`` (it only returns the
        transport, now that ``connection_made`` was called): at the first callback
        after it rather than in a callback of its own."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            _finish(connecting)

    def data_received(self, data: bytes) -> None:
        if self._connecting is not None:
            self._connected()
        previous = enter_callback()
        try:
            self._received(data)
        except Exception:
            _log.exception("connection.failed")
            self.abort()
        finally:
            exit_callback(previous)

    def _received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)
            if self._linger_left < 0 and self._transport is not None:
                self._transport.abort()  # enough: more than an answer is worth
            return
        reader = self._reader
        assert reader is not None
        if self._decided:
            # Read before pausing took effect: after an upgrade request, the parser
            # keeps it for the connection; else it is the next request.
            if reader.reading:
                self._held.append(data)
            else:
                self._protocol.receive_data(data)
            return
        if self._paced is not None:
            self._paced.append(data)
            return
        pacer = self._pacer
        if pacer is not None and not pacer.take(self):
            self._paced = [data]  # its turn comes in a later turn of the loop
            return
        self._serve(reader.feed(data))

    def run_paced(self) -> bool:
        """Take the request read while waiting for the pacer; False if nothing was left
        to do (the socket closed or timed out meanwhile)."""
        held, self._paced = self._paced, None
        if held is None or self._decided:
            return False
        assert self._reader is not None
        previous = enter_callback()
        try:
            self._serve(self._reader.feed(b"".join(held)))
        except Exception:
            _log.exception("connection.failed")
            self.abort()
        finally:
            exit_callback(previous)
        return True

    def _serve(self, parsed: HTTPRequest | Answer | None) -> None:
        """Answer ``parsed`` and, while the connection is kept alive, the requests
        already read behind it."""
        while parsed is not None:
            self._settle()
            if isinstance(parsed, Answer):
                self._request = None
                self._conclude(parsed)
                return
            transport = self._transport
            assert transport is not None
            assert self._socket is not None
            self._request = parsed
            step = self._host.decider.decide(parsed, self._protocol, self._socket)
            if isinstance(step, HookCall):
                ran = step.run()
                if not isinstance(ran, Answer | Upgrade):
                    # A hook returned an awaitable: the rest needs a task, and what
                    # arrives meanwhile waits in the socket.
                    transport.pause_reading()
                    if not self._host.start_soon(
                        functools.partial(self._conclude_later, ran, step)
                    ):
                        ran.close()
                        step.abandon()
                        transport.abort()
                    return
                step = ran
            if not self._conclude(step):
                return
            parsed = self._next()

    def _next(self) -> HTTPRequest | Answer | None:
        """After an answer that kept the connection alive: the next request, if read."""
        assert self._reader is not None
        held = self._held
        if held:
            self._held = []
            return self._reader.feed(b"".join(held))
        return self._reader.next()

    async def _conclude_later(
        self, pending: Coroutine[Any, Any, Answer | Upgrade], call: HookCall
    ) -> None:
        try:
            if self._conclude(await pending, resume=True):
                self._serve(self._next())
        except Exception:
            _log.exception("connection.failed")
            self.abort()
        finally:
            call.abandon()  # cancelled before the hooks ran: nothing else gives it back

    def _conclude(self, decision: Answer | Upgrade, *, resume: bool = False) -> bool:
        """Write the answer and linger (or wait for the next request), or write the 101
        and hand the socket over; whether the connection waits for another request.

        ``resume``: reading was paused while the hooks ran in a task.
        """
        host = self._host
        transport = self._transport
        assert transport is not None
        if isinstance(decision, Answer):
            host.answered(decision, self._peer())
            request = self._request
            reader = self._reader
            keep = (
                request is not None
                and reader is not None
                and reader.more
                and host.decider.keeps_alive(request, decision, self._served + 1)
            )
            if transport.is_closing():
                return False
            transport.write(host.answer_bytes(decision, keep))
            if not keep:
                self.linger(host.config.close_timeout, LINGER_BYTES)
                return False
            self._served += 1
            self._decided = False
            self._started = host.now()
            self._deadlines.add(self)
            if resume:
                transport.resume_reading()
            return True
        protocol = self._protocol
        protocol.send_response(decision.response)
        if transport.is_closing():
            host.release(decision.request.client_address)  # no connection after all
            host.failed(
                "failed",
                "connection closed before the 101 was sent",
                self._peer(),
                decision.request.path,
            )
            transport.close()
            return False
        transport.write(b"".join(protocol.data_to_send()))
        host.unowned.discard(self)  # the connection owns the socket from here
        host.open_connection(decision, protocol, self._started, transport).start(resume)
        return False

    def eof_received(self) -> bool:
        if self._connecting is not None:
            self._connected()
        if self._paced is not None:
            self.run_paced()  # a request and then the end: answer it now
        if not self._decided:
            self._failed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connecting is not None:
            self._connected()
        self._host.unowned.discard(self)
        self._paced = None
        if not self._decided:
            self._failed()
        elif self._timer is not None:  # lingering: its deadline
            self._timer.cancel()
            self._timer = None

    def linger(self, timeout: float, max_bytes: int) -> None:
        """Close the socket once the client has read the answer just written.

        A lingering close, as nginx's ``lingering_close``: half-close (the
        client reads the answer, then end of file), then read and discard what
        the client still sends, until it closes its end, ``max_bytes`` were
        discarded, or ``timeout`` seconds passed. Closing at once with unread
        input would make the kernel send a reset instead, and the client lose
        the answer (a 431 to an oversized request, typically).
        """
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            return
        self._linger_left = max_bytes
        if transport.can_write_eof():
            transport.write_eof()
        # A decision taken in a task paused reading; a full buffer would too.
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(timeout, transport.abort)

    def abort(self) -> None:
        """Drop the socket now (the server stops)."""
        if self._transport is not None:
            self._transport.abort()

    def _peer(self) -> str:
        """The peer's host, for logs."""
        return "" if self._socket is None else self._socket.remote[0]

    def _settle(self) -> None:
        self._decided = True
        self._deadlines.discard(self)
        if not self._served:  # once kept alive, the socket was settled already
            self._host.settled(self._ops_only)

    def _reading_body(self) -> bool:
        return self._reader is not None and self._reader.reading_body

    def _failed(self) -> None:
        self._settle()
        if self._kept_idle():
            # A kept-alive client closed between requests: nothing failed.
            if self._transport is not None:
                self._transport.close()
            return
        what = "request body" if self._reading_body() else "request"
        self._host.failed("failed", f"connection closed before the {what}", self._peer())
        if self._transport is not None:
            self._transport.close()

    def _kept_idle(self) -> bool:
        """Whether the connection was kept alive and nothing of another request came."""
        return self._served > 0 and self._reader is not None and self._reader.idle

    def timed_out(self) -> None:
        """The handshake timeout passed (see :class:`Deadlines`)."""
        if not self._decided:
            self._settle()
            if self._kept_idle():
                # The idle timeout between kept-alive requests: close, say nothing.
                if self._transport is not None:
                    self._transport.close()
                return
            self._request = None  # the 408 answers no request: it closes
            previous = enter_callback()
            try:
                self._conclude(self._host.decider.timed_out(reading_body=self._reading_body()))
            finally:
                exit_callback(previous)


class Deadlines:
    """The handshake timeouts of the sockets of a server, on one loop timer.

    Every socket gets the same timeout from the moment it starts waiting for a
    request, so the order they start in is the order their deadlines come in:
    an insertion-ordered dict, socket to deadline, is a queue by deadline that
    also forgets a socket in O(1) when its request is decided. The one timer
    is set for the earliest deadline; when it fires it times out the sockets
    whose deadline passed and is set again for the next one. A timer per
    socket (``call_later`` in ``connection_made``, cancelled when the request
    was decided) cost a timer handle, a libuv timer and a context per socket.

    Args:
        loop: the event loop (its clock sets the deadlines, as ``call_later`` did).
        timeout: seconds a socket has to deliver its request.
    """

    __slots__ = ("_due", "_loop", "_timeout", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._due: dict[HandshakeProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, protocol: HandshakeProtocol) -> None:
        """Time ``protocol`` out in ``timeout`` seconds, unless :meth:`discard` comes first."""
        due = self._due
        due.pop(protocol, None)  # its deadline moves: to the back of the queue
        deadline = due[protocol] = self._loop.time() + self._timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def discard(self, protocol: HandshakeProtocol) -> None:
        """``protocol``'s request was decided (or its socket closed): no timeout."""
        self._due.pop(protocol, None)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        due = self._due
        expired = []
        for protocol, deadline in due.items():  # in deadline order
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                break
            expired.append(protocol)
        for protocol in expired:
            del due[protocol]
        for protocol in expired:
            try:
                protocol.timed_out()
            except Exception:
                _log.exception("connection.failed")
                protocol.abort()


class Pacer:
    """At most ``per_turn`` requests taken per turn of the event loop; the others wait
    for the next turns, in the order they came.

    A burst of reconnects (a deploy) brings thousands of requests at once, and
    their bytes do not arrive in the order the sockets were accepted: the
    clients' own loops send them in batches, so hundreds can be readable in the
    same poll. Deciding them all in that turn (each one's reader, decision, 101
    and actor) would stall every timer and every open connection for as long.
    The budget is ``per_turn`` requests between two runs of :meth:`_turn`; a
    request past it keeps its bytes, and :meth:`_turn`, run in the next turn
    (``call_soon``) and in every turn after while some wait, gives the budget
    back and takes the waiting ones in order (a socket that closed meanwhile is
    skipped). Nothing is scheduled while none waits, so outside bursts this
    costs a counter per request, and one request in ``per_turn`` waits for the
    next turn. O(1) per request.

    Args:
        loop: the event loop.
        per_turn: requests taken per turn at most.
    """

    __slots__ = ("_left", "_loop", "_per_turn", "_scheduled", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int) -> None:
        self._loop = loop
        self._per_turn = per_turn
        self._left = per_turn
        self._scheduled = False
        self._waiting: collections.deque[HandshakeProtocol] = collections.deque()

    def take(self, protocol: HandshakeProtocol) -> bool:
        """Whether ``protocol`` may take its request now; else it waits for
        :meth:`HandshakeProtocol.run_paced`, called in a later turn."""
        if self._left and not self._waiting:
            self._left -= 1
            return True
        self._waiting.append(protocol)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._turn)
        return False

    @property
    def waiting(self) -> int:
        """Requests waiting for a turn."""
        return len(self._waiting)

    def _turn(self) -> None:
        self._left = self._per_turn
        waiting = self._waiting
        while waiting and self._left:
            if waiting.popleft().run_paced():
                self._left -= 1
        if waiting:
            self._loop.call_soon(self._turn)
        else:
            self._scheduled = False


class _Acceptor:
    """Accepts the connections of one listening socket, in a reader callback.

    Per connection: ``accept()``, then the loop's ``connect_accepted_socket``
    driven by hand instead of in a task (it only waits for ``connection_made``,
    and the protocol's first callback runs the rest). The accepted socket's
    class has its family and type as plain numbers: ``socket.socket`` turns
    them into enums on every read (1.5 µs each), and accepting plus uvloop's
    checks read them five times per connection. The peer's address is the one
    ``accept()`` returned (no ``getpeername()``). After the connection that
    woke it, the acceptor asks ``poll()`` whether another waits unless a burst
    is under way: an ``accept()`` that finds none raises ``BlockingIOError``,
    whose making (``strerror``, the exception) cost 5k instructions, more than
    the poll.
    """

    __slots__ = (
        "_accepted",
        "_broken",
        "_burst",
        "_closed",
        "_deadlines",
        "_factory",
        "_fd",
        "_handshakes",
        "_loop",
        "_made",
        "_ops_only",
        "_pacer",
        "_peer",
        "_poll",
        "_resume",
        "_server",
        "_sock",
        "_socket",
    )

    def __init__(
        self,
        server: Server,
        handshakes: Handshakes,
        sock: socket.socket,
        ops_only: bool,
        broken: asyncio.Future[None],
        pacer: Pacer,
        deadlines: Deadlines,
    ) -> None:
        self._server = server
        self._handshakes = handshakes
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._broken = broken
        self._ops_only = ops_only
        self._pacer = None if ops_only else pacer
        self._deadlines = deadlines
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        family, kind = int(sock.family), int(sock.type)
        accepted = _accepted_class(family, kind)
        # Family, type and protocol given: the socket object asks the kernel nothing.
        self._accepted = functools.partial(accepted, family, kind, socket.IPPROTO_TCP)
        # The socket being handed to the loop, its peer's address as accept() gave it,
        # and the protocol the loop made for it (see _new_protocol).
        self._socket: socket.socket | None = None
        self._peer: Any = None
        self._made: HandshakeProtocol | None = None
        self._factory = self._new_protocol
        #: Connections come in bursts: accept until the backlog is empty (EAGAIN);
        #: else, after the one that woke the acceptor, ask poll() first.
        self._burst = False
        self._poll: select.poll | None = None
        if hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)

    def _new_protocol(self) -> HandshakeProtocol:
        """The protocol factory the loop calls for the socket being accepted."""
        handshakes = self._handshakes
        local_port = None
        if self._ops_only and self._socket is not None:
            sockname = self._socket.getsockname()
            local_port = sockname[1] if isinstance(sockname, tuple) else None
        where = handshakes.socket(self._peer, local_port, self._ops_only)
        made = self._made = HandshakeProtocol(handshakes, where, self._deadlines, self._pacer)
        return made

    def start(self) -> None:
        self._resume = None
        if not self._closed:
            self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
        self._loop.remove_reader(self._fd)
        self._sock.close()

    def _accept(self) -> None:
        server = self._server
        loop = self._loop
        accept = self._sock._accept  # type: ignore[attr-defined]  # the C call under accept()
        accepted = self._accepted
        counted = not self._ops_only
        # Several per wake-up, as asyncio does (a burst of connects costs fewer polls),
        # but not asyncio's ``backlog``: the loop turns between batches.
        for attempt in range(ACCEPT_BATCH):
            if attempt and not self._burst and not self._waiting():
                # Connections come one at a time: no accept() that fails with EAGAIN
                # (its exception cost a third of accepting the one that woke us).
                return
            wait = server.may_accept() if counted else None
            if wait is not None:
                # Admission control: the next connections wait in the listen backlog.
                loop.remove_reader(self._fd)
                if math.isinf(wait):
                    server.when_handshake_ends(self.start)
                else:
                    server.start_soon(functools.partial(self._start_after, wait))
                return
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError):
                if attempt <= 1:
                    self._burst = False  # the backlog held one at most: one at a time again
                return
            except OSError as exc:
                failure, lacked = classify_accept_error(exc)
                if failure is AcceptFailure.CONNECTION:
                    continue
                # The socket stays readable while the backlog is not empty: stop
                # listening to it, or the loop would spin on the same error.
                loop.remove_reader(self._fd)
                if lacked is None:
                    if not self._broken.done():
                        self._broken.set_exception(exc)
                    return
                delay = server.accept_failed(lacked, exc)
                self._resume = loop.call_later(delay, self.start)
                return
            server.accept_throttle.accepted()
            if counted:
                server.socket_accepted()
            conn = self._socket = accepted(fd)
            self._peer = peer  # what getpeername() would say: the protocol need not ask
            connecting = loop.connect_accepted_socket(self._factory, conn)
            try:
                connecting.send(None)  # the protocol is made; connection_made is scheduled
            except StopIteration:
                continue
            except Exception:
                _log.exception("connection.failed")
                conn.close()
                if counted:
                    server.socket_settled()
                continue
            finally:
                made, self._made, self._socket, self._peer = self._made, None, None, None
            assert made is not None
            # Its first callback finishes connecting: no callback of its own (that cost
            # a done callback, a loop handle and a turn per connection).
            made.complete_later(connecting)

    def _waiting(self) -> bool:
        """Whether a connection waits in the listen backlog: ``poll()``, which says so
        without the exception of an ``accept()`` that finds none. True from now on,
        until a wake-up accepts one at most (see :attr:`_burst`)."""
        poll = self._poll
        if poll is None or poll.poll(0):
            self._burst = True
            return True
        return False

    async def _start_after(self, seconds: float) -> None:
        await self._server.clock.sleep(seconds)
        self.start()


def _finish(connecting: Coroutine[Any, Any, Any]) -> None:
    """Run the rest of ``connect_accepted_socket`` once ``connection_made`` was called."""
    try:
        waiter = connecting.send(None)
    except StopIteration:
        return
    except Exception:
        _log.exception("connection.failed")  # the transport is closed already
        return
    # Still waiting (never seen: connection_made precedes every other callback).
    waiter.add_done_callback(lambda _, rest=connecting: _finish(rest))


_ACCEPTED: dict[tuple[int, int], type[socket.socket]] = {}


def _accepted_class(family: int, kind: int) -> type[socket.socket]:
    """A ``socket.socket`` subclass whose ``family`` and ``type`` are these numbers."""
    cls = _ACCEPTED.get((family, kind))
    if cls is None:
        cls = _ACCEPTED[family, kind] = type(
            "AcceptedSocket",
            (socket.socket,),
            {"__slots__": (), "family": family, "type": kind, "__module__": __name__},
        )
    return cls


async def serve_sockets(
    server: Server, handshakes: Handshakes, sockets: list[tuple[socket.socket, bool]]
) -> None:
    """Serve ``(listening socket, ops_only)`` pairs until cancelled, then stop accepting.

    The sockets stay owned by the caller: each acceptor gets a duplicate.

    Raises:
        OSError: a listening socket failed otherwise than for lack of resources.
    """
    loop = asyncio.get_running_loop()
    broken: asyncio.Future[None] = loop.create_future()
    acceptors: list[_Acceptor] = []
    pacer = Pacer(loop, TURN_REQUESTS)
    deadlines = Deadlines(loop, handshakes.config.handshake_timeout)
    try:
        for sock, ops_only in sockets:
            if sock.fileno() == -1:
                # Closed already: the server stopped accepting before this task ran
                # (a shutdown right after start). Nothing to serve on it.
                continue
            duplicate = sock.dup()
            duplicate.setblocking(False)
            acceptor = _Acceptor(server, handshakes, duplicate, ops_only, broken, pacer, deadlines)
            acceptors.append(acceptor)
            acceptor.start()
        await broken
    finally:
        for acceptor in acceptors:
            with contextlib.suppress(Exception):
                acceptor.close()
