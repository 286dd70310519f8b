"""asyncio fast path for plain TCP: accepting and handshaking in transport callbacks.

Theory of operation: on asyncio, without TLS, each listening socket is served by
``loop.create_server`` with a :class:`HandshakeProtocol` per accepted socket
instead of an accept task and a task per socket. The protocol feeds the request
into websockets' ``ServerProtocol`` as bytes arrive, under the handshake
timeout (a loop timer), then runs the server's decision — routing, limits,
Origin, hooks, the answer — synchronously when the app's hooks are plain
functions, or in a task otherwise (reading paused meanwhile). An accepted
socket becomes a callback-mode :class:`~supervisor._connection.Connection`:
its transport is handed a new protocol and what the parser already holds is
processed.

The decision code is shared with the stream path (trio, TLS): it talks to the
socket through a :class:`TransportStream`, which has the few ``ByteStream``
methods it uses and never suspends.

Accepting is done here too, in a reader callback on each listening socket,
rather than by ``loop.create_server``: out of descriptors, asyncio reports each
failed ``accept()`` to the loop's exception handler (thousands a second), and
uvloop's libuv accepts and closes the waiting connections without a word (and
closes the listener for good on ``ENOBUFS``/``ENOMEM``). Here a failed
``accept()`` is classified, counted and throttled like on the stream path
(see ``_accept``), and a broken listener fails the server.

After an HTTP answer other than 101 the socket lingers (:meth:`HandshakeProtocol.linger`):
closing a socket with unread input makes the kernel send a reset, and a
client still sending an oversized request would lose the answer to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import socket
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import structlog
from websockets.http11 import Request as WSRequest
from websockets.server import ServerProtocol

from actors._inline import Resume, Suspended

from ._accept import AcceptFailure, classify_accept_error
from ._body import BodyReader, wants_body
from ._request import split_target

if TYPE_CHECKING:
    from ._app import RouteOptions
    from ._connection import Connection
    from ._server import Server

__all__ = [
    "HandshakeProtocol",
    "TransportStream",
    "enter_callback",
    "exit_callback",
    "hooks_are_sync",
    "serve_sockets",
]

_log = structlog.get_logger("wsup.server")

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


class TransportStream:
    """The parts of an anyio ``ByteStream`` the handshake uses, over an asyncio transport.

    ``send`` writes without waiting: an HTTP answer or a 101 is small, and the
    transport buffers what the socket does not take at once.
    """

    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    async def send(self, data: bytes) -> None:
        if self.transport.is_closing():
            raise anyio.BrokenResourceError
        self.transport.write(data)

    async def aclose(self) -> None:
        self.transport.close()

    def linger(self, timeout: float, max_bytes: int) -> None:
        """Close after an answer without losing it: see :meth:`HandshakeProtocol.linger`."""
        protocol = self.transport.get_protocol()
        if isinstance(protocol, HandshakeProtocol):
            protocol.linger(timeout, max_bytes)
        else:
            self.transport.close()

    def extra(self, attribute: Any, default: Any = None) -> Any:
        if attribute is anyio.abc.SocketAttribute.remote_address:
            peer = self.transport.get_extra_info("peername")
            return default if peer is None else peer
        if attribute is anyio.abc.SocketAttribute.local_port:
            local = self.transport.get_extra_info("sockname")
            return local[1] if isinstance(local, tuple) else default
        return default


def hooks_are_sync(server: Server) -> bool:
    """Whether every handshake hook and HTTP route of the app is a plain function.

    Then the decision never suspends and can run inside a transport callback.
    """
    app = server.app
    hooks: list[Any] = [*app.hooks, *app.http_routes.values()]
    for route in app.router:
        hook = cast("RouteOptions", route.target).hook
        if hook is not None:
            hooks.append(hook)
    return all(
        (inspect.isfunction(fn) or inspect.ismethod(fn)) and not inspect.iscoroutinefunction(fn)
        for fn in hooks
    )


class HandshakeProtocol(asyncio.Protocol):
    """One accepted socket, from ``connection_made`` until its handshake is decided."""

    __slots__ = (
        "_body",
        "_decided",
        "_head",
        "_linger_left",
        "_ops_only",
        "_protocol",
        "_server",
        "_started",
        "_timer",
        "_transport",
    )

    def __init__(self, server: Server, ops_only: bool) -> None:
        self._server = server
        self._ops_only = ops_only
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._decided = False
        self._started = 0.0
        #: Bytes still to discard while lingering; None before.
        self._linger_left: int | None = None
        #: What arrived of the request so far, in case it has a body (see ``_body``).
        self._head: bytes | bytearray = b""
        #: The request with a body being read, and its reader; None otherwise.
        self._body: tuple[WSRequest, BodyReader] | None = None
        self._protocol = ServerProtocol(
            max_size=server.config.max_size,
            extensions=server.compression,
            logger=server.protocol_logger,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        self._transport = transport = cast(asyncio.Transport, transport)
        # Writing pauses as soon as the socket does not take everything: the
        # connection's outbound buffer, not the transport's, holds the backlog.
        transport.set_write_buffer_limits(0)
        self._started = server.clock.now()
        if not self._ops_only:
            server.counters.accepted.inc()
        server.states["handshaking"].inc()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(server.config.handshake_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        previous = enter_callback()
        try:
            self._received(data)
        finally:
            exit_callback(previous)

    def _received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)
            if self._linger_left < 0 and self._transport is not None:
                self._transport.abort()  # enough: more than an answer is worth
            return
        if self._body is not None:
            request, reader = self._body
            if reader.feed(data) and not self._decided:
                self._settle()
                self._decide(request, reader.body)
            return
        protocol = self._protocol
        protocol.receive_data(data)
        if self._decided:
            return  # read before pausing took effect: the parser keeps it for the connection
        events = protocol.events_received()
        if events:
            self._settle()
            self._decide(cast(WSRequest, events[0]))
            return
        # Usually the whole head comes in one read and this copies nothing.
        head = self._head
        if not head:
            self._head = data
        elif isinstance(head, bytearray):
            head += data
        else:
            self._head = bytearray(head) + data
        if protocol.handshake_exc is not None and wants_body(protocol):
            self._start_body(bytes(self._head))
        elif protocol.handshake_exc is not None:
            self._settle()
            self._run(self._server.bad_request(self._stream(), protocol))

    def _start_body(self, head: bytes) -> None:
        plan = self._server.body_plan(self._stream(), head, self._ops_only)
        self._head = b""
        if not isinstance(plan, tuple):
            self._settle()
            self._run(self._server.answer_raw(self._stream(), plan))
            return
        request, self._protocol, reader = plan
        if reader.feed(b""):
            self._settle()
            self._decide(request, reader.body)
        else:
            self._body = (request, reader)  # the rest comes in later reads

    def eof_received(self) -> bool:
        if not self._decided:
            self._failed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._decided:
            self._failed()
        elif self._linger_left is not None:
            self._server.lingering.discard(self)
            if self._timer is not None:
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
        self._server.lingering.add(self)
        if transport.can_write_eof():
            transport.write_eof()
        # A decision taken in a task paused reading; a full buffer would too.
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(timeout, transport.abort)

    def abort(self) -> None:
        """Drop the socket now (the server stops)."""
        if self._transport is not None:
            self._transport.abort()

    def _stream(self) -> TransportStream:
        assert self._transport is not None
        return TransportStream(self._transport)

    def _settle(self) -> None:
        self._decided = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.states["handshaking"].dec()

    def _failed(self) -> None:
        self._settle()
        self._server.handshake_failed(self._stream(), "connection closed before the request")
        if self._transport is not None:
            self._transport.close()

    def _timed_out(self) -> None:
        if not self._decided:
            self._settle()
            self._server.handshake_failed(
                self._stream(), "no request before the handshake timeout", "timeout"
            )
            previous = enter_callback()
            try:
                self._run(self._server.handshake_timed_out(self._stream(), self._protocol))
            finally:
                exit_callback(previous)

    def _decide(self, request: WSRequest, body: bytes | bytearray = b"") -> None:
        server = self._server
        path, query = split_target(request.path)
        stream = self._stream()
        decision = server.decide(
            stream,
            self._protocol,
            request,
            path,
            query,
            self._started,
            ops_only=self._ops_only,
            body=body,
        )
        if server.sync_handshakes:
            self._run(decision, then=_take_over)
            return
        # Decided in a task: what arrives meanwhile waits in the socket.
        stream.transport.pause_reading()
        if not server.start_soon(lambda: _in_task(decision)):
            decision.close()
            stream.transport.abort()

    def _run(
        self,
        coro: Coroutine[Any, Any, Connection | None],
        then: Callable[[Connection | None], None] | None = None,
    ) -> None:
        """Run ``coro`` to the end here if it never suspends, else finish it in a task
        (which starts the connection it returns, if any)."""
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            if then is not None:
                then(done.value)
        except Exception:
            _log.exception("connection.failed")
            assert self._transport is not None
            self._transport.abort()
        else:
            # A plain hook returned an awaitable: it needs a task from here on, and
            # what arrives meanwhile waits in the socket.
            assert self._transport is not None
            self._transport.pause_reading()
            if not self._server.start_soon(lambda: _in_task(Resume(Suspended(coro, yielded)))):
                coro.close()
                self._transport.abort()


def _take_over(conn: Connection | None) -> None:
    # Decided within the callback that read the request: reading never paused.
    if conn is not None:
        conn._start(resume=False)


def _start_connection(conn: Connection | None) -> None:
    if conn is not None:
        conn._start()


async def _in_task(awaitable: Any) -> None:
    try:
        _start_connection(await awaitable)
    except Exception:
        _log.exception("connection.failed")


class _Acceptor:
    """Accepts the connections of one listening socket, in a reader callback.

    Per connection: ``accept()``, then the loop's ``connect_accepted_socket``
    driven by hand instead of in a task (it only waits for ``connection_made``).
    The accepted socket's class has its family and type as plain numbers:
    ``socket.socket`` turns them into enums on every read (1.5 µs each), and
    accepting plus uvloop's checks read them five times per connection.
    """

    __slots__ = ("_accepted", "_broken", "_factory", "_fd", "_loop", "_resume", "_server", "_sock")

    def __init__(
        self,
        server: Server,
        sock: socket.socket,
        ops_only: bool,
        broken: asyncio.Future[None],
    ) -> None:
        self._server = server
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._broken = broken
        self._resume: asyncio.TimerHandle | None = None
        family, kind = int(sock.family), int(sock.type)
        accepted = _accepted_class(family, kind)
        # Family, type and protocol given: the socket object asks the kernel nothing.
        self._accepted = functools.partial(accepted, family, kind, socket.IPPROTO_TCP)

        def factory() -> HandshakeProtocol:
            return HandshakeProtocol(server, ops_only)

        self._factory = factory

    def start(self) -> None:
        self._resume = None
        self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        self._loop.remove_reader(self._fd)
        self._sock.close()

    def _accept(self) -> None:
        server = self._server
        loop = self._loop
        accept = self._sock._accept  # type: ignore[attr-defined]  # the C call under accept()
        accepted = self._accepted
        # Several per wake-up, as asyncio does: a burst of connects costs one poll.
        for _ in range(server.config.backlog):
            try:
                fd, _ = accept()
            except (BlockingIOError, InterruptedError):
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
            conn = accepted(fd)
            connecting = loop.connect_accepted_socket(self._factory, conn)
            try:
                waiter = connecting.send(None)
            except StopIteration:
                continue
            except Exception:
                _log.exception("connection.failed")
                conn.close()
                continue
            waiter.add_done_callback(lambda _, rest=connecting: _finish(rest))


def _finish(connecting: Coroutine[Any, Any, Any]) -> None:
    """Run the rest of ``connect_accepted_socket`` once ``connection_made`` was called."""
    try:
        connecting.send(None)
    except StopIteration:
        pass
    except Exception:
        _log.exception("connection.failed")  # the transport is closed already


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


async def serve_sockets(server: Server, sockets: list[tuple[socket.socket, bool]]) -> None:
    """Serve ``(listening socket, ops_only)`` pairs until cancelled, then stop accepting.

    The sockets stay owned by the caller: each acceptor gets a duplicate.

    Raises:
        OSError: a listening socket failed otherwise than for lack of resources.
    """
    loop = asyncio.get_running_loop()
    broken: asyncio.Future[None] = loop.create_future()
    acceptors: list[_Acceptor] = []
    try:
        for sock, ops_only in sockets:
            duplicate = sock.dup()
            duplicate.setblocking(False)
            acceptor = _Acceptor(server, duplicate, ops_only, broken)
            acceptors.append(acceptor)
            acceptor.start()
        await broken
    finally:
        for acceptor in acceptors:
            with contextlib.suppress(Exception):
                acceptor.close()
