"""The drivers of a connection: how bytes (or messages) move between its core and a socket.

Theory of operation: a :class:`~supervisor.server._connection.Connection` holds a
:class:`~supervisor.server._core.ConnectionCore` (no I/O) and one driver, which reads
bytes into the core, hands the messages it returns to the connection, and
writes what the core has to send. The drivers follow the same steps; they
differ in what runs them.

* :class:`TransportDriver` (asyncio over plain TCP, the default) is the
  transport's ``asyncio.Protocol``: no task of its own. ``data_received`` feeds
  the core and hands the messages on, beginning an idle actor's step right
  there (``Cell.step_inline``). Messages sent during a turn of the loop leave
  in one write at its end (``call_soon``); the transport's flow control
  (``pause_writing``/``resume_writing``, with a high-water mark of zero)
  decides when they wait in the outbound buffer instead. A full ``block``
  mailbox pauses reading and hands the rest of the batch to a short-lived task
  that waits for room; the close timeout is a loop timer.
* :class:`StreamDriver` (trio, and TLS on asyncio) runs over an anyio
  ``ByteStream``: a reader loop in the connection's task, a writer task beside
  it, which writes up to about 64 KiB per ``send`` and sleeps until woken; the
  close timeout is a task.
* :class:`ASGIDriver` (an ASGI server owns the socket) is the same in shape as
  the stream driver, but over whole messages: ``receive()`` gives the reader
  ``websocket.receive`` messages, which feed the core's ``receive_message``;
  the writer awaits ``send()`` for one message at a time, then for the close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from types import CoroutineType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import sniffio
import structlog
from anyio.abc import ByteStream

from actors import MonotonicClock
from actors._backend import Waiter, primitives
from actors._inline import Resume, step_as

from .._constants import CloseCode
from ._aio import enter_callback, exit_callback
from ._outbound import OutboundItem

if TYPE_CHECKING:
    from ._connection import DriverPort
    from ._core import ConnectionCore

__all__ = ["ASGIDriver", "StreamDriver", "TransportDriver"]

_log = structlog.get_logger("wsup.connection")

_CLOSED_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
_READ_SIZE = 1 << 16
#: With transport callbacks, send() yields once per this many calls (not per call: cheaper).
_SEND_BATCH = 32


class TransportDriver(asyncio.Protocol):
    """Drives a connection from an asyncio transport's callbacks (asyncio, plain TCP).

    An unexpected error in a callback is logged and aborts that connection only.
    """

    uses_callbacks = True
    framed = True
    send_batch = _SEND_BATCH

    __slots__ = (
        "_blocked",
        "_core",
        "_done",
        "_ended",
        "_eof_received",
        "_eof_sent",
        "_flush_scheduled",
        "_loop",
        "_output_paused",
        "_paused",
        "_port",
        "_rate_paused",
        "_timer",
        "_timer_armed",
        "_transport",
    )

    _port: DriverPort
    _core: ConnectionCore

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._paused = False  # the transport asked us to stop writing (pause_writing)
        self._output_paused = False  # reading stopped: the outbound buffer is over its limit
        self._rate_paused = False  # reading stopped: the client is over its inbound rate
        self._flush_scheduled = False
        #: Messages read but not handed on yet: the mailbox is full under ``block``.
        self._blocked: list[str | bytes] | None = None
        self._timer: anyio.CancelScope | asyncio.TimerHandle | None = None
        self._timer_armed = False
        self._eof_sent = self._eof_received = False
        self._done: anyio.Event | None = None  # made on demand by closed()
        self._ended = False  # the connection is finalized

    def bind(self, port: DriverPort) -> None:
        self._port = port
        self._core = port.core

    def start(self, resume: bool) -> None:
        """Take the transport over from the handshake's protocol.

        What arrived past the request is already in the parser. ``resume``:
        reading was paused while the handshake was decided in a task.
        """
        transport = self._transport
        transport.set_protocol(self)
        if self._core.holds_input():  # else reading and settling would do nothing
            now = self._port.clock.now()
            self._process(self._core.receive_data(b"", now), now, inline=False)
        if transport.is_closing():
            self.connection_lost(None)  # the peer left while the handshake was decided
        elif resume and self._may_read():
            transport.resume_reading()

    async def run(self) -> None:
        """Serve the connection from a task: start, then wait until it is closed."""
        self.start(resume=True)
        await self.closed()

    # -- the transport's callbacks ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        previous = enter_callback()
        try:
            now = self._port.clock.now()
            self._process(self._core.receive_data(data, now), now, inline=True)
        except Exception:
            self._failed()
        finally:
            exit_callback(previous)

    def eof_received(self) -> bool:
        previous = enter_callback()
        try:
            self._eof_received = True
            now = self._port.clock.now()
            self._process(self._core.receive_eof(now), now, inline=False)
            transport = self._transport
            if not transport.is_closing():
                if self._eof_sent:
                    transport.close()  # both sides are done
                else:
                    # Keep the transport for writing (a close frame may still be due),
                    # but only for close_timeout.
                    self.arm_close_timer()
            return True
        except Exception:
            self._failed()
            return False
        finally:
            exit_callback(previous)

    def connection_lost(self, exc: Exception | None) -> None:
        previous = enter_callback()
        try:
            self._port.lost()
            self._end()
        finally:
            exit_callback(previous)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._scheduled_flush()

    def _failed(self) -> None:
        conn = self._port.connection
        _log.exception("connection.failed", conn=conn.address)
        conn.abort()

    # -- reading ------------------------------------------------------------------------------

    def _process(self, messages: list[str | bytes], now: float, *, inline: bool) -> None:
        if self._blocked is not None:
            # Reading is paused but this batch was already read: keep the order.
            self._blocked.extend(messages)
            return
        port = self._port
        # A port's step through a local: ``port.deliver(...)`` costs a generic method
        # lookup (the attribute is a slot, not a method), about a third more per call.
        if messages:
            deliver = port.deliver
            blocked = deliver(messages, inline)
            if blocked is not None:
                self._blocked = messages[blocked:]
                self._transport.pause_reading()
                if not port.start_soon(self._unblock):
                    self._blocked = None
        settle = port.settle
        if settle(now) and not self._output_paused:
            # The socket does not take what reading queued (pongs): read nothing
            # more until it has (_flush resumes).
            self._output_paused = True
            self._transport.pause_reading()
        core = self._core
        if core.read_pause:
            # Over the route's inbound rate: read nothing more for that long.
            pause, core.read_pause = core.read_pause, 0.0
            if not self._rate_paused and port.start_soon(lambda: self._rate_wait(pause)):
                self._rate_paused = True
                self._transport.pause_reading()

    async def _rate_wait(self, pause: float) -> None:
        try:
            await self._port.clock.sleep(pause)
        finally:
            self._rate_paused = False
            if self._may_read() and not self._transport.is_closing():
                self._transport.resume_reading()

    def _may_read(self) -> bool:
        """Whether nothing holds reading paused (mailbox, outbound buffer, inbound rate)."""
        return self._blocked is None and not self._output_paused and not self._rate_paused

    async def _unblock(self) -> None:
        port = self._port
        blocked = self._blocked
        while blocked:
            # Still in _blocked meanwhile: what the transport delivers goes behind.
            await port.deliver_waiting(blocked[0])
            del blocked[0]
            stopped = port.deliver(blocked, False)
            del blocked[: len(blocked) if stopped is None else stopped]
            port.settle(port.clock.now())
        self._blocked = None
        transport = self._transport
        if not transport.is_closing() and self._may_read():
            transport.resume_reading()

    def reading_paused(self) -> bool:
        transport = self._transport
        return not transport.is_reading() and not transport.is_closing()

    # -- writing ------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        if not self._flush_scheduled and not self._paused:
            # Everything sent before the loop's next turn goes out in one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def flush_now(self) -> None:
        self._flush()

    def flush_pending(self) -> None:
        if self._flush_scheduled and not self._paused:
            self._flush()

    def write_direct(self, item: OutboundItem) -> bool:
        """Fan-out: one write per member, nothing queued in between (a later send
        in the same turn coalesces as usual)."""
        transport = self._transport
        if self._paused or self._flush_scheduled or transport.is_closing():
            return False
        data = self._core.send_now(item)
        if data is None:
            return False
        transport.write(data)
        return True

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        previous = enter_callback()
        try:
            self._flush()
        except Exception:
            self._failed()
        finally:
            exit_callback(previous)

    def _flush(self) -> None:
        """Frame what is queued and write it, a batch at a time, until the socket
        stops taking it (``pause_writing``) or all is written."""
        transport = self._transport
        core = self._core
        buffer = core.outbound
        while not (self._paused or self._ended or self._eof_sent):
            chunks = core.data_to_send()
            if core.events is not None or core.room_wanted:
                self._port.after_output()
            if chunks:
                if transport.is_closing():
                    self._port.lost()
                    return
                payload = b"".join(chunks)
                if payload:
                    # Calls pause_writing() at once if the socket does not take it all.
                    transport.write(payload)
                    core.bytes_out += len(payload)
                if chunks[-1] == b"":
                    self._write_eof()
                    return
            if not buffer:
                break
        if self._output_paused and buffer.bytes <= buffer.limit:
            self._output_paused = False
            if self._may_read() and not transport.is_closing():
                transport.resume_reading()

    def _write_eof(self) -> None:
        transport = self._transport
        self._eof_sent = True
        if self._core.protocol.close_rcvd is not None or self._eof_received:
            # The closing handshake is complete: the server closes TCP first.
            transport.close()
            return
        # After failing the connection: half-close, keep reading until the peer
        # closes (see StreamDriver._half_close); the close timer bounds the wait.
        try:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        except (RuntimeError, OSError):
            transport.abort()
        self.arm_close_timer()

    # -- the end ------------------------------------------------------------------------------

    def arm_close_timer(self) -> None:
        if self._timer_armed or self._ended:
            return
        self._timer_armed = True
        port = self._port
        if isinstance(port.clock, MonotonicClock):
            # A loop timer, not a task: a drain starts one per connection.
            self._timer = self._loop.call_later(port.close_timeout, self._timed_out)
        elif not port.start_soon(self._close_timer):
            port.connection.abort()  # the server is stopping: no time left to wait

    def _timed_out(self) -> None:
        previous = enter_callback()
        try:
            self._timer = None
            self._port.connection.abort()
        finally:
            exit_callback(previous)

    async def _close_timer(self) -> None:
        # The peer has close_timeout seconds to answer our close frame (a test's clock).
        port = self._port
        with anyio.CancelScope() as scope:
            if self._ended:
                return
            self._timer = scope
            await port.clock.sleep(port.close_timeout)
            port.connection.abort()

    def abort(self) -> None:
        self._transport.abort()
        self._end()

    def _end(self) -> None:
        self._ended = True
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()
        self._port.finalize()
        if self._done is not None:
            self._done.set()

    async def closed(self) -> None:
        if self._ended:
            return
        done = self._done = self._done or anyio.Event()
        await done.wait()


class _TaskDriver:
    """What the two drivers that run in a task share (:class:`StreamDriver` and
    :class:`ASGIDriver`): a reader in the connection's task, a writer task beside
    it that sleeps until woken, the close timer as a task, and the hand-off of
    what was read under a full ``block`` mailbox."""

    uses_callbacks = False
    #: send() lets the writer task run after every call.
    send_batch = 1

    __slots__ = (
        "_blocked",
        "_core",
        "_new_event",
        "_port",
        "_rate_paused",
        "_tg",
        "_timer_armed",
        "_writer_done",
        "_writer_wake",
    )

    _port: DriverPort
    _core: ConnectionCore

    def __init__(self) -> None:
        self._tg: anyio.abc.TaskGroup | None = None
        self._writer_wake: Waiter | None = None
        self._writer_done = anyio.Event()
        self._new_event = primitives().event
        self._blocked = False  # the mailbox is full under ``block`` (statistics only)
        self._rate_paused = False  # reading waits: the client is over its inbound rate
        self._timer_armed = False

    def bind(self, port: DriverPort) -> None:
        self._port = port
        self._core = port.core

    def start(self, resume: bool) -> None:
        """Serve the connection in a task of the server."""
        if not self._port.start_soon(self.run):
            self._port.connection.abort()

    async def run(self) -> None:
        raise NotImplementedError

    # -- reading ------------------------------------------------------------------------------

    async def _hand_on(self, messages: list[str | bytes], now: float) -> None:
        port = self._port
        while messages:
            blocked = port.deliver(messages, False)
            if blocked is None:
                break
            # Full under ``block``: stop reading until there is room (TCP backpressure).
            self._blocked = True
            await port.deliver_waiting(messages[blocked])
            messages = messages[blocked + 1 :]
            now = port.clock.now()
        self._blocked = False
        port.settle(now)

    async def _rate_pause(self) -> None:
        """Over the route's inbound rate: read nothing more for that long."""
        core = self._core
        pause, core.read_pause = core.read_pause, 0.0
        self._rate_paused = True
        try:
            await self._port.clock.sleep(pause)
        finally:
            self._rate_paused = False

    def reading_paused(self) -> bool:
        return self._blocked or self._rate_paused

    # -- writing ------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        wake = self._writer_wake
        if wake is not None:
            self._writer_wake = None
            wake.set()

    flush_now = flush_soon

    def flush_pending(self) -> None:
        """Nothing to do: the writer never holds a write back."""

    def write_direct(self, item: OutboundItem) -> bool:
        """Never: only the writer task writes."""
        return False

    async def _sleep_until_woken(self) -> None:
        """The writer has nothing to write: wait for :meth:`flush_soon`."""
        wake = self._writer_wake = self._new_event()
        await wake.wait()

    # -- the end ------------------------------------------------------------------------------

    def arm_close_timer(self) -> None:
        if self._timer_armed or self._tg is None:  # no task group: not serving (any more)
            return
        self._timer_armed = True
        self._tg.start_soon(self._close_timer)

    async def _close_timer(self) -> None:
        # The peer has close_timeout seconds to answer our close frame.
        port = self._port
        await port.clock.sleep(port.close_timeout)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def abort(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def closed(self) -> None:
        await self._writer_done.wait()


class StreamDriver(_TaskDriver):
    """Drives a connection over an anyio ``ByteStream`` (trio, TLS): a reader loop in
    the caller's task and a writer task beside it."""

    framed = True

    __slots__ = ("_output_paused", "_stream")

    def __init__(self, stream: ByteStream) -> None:
        super().__init__()
        self._stream = stream
        self._output_paused = False  # reading waits for the outbound buffer to drain

    async def run(self) -> None:
        """Read until the connection ends; the writer runs beside. Never raises for I/O."""
        port = self._port
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                await self._reader()
                # The peer is gone or closing: give the writer close_timeout to finish.
                with anyio.move_on_after(port.close_timeout):
                    await self._writer_done.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._writer_done.set()  # the writer may have been cancelled before it began
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
                port.finalize()

    # -- reading ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        stream = self._stream
        core = self._core
        clock = self._port.clock
        now = clock.now()
        await self._hand_on(core.receive_data(b"", now), now)
        # Read until the peer closes TCP or the writer closes the socket: after a
        # failure the writer only half-closes (see _half_close).
        while True:
            try:
                data = await stream.receive(_READ_SIZE)
            except _CLOSED_STREAM_ERRORS:
                now = clock.now()
                await self._hand_on(core.receive_eof(now), now)
                break
            now = clock.now()
            await self._hand_on(core.receive_data(data, now), now)
            if core.over_limit():
                await self._wait_for_outbound_room()
            if core.read_pause:
                await self._rate_pause()

    async def _wait_for_outbound_room(self) -> None:
        """Read nothing more until the writer has brought the outbound buffer back
        within its limit, or has ended (reading is what queues pongs)."""
        core = self._core
        done = self._writer_done
        self._output_paused = True
        try:
            while core.over_limit() and not done.is_set():
                await self._port.wait_for_room()
        finally:
            self._output_paused = False

    def reading_paused(self) -> bool:
        return self._output_paused or self._blocked or self._rate_paused

    # -- writing ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        port = self._port
        core = self._core
        protocol = core.protocol
        stream = self._stream
        try:
            while True:
                if not core.wants_write():
                    await self._sleep_until_woken()
                    continue
                chunks = core.data_to_send()
                if core.events is not None or core.room_wanted:
                    port.after_output()
                eof = bool(chunks) and chunks[-1] == b""
                payload = b"".join(chunks)
                if payload:
                    await stream.send(payload)
                    core.bytes_out += len(payload)
                if eof:
                    if protocol.close_rcvd is not None:
                        # The closing handshake is complete: the server closes TCP first.
                        with anyio.CancelScope(shield=True):
                            await stream.aclose()
                    else:
                        await self._half_close()
                    break
        except _CLOSED_STREAM_ERRORS:
            port.lost()
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        finally:
            self._writer_done.set()
            port.room()  # a reader waiting for the writer must not wait forever

    async def _half_close(self) -> None:
        """After failing the connection: send EOF but keep reading until the peer closes.

        Closing with unread input makes the kernel reset the connection, and a
        peer still sending could lose our close frame (e.g. its 1009). The close
        timer bounds the wait.
        """
        try:
            await self._stream.send_eof()
        except (NotImplementedError, TypeError, RuntimeError, *_CLOSED_STREAM_ERRORS):
            # anyio cannot half-close TLS (NotImplementedError, or TypeError once the
            # TLS session is gone), and uvloop raises RuntimeError on a transport the
            # peer already reset: close outright.
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        self.arm_close_timer()


class ASGIDriver(_TaskDriver):
    """Drives a connection over an ASGI server's WebSocket: whole messages, never bytes.

    The ASGI server owns the socket and the framing (fragments, UTF-8, pings,
    compression), so the core is fed whole messages (``receive_message``) and
    hands whole messages back (``take_messages``, ``close_due``). A reader loop
    in the scope's task awaits ``receive()``; under a full ``block`` mailbox it
    stops calling it, so the server's own bounded queue fills and it stops
    reading the socket. A writer task is the only caller of ``send()``, one
    message at a time: what the server has not taken yet stays in the outbound
    buffer, under the route's slow-consumer policy.

    On asyncio, a message needs no task switch of its own while the actor and
    the writer are idle: the reader begins the actor's step itself
    (``Cell.step_inline``, the reader's task stepping aside), and a send while
    the writer sleeps begins ``send()`` on the writer's behalf
    (:func:`~actors._inline.step_as`). A ``send()`` that completes at once (an
    ASGI server that writes to its transport) costs no task switch; one that
    suspends is handed to the writer, which finishes it before anything else.
    """

    #: The ASGI server frames each message itself.
    framed = False

    __slots__ = ("_handed", "_inline", "_receive", "_send", "_writer_task", "send_batch")

    def __init__(
        self,
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        super().__init__()
        self._receive = receive
        self._send = send
        #: Steps may begin in the reader's and the actor's turn (asyncio only).
        self._inline = sniffio.current_async_library() == "asyncio"
        #: A send goes out at once while the writer sleeps, so the actor's step
        #: need not yield to the writer after each: every 32nd, as on the
        #: transport driver (trio: after each, for the writer task).
        self.send_batch = _SEND_BATCH if self._inline else 1
        #: The writer, while it sleeps and ``send()`` may begin on its behalf.
        self._writer_task: asyncio.Task[Any] | None = None
        #: A ``send()`` begun on the writer's behalf that it must finish: the
        #: suspended call and the messages taken after it, or what it raised.
        self._handed: tuple[Awaitable[Any], list[OutboundItem]] | Exception | None = None

    async def run(self) -> None:
        """Serve the accepted scope until the connection ends. Never raises for I/O."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                await self._reader()
                tg.cancel_scope.cancel()  # the client is gone: nothing more can be sent
        finally:
            self._tg = None
            self._writer_task = None
            self._writer_done.set()
            self._port.finalize()

    async def _reader(self) -> None:
        receive = self._receive
        core = self._core
        port = self._port
        clock = port.clock
        inline = self._inline
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                data: str | bytes
                if text is not None:
                    data = text
                    size = len(text) if text.isascii() else len(text.encode())
                else:
                    data = bytes(message.get("bytes") or b"")
                    size = len(data)
                if core.receive_message(data, size) and port.deliver([data], inline) is not None:
                    # Full under ``block``: stop receiving until there is room.
                    self._blocked = True
                    try:
                        await port.deliver_waiting(data)
                    finally:
                        self._blocked = False
                port.settle(clock.now())
                if core.read_pause:
                    await self._rate_pause()
            elif kind == "websocket.disconnect":
                code = message.get("code")
                core.peer_closed(
                    CloseCode.NO_STATUS_RCVD if code is None else int(code),
                    str(message.get("reason") or ""),
                )
                return

    # -- writing ------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        wake = self._writer_wake
        if wake is None:
            return  # the writer is awake: it takes what is queued next
        task = self._writer_task
        if task is not None and self._quiet():
            self._send_aside(task)
            if self._handed is None and self._quiet() and not self._core.outbound:
                return  # all sent; the writer sleeps on
        self._writer_wake = None
        wake.set()

    flush_now = flush_soon

    def _quiet(self) -> bool:
        """Whether the writer has nothing to do but send messages: no events to
        act on, nobody waiting for room, no close to send."""
        core = self._core
        return core.events is None and not core.room_wanted and core.close_request is None

    def _send_aside(self, task: asyncio.Task[Any]) -> None:
        """Send what is queued now, each ``send()`` run on the sleeping writer's
        behalf; one that suspends (or raises) is handed to the writer."""
        core = self._core
        send = self._send
        while items := core.take_messages():
            for index, item in enumerate(items):
                call = send(_message(item))
                if call.__class__ is not CoroutineType:
                    self._handed = (call, items[index + 1 :])  # an awaitable of another kind
                    return
                try:
                    _, rest = step_as(task, cast("Coroutine[Any, Any, None]", call), aside=True)
                except Exception as exc:
                    self._handed = exc
                    return
                if rest is not None:
                    self._handed = (Resume(rest), items[index + 1 :])
                    return

    async def _writer(self) -> None:
        port = self._port
        core = self._core
        send = self._send
        if self._inline:
            self._writer_task = asyncio.current_task()
        try:
            while True:
                handed = self._handed
                if handed is not None:
                    self._handed = None
                    if isinstance(handed, Exception):
                        raise handed
                    call, after = handed
                    await call
                    for item in after:
                        await send(_message(item))
                items = core.take_messages()
                close = None if items else core.close_due()
                if core.events is not None or core.room_wanted:
                    port.after_output()
                for item in items:
                    await send(_message(item))
                if close is not None:
                    code, reason = close
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    break
                if not items:
                    await self._sleep_until_woken()
        except OSError:
            # The ASGI server says the client is gone (uvicorn's ClientDisconnected).
            port.lost()
        finally:
            self._writer_task = None
            self._writer_done.set()
            port.room()


def _message(item: OutboundItem) -> dict[str, Any]:
    """The ASGI ``websocket.send`` message of ``item``."""
    if item.text:
        return {"type": "websocket.send", "text": item.payload.decode()}
    return {"type": "websocket.send", "bytes": item.payload}
