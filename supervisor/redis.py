"""The Redis backplane: several wsup processes and machines as one cluster.

Theory of operation:
    Every node keeps its own registry of local actors (see
    :class:`actors.Runtime`); Redis only carries messages between nodes. Each
    address with local members is one Redis pub/sub channel,
    ``<prefix>:addr:<address>``: the runtime calls :meth:`RedisBackplane.subscribe`
    when an address gets its first local member and
    :meth:`RedisBackplane.unsubscribe` when it loses its last one, and
    :meth:`RedisBackplane.publish` for every send. PUBLISH answers how many
    subscribers got the message; this node's own subscription is subtracted, so
    the runtime learns how many *other* nodes were reached (0 makes a dead
    letter when nobody local got it either). A node receives its own publishes
    too (it is subscribed when it has local members) and drops them: the local
    members already got the message from the runtime.

    Three connections per node: one publisher (a single connection, so messages
    from this node leave in the order they were sent; publishes waiting at the
    same time go out as one pipeline), one subscriber (which receives every
    message for this node, in the order Redis published them), and one control
    connection for the liveness key. Each node refreshes
    ``<prefix>:node:<node id>`` with an expiry (``node_ttl``); the live nodes are
    the keys that have not expired (:meth:`RedisBackplane.nodes`). A node that
    dies without saying goodbye loses its subscriptions with its connection at
    once, and leaves the node set once its key expires.

    Delivery is at-most-once: Redis pub/sub keeps nothing for a subscriber that
    is not connected, except for addresses with history. Those keep their
    records in a Redis Stream, ``<prefix>:history:<address>`` (the entry id is
    ``<offset>-<ms>``, the message in field ``m``), next to a hash
    ``<prefix>:history-meta:<address>`` holding the epoch and the last offset.
    One Lua script (:data:`_HISTORY_APPEND`) stamps a message with the next
    offset, adds it to the stream, trims the stream by length and age, and
    publishes it, so every node (the sender included, which does not drop its
    own records) receives an address's records in offset order. When the hash
    is gone (Redis lost its data, or the address was idle past ``meta_ttl``) the
    next append starts a new epoch. When Redis cannot be reached, :attr:`RedisBackplane.up` is
    False (readiness turns 503), publishes fail at once with
    ``BackplaneUnavailable`` and nothing is buffered; the backplane reconnects
    with exponential backoff and re-subscribes every address that has local
    members before it reports itself up again.

    The Redis client (``redis.asyncio``) needs an asyncio event loop. On
    asyncio it shares the server's loop. On trio it runs on an asyncio loop in a
    thread of its own; calls cross between the two loops without blocking either,
    deliveries to the node are batched, and a node that falls behind stops the
    subscriber from reading (TCP backpressure up to Redis) instead of queueing.

The ``redis`` package is imported only when a :class:`RedisBackplane` is
created, so ``supervisor`` imports without the ``redis`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio
import structlog

from actors import (
    Backoff,
    Backplane,
    BackplaneUnavailable,
    HistoryRead,
    HistorySpec,
    Node,
    Position,
    Record,
    RecoveryResult,
    decide_recovery,
)
from actors._history import new_epoch
from actors._policy import BackoffState

from ._exceptions import RedisUnavailable

if TYPE_CHECKING:
    import trio
    from redis.asyncio.connection import AbstractConnection

__all__ = [
    "WIRE_VERSION",
    "ClusterNode",
    "RedisBackplane",
    "RedisBackplaneStatistics",
    "RedisUnavailable",
    "encode_payload",
    "redact_url",
]

T = TypeVar("T")

_log = structlog.get_logger("wsup.redis")

_SUBSCRIBE_CHUNK: Final = 512
"""Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once."""
_MAX_BATCH: Final = 512
"""Publishes sent as one pipeline at most."""
_YIELD_EVERY: Final = 64
"""Messages the subscriber handles before letting other tasks run."""
_OUTBOX_LIMIT: Final = 8192
"""Deliveries waiting for a trio node's loop before the subscriber stops reading."""
_STOP_TIMEOUT: Final = 2.0
"""Seconds a stopping node spends saying goodbye to Redis."""

_KIND_STR: Final = ord("s")
_KIND_BYTES: Final = ord("b")
_KIND_JSON: Final = ord("j")


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One live node of the cluster, as its liveness key describes it.

    Attributes:
        node_id: the node's id (the node part of its actors' addresses).
        host: the host name of its machine.
        pid: its process id.
        started: when its backplane first connected (Unix time).
    """

    node_id: str
    host: str
    pid: int
    started: float


@dataclass(frozen=True, slots=True)
class RedisBackplaneStatistics:
    """A snapshot of one :class:`RedisBackplane`.

    Attributes:
        up: whether remote delivery works right now.
        subscriptions: addresses with local members (each one Redis channel).
        pending: publishes waiting for Redis's answer.
        published: messages Redis accepted from this node.
        received: messages from other nodes handed to the runtime.
        failed: publishes that failed (Redis down, too slow, or the queue full).
        reconnects: connections re-established after a loss.
    """

    up: bool
    subscriptions: int
    pending: int
    published: int
    received: int
    failed: int
    reconnects: int


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # redis-py ends some messages with a period; the caller adds its own punctuation.
    return text.rstrip(".")


class _LinkStale(Exception):
    """The subscriber connection stopped answering pings."""


class _Failed(Exception):
    """A publish failed on the Redis side; the node side adds the address."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Link:
    """One session with Redis: three connections, alive until the first error."""

    def __init__(
        self, pub: AbstractConnection, sub: AbstractConnection, ctl: AbstractConnection
    ) -> None:
        self.pub = pub
        self.sub = sub
        self.ctl = ctl
        self.ctl_lock = asyncio.Lock()
        self.error: BaseException | None = None
        self.scope: anyio.CancelScope | None = None
        self.last_rx = 0.0

    def cancelling(self) -> bool:
        return self.scope is not None and self.scope.cancel_called

    def lost(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.scope is not None:
            self.scope.cancel()

    async def close(self) -> None:
        for conn in (self.pub, self.sub, self.ctl):
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


# --- crossing between the node's event loop and the Redis client's ----------------------


class _Bridge:
    """How the node's loop and the Redis client's asyncio loop reach each other."""

    async def __aenter__(self) -> _Bridge:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def to_node(self, fn: Callable[..., None], *args: Any) -> None:
        """From the Redis loop: run ``fn(*args)`` on the node's loop soon, in call order."""
        fn(*args)

    def to_redis(self, fn: Callable[..., None], *args: Any) -> None:
        """From the node's loop: run ``fn(*args)`` on the Redis loop soon, in call order."""
        fn(*args)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """From the node's loop: run ``coro`` on the Redis loop and return its result."""
        return await coro

    async def room(self) -> None:
        """On the Redis loop: wait while too many deliveries wait for the node."""


class _SameLoop(_Bridge):
    """The node runs on asyncio: the Redis client shares its loop, calls are direct."""


class _OtherThread(_Bridge):
    """The node runs on trio: the Redis client gets an asyncio loop in a thread.

    Node → Redis: ``call_soon_threadsafe`` (a task for coroutines, whose result
    comes back through trio's ``run_sync_soon``). Redis → node: a batch of
    callbacks run by one ``run_sync_soon``. Neither side ever blocks on the other.
    """

    def __init__(self) -> None:
        import trio

        self._trio = trio
        self._token: trio.lowlevel.TrioToken = trio.lowlevel.current_trio_token()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: contextvars.Context | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="wsup-redis", daemon=True)
        self._lock = threading.Lock()
        self._outbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False
        self._waiting_for_room = False
        self._room: asyncio.Event | None = None

    def _main(self) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is optional
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        # A fresh context: work submitted from trio must not inherit trio's
        # context (sniffio would then report "trio" inside the asyncio loop).
        self._context = contextvars.copy_context()
        self._room = asyncio.Event()
        self._started.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def __aenter__(self) -> _Bridge:
        self._thread.start()
        await anyio.to_thread.run_sync(self._started.wait)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._thread.join)

    def to_node(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            self._outbox.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(self._trio.RunFinishedError):
            self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._outbox = self._outbox, deque()
            self._scheduled = False
            wake = self._waiting_for_room
            self._waiting_for_room = False
        for fn, args in batch:
            try:
                fn(*args)
            except Exception:
                _log.exception("redis.delivery_failed")
        if wake and self._loop is not None and self._room is not None:
            self._loop.call_soon_threadsafe(self._room.set, context=self._context)

    async def room(self) -> None:
        assert self._room is not None
        with self._lock:
            if len(self._outbox) < _OUTBOX_LIMIT:
                return
            self._waiting_for_room = True
            self._room.clear()
        await self._room.wait()

    def to_redis(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop has stopped: nothing to do
            self._loop.call_soon_threadsafe(fn, *args, context=self._context)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        assert loop is not None
        token = self._token
        trio = self._trio
        context = self._context
        started: list[asyncio.Task[T]] = []
        finished = anyio.Event()

        def on_done(_: asyncio.Task[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

        def start() -> None:
            task = loop.create_task(coro)
            started.append(task)
            task.add_done_callback(on_done)

        try:
            loop.call_soon_threadsafe(start, context=context)
        except RuntimeError:  # the loop has stopped
            coro.close()
            raise _Failed("the backplane stopped") from None
        try:
            await finished.wait()
        except BaseException:
            # Cancelled on the node's side: cancel the work and let it clean up.
            # Scheduled after start(), so the task exists when this runs.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_cancel_all, started, context=context)
                with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_TIMEOUT):
                    await finished.wait()
            if started and started[0].done() and not started[0].cancelled():
                started[0].exception()  # retrieved: asyncio must not log it
            raise
        task = started[0]
        if task.cancelled():
            raise _Failed("the backplane stopped")
        return task.result()


def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()


# --- the backplane ----------------------------------------------------------------------------


class RedisBackplane(Backplane):
    """Carries messages between nodes through Redis pub/sub.

    ::

        backplane = RedisBackplane("redis://127.0.0.1:6379/0")
        await serve(app, backplane=backplane)

    Messages that cross nodes must be ``str``, ``bytes`` or JSON-serialisable;
    ``str`` arrives as ``str`` and ``bytes`` as ``bytes``, anything else goes
    through JSON (a tuple arrives as a list). Sends to this node's own actor
    addresses (``conn:<node>.<n>``) never touch Redis.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS)
            or ``unix://path``. Pub/sub ignores the database number: clusters
            sharing one Redis need different prefixes.
        required: fail at start when Redis is unreachable (default). False
            starts degraded (not ready, remote sends fail) and keeps reconnecting.
        prefix: namespace of every channel and key.
        node_ttl: expiry of this node's liveness key, in seconds; refreshed every
            third of it. It is also how long Redis may stay silent before the
            link counts as broken.
        publish_timeout: seconds a send may wait for Redis before it fails with
            ``BackplaneUnavailable`` (it may still be delivered later).
        connect_timeout: seconds to establish each connection.
        reconnect: backoff between reconnection attempts.
        max_pending: publishes that may wait for Redis at once; more senders
            wait for room (within ``publish_timeout``).

    Raises:
        ImportError: the ``redis`` package is missing (install ``wsup[redis]``).
        ValueError: the URL or a setting is invalid.
    """

    kind = "redis"
    remote = True

    def __init__(
        self,
        url: str,
        *,
        required: bool = True,
        prefix: str = "wsup",
        node_ttl: float = 10.0,
        publish_timeout: float = 1.0,
        connect_timeout: float = 2.0,
        reconnect: Backoff | None = None,
        max_pending: int = 10_000,
    ) -> None:
        try:
            from redis.asyncio.connection import parse_url
        except ImportError as exc:  # pragma: no cover - the dev install has redis
            raise ImportError(
                "the Redis backplane needs the redis package: pip install 'wsup[redis]'"
            ) from exc
        parse_url(url)  # raises ValueError on a bad scheme or option
        if node_ttl <= 0 or publish_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("node_ttl, publish_timeout and connect_timeout must be > 0")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if not prefix or "\x00" in prefix:
            raise ValueError("prefix must be a non-empty string without NUL")
        self.url = url
        self.display_url = redact_url(url)
        self.required = required
        self.prefix = prefix
        self.node_ttl = node_ttl
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect or Backoff(minimum=0.05, maximum=5.0, reset_after=30.0)
        self.max_pending = max_pending
        self._channel_prefix = f"{prefix}:addr:".encode()
        self._node_prefix = f"{prefix}:node:"
        self._presence_prefix = f"{prefix}:presence:"
        # Node side.
        self._node: Node | None = None
        self._node_id: str | None = None
        self._tag = b""
        self._bridge: _Bridge | None = None
        self._node_up = False
        self._state_waiters: list[anyio.Event] = []
        # Redis side (touched only on the Redis client's loop once running).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._up = False
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._pending_changes: dict[str, bool] = {}
        # Presence: the local members of each name and group, as written to Redis,
        # and the changes not written yet ((address, member) -> present).
        # Values: the member's metadata as JSON text ("" without); a change to None
        # removes the member.
        self._present: dict[str, dict[str, str]] = {}
        self._presence_changes: dict[tuple[str, str], str | None] = {}
        self._change_seq = 0
        self._confirmed_seq = 0
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._queue: deque[tuple[bytes, bytes, asyncio.Future[int]]] = deque()
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._publisher_wake: asyncio.Event | None = None
        self._writer_wake: asyncio.Event | None = None
        self._ping_due = False
        self._info = b""
        self._published = 0
        self._received = 0
        self._failed = 0
        self._reconnects = 0

    # -- the Backplane interface (node side) -------------------------------------------

    @property
    def up(self) -> bool:
        """Whether remote delivery works right now (False before the first connection)."""
        return self._node_up

    async def run(self, node: Node, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Connect, then carry messages until cancelled; reconnect when Redis is lost.

        Reports started once connected, or at once (degraded) when not ``required``.

        Raises:
            RedisUnavailable: Redis is unreachable at start and ``required`` is set.
        """
        node_id = node.node_id
        if "\x00" in node_id:
            raise ValueError("a node id must not contain NUL")
        self._node = node
        self._node_id = node_id
        self._tag = node_id.encode() + b"\x00"
        self._info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        ).encode()
        on_asyncio = sniffio.current_async_library() == "asyncio"
        bridge: _Bridge = _SameLoop() if on_asyncio else _OtherThread()
        async with bridge:
            self._bridge = bridge
            ready = anyio.Event()
            failure: list[RedisUnavailable] = []

            async def serve() -> None:
                try:
                    await bridge.call(self._serve(lambda: bridge.to_node(ready.set)))
                except RedisUnavailable as exc:
                    failure.append(exc)
                    ready.set()

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(serve)
                    await ready.wait()
                    if failure:
                        tg.cancel_scope.cancel()
                    else:
                        task_status.started()
            finally:
                # Before the bridge closes: later sends fail fast instead of reaching it.
                self._bridge = None
                self._node_up = False
        if failure:
            raise failure[0]

    def subscribe(self, address: str) -> None:
        """Receive messages for ``address`` from other nodes (applied asynchronously)."""
        self._request_change(address, True)

    def unsubscribe(self, address: str) -> None:
        """Stop receiving messages for ``address`` (applied asynchronously)."""
        self._request_change(address, False)

    def member_joined(self, address: str, member: str, meta: Any = None) -> None:
        """Record ``member`` (and its ``meta``) in the presence of ``address``
        (written asynchronously).

        Raises:
            TypeError: ``meta`` is not JSON-serialisable.
        """
        if meta is None:
            text = ""
        else:
            try:
                text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"presence metadata for {address!r} must be JSON-serialisable ({exc})"
                ) from None
        self._request_presence(address, member, text)

    def member_left(self, address: str, member: str) -> None:
        """Remove ``member`` from the presence of ``address`` (written asynchronously)."""
        self._request_presence(address, member, None)

    def _request_presence(self, address: str, member: str, meta: str | None) -> None:
        bridge = self._bridge
        if bridge is None:
            self._presence_change(address, member, meta)
        else:
            bridge.to_redis(self._presence_change, address, member, meta)

    async def presence(self, address: str) -> dict[str, tuple[str, Any]]:
        """Return the members of ``address`` on every live node: member -> (node id, meta).

        Each node keeps its members of each name and group in the hash
        ``<prefix>:presence:<address>`` (field: the member's address; value:
        its node id, then NUL and its metadata as JSON if it has any). Entries
        of nodes that are no longer live (their liveness key expired: a node
        killed without a goodbye) are left out and deleted. The hash is read
        once Redis has applied the subscriptions this node asked for so far
        (see :meth:`synced`), so a member that joins ``address`` on another node
        after the read reaches a local member that joined before it as an
        event. Cost: one HGETALL, plus the SCAN and MGET of :meth:`nodes`, and
        one round trip on the subscriber connection when a subscription is
        still pending.

        Raises:
            BackplaneUnavailable: Redis is unreachable, or did not confirm a
                pending subscription within ``publish_timeout``.
        """
        bridge = self._bridge
        if bridge is None or not self._node_up:
            raise BackplaneUnavailable(address, f"Redis at {self.display_url} is unreachable")
        try:
            return await bridge.call(self._presence(address))
        except _Failed as exc:
            raise BackplaneUnavailable(address, exc.why) from None

    def _request_change(self, address: str, want: bool) -> None:
        bridge = self._bridge
        if bridge is None:
            self._change(address, want)
        else:
            bridge.to_redis(self._change, address, want)

    async def publish(self, address: str, message: Any) -> int:
        """Publish ``message`` to the nodes that have members of ``address``.

        Returns:
            How many other nodes received it.

        Raises:
            TypeError: the message is not ``str``, ``bytes`` or JSON-serialisable.
            BackplaneUnavailable: Redis is down, did not answer within
                ``publish_timeout``, or too many publishes are waiting.
        """
        if self._is_own(address):
            # Only this node can hold one of its own actor addresses.
            await anyio.lowlevel.checkpoint()
            return 0
        payload = self._encode(address, message)
        bridge = self._bridge
        if bridge is None or not self._node_up:
            self._failed += 1
            raise BackplaneUnavailable(address, f"Redis at {self.display_url} is unreachable")
        try:
            return await bridge.call(self._publish(address, payload))
        except _Failed as exc:
            raise BackplaneUnavailable(address, exc.why) from None

    # -- history (Redis Streams) ------------------------------------------------------------

    keeps_history = True

    async def append_history(self, address: str, message: Any, spec: HistorySpec) -> int:
        """Stamp ``message`` with the next offset of ``address``, keep it in the
        address's stream and publish it to every node, this one included.

        Returns:
            How many other nodes received it.

        Raises:
            TypeError: the message is not ``str``, ``bytes`` or JSON-serialisable.
            BackplaneUnavailable: Redis is down or did not answer; nobody got it.
        """
        body = self._encode(address, message)[len(self._tag) :]
        bridge = self._bridge
        if bridge is None or not self._node_up:
            self._failed += 1
            raise BackplaneUnavailable(address, f"Redis at {self.display_url} is unreachable")
        try:
            return await bridge.call(self._history_append(address, body, spec))
        except _Failed as exc:
            self._failed += 1
            raise BackplaneUnavailable(address, exc.why) from None

    async def read_history(self, address: str, since: Position, spec: HistorySpec) -> HistoryRead:
        """Read the records of ``address`` after ``since`` from its stream, once this
        node's subscription to the address is confirmed.

        Raises:
            BackplaneUnavailable: Redis is down or did not answer.
        """
        bridge = self._bridge
        if bridge is None or not self._node_up:
            raise BackplaneUnavailable(address, f"Redis at {self.display_url} is unreachable")
        try:
            return await bridge.call(self._history_read(address, since, spec))
        except _Failed as exc:
            raise BackplaneUnavailable(address, exc.why) from None

    def _history_keys(self, address: str) -> tuple[str, str]:
        return f"{self.prefix}:history-meta:{address}", f"{self.prefix}:history:{address}"

    async def _subscriptions_synced(self) -> None:
        """Wait until Redis applied this node's subscriptions (within ``publish_timeout``)."""
        if self._confirmed_seq >= self._change_seq:
            return
        try:
            await asyncio.wait_for(self._synced(), self.publish_timeout)
        except TimeoutError:
            raise _Failed(
                f"Redis did not confirm a subscription within {self.publish_timeout:g} s"
            ) from None

    async def _history_append(self, address: str, body: bytes, spec: HistorySpec) -> int:
        # A local member that joined just before this send gets it too.
        await self._subscriptions_synced()
        meta, stream = self._history_keys(address)
        reply = await self._history_script(
            _HISTORY_APPEND,
            (meta, stream, self._channel_prefix + address.encode()),
            (
                new_epoch(),
                body,
                spec.size,
                max(1, int(spec.ttl * 1000)),
                max(1, int(spec.meta_ttl * 1000)),
                self._tag,
            ),
        )
        self._published += 1
        # This node's own subscription counts among the receivers when it has members.
        return max(0, int(reply) - (1 if address in self._subscribed else 0))

    async def _history_read(self, address: str, since: Position, spec: HistorySpec) -> HistoryRead:
        await self._subscriptions_synced()
        meta, stream = self._history_keys(address)
        epoch_raw, last_raw, blob = await self._history_script(
            _HISTORY_READ,
            (meta, stream),
            (since.offset + 1, max(1, int(spec.ttl * 1000)), spec.size),
        )
        epoch = epoch_raw.decode() if epoch_raw else None
        last = int(last_raw)
        entries = _history_entries(blob)
        first_kept = int(entries[0][0]) if entries else None
        result = decide_recovery(since, epoch, last, first_kept)
        if result is RecoveryResult.RECOVERED and len(entries) != last - since.offset:
            result = RecoveryResult.TRIMMED  # a hole the age limit left (the clock jumped)
        if epoch is None:
            return HistoryRead(result, "", 0)
        records: tuple[Record, ...] = ()
        if result is RecoveryResult.RECOVERED:
            try:
                records = tuple(
                    Record(address, epoch, int(offset), _decode(b"\x00" + body))
                    for offset, body in entries
                )
            except (ValueError, UnicodeDecodeError) as exc:
                raise _Failed(f"a record of {address!r} cannot be read: {exc}") from None
        return HistoryRead(result, epoch, last, records)

    async def _history_script(
        self, script: _Script, keys: tuple[Any, ...], args: tuple[Any, ...]
    ) -> Any:
        """Run ``script`` on the control connection (loading it when Redis lacks it)."""
        from redis.exceptions import NoScriptError, ResponseError

        link = self._link
        if link is None or not self._up:
            raise _Failed(f"Redis at {self.display_url} is unreachable")
        try:
            async with link.ctl_lock:
                for command in ("EVALSHA", "EVAL"):
                    code = script.sha if command == "EVALSHA" else script.source
                    await link.ctl.send_command(
                        command, code, len(keys), *keys, *args, check_health=False
                    )
                    try:
                        return await link.ctl.read_response(disable_decoding=True)
                    except ResponseError as exc:
                        if command == "EVAL" or not isinstance(exc, NoScriptError):
                            raise _Failed(f"Redis refused the history script: {exc}") from None
        except self._link_errors() as exc:
            link.lost(exc)
            raise _Failed(_describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- more of the node side ----------------------------------------------------------

    async def nodes(self) -> dict[str, ClusterNode]:
        """Return the live nodes of the cluster (this one included), by node id.

        A node is live while its liveness key has not expired: a node that
        died is listed for at most ``node_ttl`` seconds more. Cost: one SCAN
        over the node keys and one MGET.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        bridge = self._bridge
        if bridge is None:
            raise BackplaneUnavailable("nodes", "the backplane is not running")
        return await bridge.call(self._nodes())

    @property
    def node_check_interval(self) -> float:  # type: ignore[override]
        """Half the node key's expiry: a lost node is noticed within 1.5 ``node_ttl``."""
        return self.node_ttl / 2

    async def live_nodes(self) -> set[str]:
        """The ids of the nodes whose liveness key has not expired; see :meth:`nodes`.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        return set(await self.nodes())

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> int | None:
        """Take lease ``name`` (key ``<prefix>:lease:<name>``, expiring after ``ttl``
        seconds) if it is free; the fencing token is ``INCR <prefix>:fence:<name>``.

        One Lua script: the check, the token and the key are one atomic step.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        token = await self._command(
            "lease",
            "EVAL",
            _ACQUIRE,
            2,
            f"{self.prefix}:lease:{name}",
            f"{self.prefix}:fence:{name}",
            holder,
            max(1, int(ttl * 1000)),
        )
        return int(token) or None

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend ``holder``'s lease to ``ttl`` seconds from when Redis receives this.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        renewed = await self._command(
            "lease",
            "EVAL",
            _RENEW,
            1,
            f"{self.prefix}:lease:{name}",
            holder,
            max(1, int(ttl * 1000)),
        )
        return bool(int(renewed))

    async def release_lease(self, name: str, holder: str) -> None:
        """Delete the lease if ``holder`` holds it, so a standby takes over at once.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        await self._command("lease", "EVAL", _RELEASE, 1, f"{self.prefix}:lease:{name}", holder)

    async def increment(self, key: str) -> int:
        """``INCR <prefix>:counter:<key>``: one counter for the whole cluster.

        Raises:
            BackplaneUnavailable: Redis is unreachable.
        """
        return int(await self._command("counter", "INCR", f"{self.prefix}:counter:{key}"))

    async def _command(self, what: str, *args: Any) -> Any:
        bridge = self._bridge
        if bridge is None:
            raise BackplaneUnavailable(what, "the backplane is not running")
        return await bridge.call(self._ctl_command(what, *args))

    async def _ctl_command(self, what: str, *args: Any) -> Any:
        link = self._link
        if link is None:
            raise BackplaneUnavailable(what, f"Redis at {self.display_url} is unreachable")
        try:
            async with link.ctl_lock:
                await link.ctl.send_command(*args, check_health=False)
                return await link.ctl.read_response()
        except self._link_errors() as exc:
            link.lost(exc)
            raise BackplaneUnavailable(what, _describe(exc)) from None

    async def synced(self) -> None:
        """Wait until Redis applies every subscribe and unsubscribe made so far.

        After it returns, a message another node publishes to an address this
        node subscribed to reaches it. While Redis is unreachable it waits for
        the reconnection (which restores every subscription); add a timeout.
        """
        bridge = self._bridge
        if bridge is None:
            raise BackplaneUnavailable("subscriptions", "the backplane is not running")
        await bridge.call(self._synced())

    async def wait_for_state(self, *, up: bool) -> None:
        """Wait until :attr:`up` equals ``up`` (returns at once if it does)."""
        while self._node_up != up:
            event = anyio.Event()
            self._state_waiters.append(event)
            await event.wait()

    def statistics(self) -> RedisBackplaneStatistics:
        """Return a frozen snapshot of this backplane. Cost: O(1)."""
        return RedisBackplaneStatistics(
            up=self._node_up,
            subscriptions=len(self._wanted),
            pending=len(self._queue),
            published=self._published,
            received=self._received,
            failed=self._failed,
            reconnects=self._reconnects,
        )

    def _state_on_node(self, up: bool) -> None:
        self._node_up = up
        if self._node is not None:
            self._node.backplane_state_changed(up)
        waiters, self._state_waiters = self._state_waiters, []
        for event in waiters:
            event.set()

    def _deliver(self, address: str, message: Any) -> None:
        if self._node is not None:
            self._received += 1
            self._node.deliver_remote(address, message)

    def _deliver_own(self, address: str, message: Any) -> None:
        if self._node is not None:
            self._node.deliver_own(address, message)

    def _is_own(self, address: str) -> bool:
        # Runtime-made addresses look like "<prefix>:<node id>.<counter>". A name an
        # app registers could only collide by copying this node's id on purpose.
        node_id = self._node_id
        if node_id is None:
            return False
        _, sep, rest = address.partition(":")
        owner, dot, counter = rest.rpartition(".")
        return bool(sep and dot) and owner == node_id and counter.isdigit()

    def _encode(self, address: str, message: Any) -> bytes:
        return encode_payload(self._tag, address, message)

    # -- the Redis side ---------------------------------------------------------------------

    def _change(self, address: str, want: bool) -> None:
        if want:
            self._wanted.add(address)
        else:
            self._wanted.discard(address)
        self._pending_changes[address] = want
        self._change_seq += 1
        if self._writer_wake is not None:
            self._writer_wake.set()

    def _presence_change(self, address: str, member: str, meta: str | None) -> None:
        members = self._present.get(address)
        if meta is not None:
            if members is None:
                members = self._present[address] = {}
            members[member] = meta
        elif members is not None:
            members.pop(member, None)
            if not members:
                del self._present[address]
        self._presence_changes[address, member] = meta
        if self._writer_wake is not None:
            self._writer_wake.set()

    async def _write_presence(self, link: _Link) -> None:
        """Write the presence changes made since the last call (one pipeline)."""
        changes, self._presence_changes = self._presence_changes, {}
        if not changes:
            return
        node = self._node_id or ""
        prefix = self._presence_prefix
        commands: list[tuple[Any, ...]] = [
            ("HDEL", prefix + address, member)
            if meta is None
            else ("HSET", prefix + address, member, f"{node}\x00{meta}" if meta else node)
            for (address, member), meta in changes.items()
        ]
        try:
            async with link.ctl_lock:
                for chunk in _chunks(commands, _MAX_BATCH):
                    await link.ctl.send_packed_command(
                        link.ctl.pack_commands(chunk), check_health=False
                    )
                    for _ in chunk:
                        await link.ctl.read_response()
        except BaseException:
            # Written again once the link is back (see _restore).
            for key, meta in changes.items():
                self._presence_changes.setdefault(key, meta)
            raise

    async def _presence(self, address: str) -> dict[str, tuple[str, Any]]:
        # Read after this node's subscription to the address is in place: a member who
        # joins elsewhere after the read then reaches it as an event (join, then read).
        await self._subscriptions_synced()
        link = self._link
        if link is None:
            raise _Failed(f"Redis at {self.display_url} is unreachable")
        key = self._presence_prefix + address
        try:
            async with link.ctl_lock:
                # One JSON string instead of 2n bulk replies: redis-py's reply parser
                # (without hiredis) took 0.2 s for 10,000 members; json.loads, 5 ms.
                await link.ctl.send_command("EVAL", _HGETALL_JSON, 1, key, check_health=False)
                answer: bytes = await link.ctl.read_response(disable_decoding=True)
        except self._link_errors() as exc:
            link.lost(exc)
            raise _Failed(_describe(exc)) from None
        flat: list[str] = json.loads(answer) if answer != b"{}" else []  # cjson: {} when empty
        pairs = list(zip(flat[::2], flat[1::2], strict=True))
        live = set(await self._nodes()) if pairs else set()
        found: dict[str, tuple[str, Any]] = {}
        dead: list[tuple[str, str]] = []
        for field, value in pairs:
            node, sep, meta = value.partition("\x00")
            if node not in live:
                dead.append((field, value))
                continue
            found[field] = (node, _loads_or_none(meta) if sep else None)
        if dead:
            # Members of nodes that died without a goodbye: nobody else removes them.
            # One HDEL each, so that the node whose HDEL removed a member (one only)
            # reports it: that is how its leave is delivered exactly once.
            lost: dict[str, tuple[str, Any]] = {}
            with contextlib.suppress(*self._link_errors()):
                async with link.ctl_lock:
                    commands = [("HDEL", key, field) for field, _ in dead]
                    await link.ctl.send_packed_command(
                        link.ctl.pack_commands(commands), check_health=False
                    )
                    for field, value in dead:
                        if await link.ctl.read_response() == 1:
                            node, sep, meta = value.partition("\x00")
                            lost[field] = (node, _loads_or_none(meta) if sep else None)
            if lost and self._bridge is not None:
                self._bridge.to_node(self._lost_on_node, address, lost)
        return found

    def _lost_on_node(self, address: str, lost: dict[str, tuple[str, Any]]) -> None:
        if self._node is not None:
            self._node.presence_lost(address, lost)

    def _set_up(self, up: bool) -> None:
        self._up = up
        assert self._bridge is not None
        self._bridge.to_node(self._state_on_node, up)

    def _link_errors(self) -> tuple[type[BaseException], ...]:
        from redis.exceptions import RedisError

        return (RedisError, OSError, EOFError, _LinkStale)

    def _connection(self, role: str) -> AbstractConnection:
        from redis.asyncio.connection import Connection, parse_url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = dict(parse_url(self.url))
        factory = options.pop("connection_class", Connection)
        options.update(
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.node_ttl,
            retry=Retry(NoBackoff(), 0),
            client_name=f"wsup-{self._node_id}-{role}",
            protocol=2,
        )
        conn: AbstractConnection = factory(**options)
        return conn

    async def _serve(self, ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._publisher_wake = asyncio.Event()
        self._writer_wake = asyncio.Event()
        errors: tuple[type[BaseException], ...] = (*self._link_errors(), TimeoutError)
        backoff = BackoffState(self.reconnect)
        first = True
        attempts = 0
        try:
            while True:
                try:
                    with anyio.fail_after(self.connect_timeout + self.node_ttl):
                        link = await self._open()
                except errors as exc:
                    attempts += 1
                    if first:
                        if self.required:
                            raise RedisUnavailable(self.display_url, _describe(exc)) from None
                        first = False
                        _log.warning(
                            "redis.started_degraded", url=self.display_url, error=_describe(exc)
                        )
                        self._set_up(False)
                        ready()
                    delay = backoff.next_delay(time.monotonic())
                    _log.warning(
                        "redis.reconnect_failed",
                        url=self.display_url,
                        error=_describe(exc),
                        attempt=attempts,
                        retry_in=round(delay, 3),
                    )
                    await anyio.sleep(delay)
                    continue
                if not first:
                    self._reconnects += 1
                _log.info(
                    "redis.connected",
                    url=self.display_url,
                    node=self._node_id,
                    subscriptions=len(self._subscribed),
                    attempts=attempts + 1,
                )
                attempts = 0
                self._link = link
                self._set_up(True)
                if first:
                    first = False
                    ready()
                # Returns when the link is lost; raises when the backplane stops
                # (the finally below then says goodbye on the still-open link).
                await self._run_link(link)
                self._link = None
                self._up = False
                self._fail_pending("connection to Redis lost")
                with anyio.CancelScope(shield=True):
                    await link.close()
                self._set_up(False)
                _log.error(
                    "redis.connection_lost",
                    url=self.display_url,
                    error=_describe(link.error) if link.error else "unknown",
                )
        finally:
            last = self._link
            self._link = None
            self._up = False
            self._fail_pending("the backplane stopped")
            if last is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_TIMEOUT):
                    await self._goodbye(last)
                with anyio.CancelScope(shield=True):
                    await last.close()

    async def _open(self) -> _Link:
        conns = [self._connection(role) for role in ("pub", "sub", "ctl")]
        link = _Link(*conns)
        try:
            for conn in conns:
                await conn.connect()  # type: ignore[no-untyped-call]
            await self._heartbeat_once(link)
            await self._restore(link)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await link.close()
            raise
        return link

    async def _restore(self, link: _Link) -> None:
        """Subscribe every wanted address on a fresh subscriber connection and confirm it."""
        self._pending_changes.clear()
        self._subscribed = set(self._wanted)
        seq = self._change_seq
        channels = [self._channel_prefix + a.encode() for a in self._subscribed]
        for chunk in _chunks(channels, _SUBSCRIBE_CHUNK):
            await link.sub.send_command("SUBSCRIBE", *chunk)
        await link.sub.send_command("PING", str(seq))
        while True:
            response = await link.sub.read_response(disable_decoding=True)
            if self._dispatch(response):
                break
        link.last_rx = time.monotonic()
        # Members that joined or stayed while the link was down are written again;
        # those that left meanwhile are still in the pending changes as removals.
        for address, members in self._present.items():
            for member, meta in members.items():
                self._presence_changes[address, member] = meta
        await self._write_presence(link)

    async def _run_link(self, link: _Link) -> None:
        errors = self._link_errors()

        async def guard(loop_fn: Callable[[_Link], Coroutine[Any, Any, None]]) -> None:
            try:
                await loop_fn(link)
            except errors as exc:
                link.lost(exc)
            except Exception as exc:
                # redis-py closes a connection whose I/O was interrupted, and a task
                # still using it then fails oddly. Any failure ends this link only;
                # an unexpected one is logged in full first.
                cancelled = isinstance(exc.__context__, anyio.get_cancelled_exc_class())
                if link.error is None and not cancelled and not link.cancelling():
                    _log.exception("redis.link_failed", task=loop_fn.__name__)
                link.lost(exc)

        with anyio.CancelScope() as scope:
            link.scope = scope
            if link.error is not None:
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(guard, self._reader)
                tg.start_soon(guard, self._writer)
                tg.start_soon(guard, self._publisher)
                tg.start_soon(guard, self._heartbeat)

    async def _reader(self, link: _Link) -> None:
        room = self._bridge.room if self._bridge is not None else None
        handled = 0
        while True:
            response = await link.sub.read_response(disable_decoding=True, timeout=math.inf)
            link.last_rx = time.monotonic()
            self._dispatch(response)
            handled += 1
            if handled % _YIELD_EVERY == 0:
                # Buffered messages are read without suspending: let the rest run.
                await asyncio.sleep(0)
            if room is not None:
                await room()

    def _dispatch(self, response: Any) -> bool:
        """Handle one subscriber reply; return True for a pong (a confirmation)."""
        if isinstance(response, bytes):
            # PING outside subscribed mode (no channel at all) answers its argument.
            self._confirm(int(response))
            return True
        if not isinstance(response, list) or len(response) < 2:
            return False
        kind = response[0]
        if kind == b"message" and len(response) == 3:
            self._incoming(response[1], response[2])
        elif kind == b"pong" and response[1]:
            seq = int(response[1])
            self._confirm(seq)
            return True
        return False

    def _incoming(self, channel: bytes, payload: bytes) -> None:
        own = payload.startswith(self._tag)
        if own and payload[len(self._tag) : len(self._tag) + 1] != b"r":
            return  # our own publish: the local members already have it
        prefix = self._channel_prefix
        if not channel.startswith(prefix):
            return
        try:
            address = channel[len(prefix) :].decode()
            sep = payload.find(b"\x00")
            if payload[sep + 1 : sep + 2] == b"r":
                message = _decode_record(address, payload[sep + 2 :])
            else:
                message = _decode(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            _log.warning(
                "redis.message_dropped", channel=channel[:200].decode("replace"), error=str(exc)
            )
            return
        assert self._bridge is not None
        # A record of our own comes back like everyone's: that is how it is ordered.
        self._bridge.to_node(self._deliver_own if own else self._deliver, address, message)

    def _confirm(self, seq: int) -> None:
        if seq > self._confirmed_seq:
            self._confirmed_seq = seq
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._sync_waiters:
            if target <= self._confirmed_seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((target, fut))
        self._sync_waiters = keep

    async def _writer(self, link: _Link) -> None:
        wake = self._writer_wake
        assert wake is not None
        prefix = self._channel_prefix
        while True:
            await wake.wait()
            wake.clear()
            changes, self._pending_changes = self._pending_changes, {}
            seq = self._change_seq
            add: list[bytes] = []
            remove: list[bytes] = []
            for address, want in changes.items():
                if want and address not in self._subscribed:
                    self._subscribed.add(address)
                    add.append(prefix + address.encode())
                elif not want and address in self._subscribed:
                    self._subscribed.discard(address)
                    remove.append(prefix + address.encode())
            for chunk in _chunks(add, _SUBSCRIBE_CHUNK):
                await link.sub.send_command("SUBSCRIBE", *chunk, check_health=False)
            for chunk in _chunks(remove, _SUBSCRIBE_CHUNK):
                await link.sub.send_command("UNSUBSCRIBE", *chunk, check_health=False)
            if changes or self._ping_due:
                # The pong comes back after Redis applied everything sent before it.
                self._ping_due = False
                await link.sub.send_command("PING", str(seq), check_health=False)
            await self._write_presence(link)

    async def _publisher(self, link: _Link) -> None:
        wake = self._publisher_wake
        assert wake is not None
        queue = self._queue
        conn = link.pub
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch: list[asyncio.Future[int]] = []
            commands: list[bytes] = []
            while queue and len(batch) < _MAX_BATCH:
                channel, payload, fut = queue.popleft()
                if fut.done():  # its sender gave up (timeout or cancelled)
                    continue
                batch.append(fut)
                commands.append(_pack_publish(channel, payload))
            self._wake_space(len(batch))
            if not batch:
                continue
            try:
                await conn.send_packed_command(b"".join(commands), check_health=False)
                for fut in batch:
                    count = await conn.read_response(disable_decoding=True)
                    self._published += 1
                    if not fut.done():
                        fut.set_result(int(count))
            except BaseException:
                for fut in batch:
                    if not fut.done():
                        self._failed += 1
                        fut.set_exception(_Failed("connection to Redis lost while publishing"))
                raise

    async def _heartbeat(self, link: _Link) -> None:
        interval = self.node_ttl / 3
        while True:
            await anyio.sleep(interval)
            if time.monotonic() - link.last_rx > self.node_ttl:
                raise _LinkStale(f"no answer on the subscriber connection for {self.node_ttl:g} s")
            await self._heartbeat_once(link)
            self._ping_due = True
            if self._writer_wake is not None:
                self._writer_wake.set()

    async def _heartbeat_once(self, link: _Link) -> None:
        key = self._node_prefix + (self._node_id or "")
        async with link.ctl_lock:
            await link.ctl.send_command(
                "SET", key, self._info, "PX", max(1, int(self.node_ttl * 1000)), check_health=False
            )
            await link.ctl.read_response()

    async def _goodbye(self, link: _Link) -> None:
        # Leave the node set now rather than when the key expires.
        key = self._node_prefix + (self._node_id or "")
        with contextlib.suppress(*self._link_errors()):
            async with link.ctl_lock:
                await link.ctl.send_command("DEL", key, check_health=False)
                await link.ctl.read_response()
            # And leave every presence hash at once (other nodes would skip them anyway).
            for address, members in self._present.items():
                for member in members:
                    self._presence_changes[address, member] = None
            await self._write_presence(link)

    async def _publish(self, address: str, payload: bytes) -> int:
        loop = asyncio.get_running_loop()
        unreachable = f"Redis at {self.display_url} is unreachable"
        if self._link is None or not self._up:
            self._failed += 1
            raise _Failed(unreachable)
        deadline = loop.time() + self.publish_timeout
        while len(self._queue) >= self.max_pending:
            # Rare: Redis is not keeping up. Wait for room, within the same deadline.
            space: asyncio.Future[None] = loop.create_future()
            self._space_waiters.append(space)
            try:
                await asyncio.wait_for(space, max(0.0, deadline - loop.time()))
            except TimeoutError:
                self._failed += 1
                raise _Failed(f"{self.max_pending} publishes already wait for Redis") from None
            if self._link is None or not self._up:
                self._failed += 1
                raise _Failed(unreachable)
        fut: asyncio.Future[int] = loop.create_future()
        self._queue.append((self._channel_prefix + address.encode(), payload, fut))
        wake = self._publisher_wake
        if wake is not None:
            wake.set()
        timer = loop.call_at(deadline, self._expire, fut)
        try:
            count = await fut
        finally:
            timer.cancel()
        # Our own subscription counts among the receivers when we have local members.
        return max(0, count - (1 if address in self._subscribed else 0))

    def _expire(self, fut: asyncio.Future[int]) -> None:
        if not fut.done():
            self._failed += 1
            fut.set_exception(_Failed(f"no answer from Redis within {self.publish_timeout:g} s"))

    def _wake_space(self, count: int) -> None:
        waiters = self._space_waiters
        while waiters and count > 0:
            space = waiters.popleft()
            if not space.done():
                space.set_result(None)
                count -= 1

    def _fail_pending(self, why: str) -> None:
        while self._queue:
            _, _, fut = self._queue.popleft()
            if not fut.done():
                self._failed += 1
                fut.set_exception(_Failed(why))
        self._wake_space(len(self._space_waiters))

    async def _nodes(self) -> dict[str, ClusterNode]:
        link = self._link
        if link is None:
            raise BackplaneUnavailable("nodes", f"Redis at {self.display_url} is unreachable")
        pattern = _glob_escape(self._node_prefix) + "*"
        keys: list[bytes] = []
        try:
            async with link.ctl_lock:
                cursor: Any = 0
                while True:
                    await link.ctl.send_command(
                        "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, check_health=False
                    )
                    cursor, found = await link.ctl.read_response()
                    keys.extend(found)
                    if int(cursor) == 0:
                        break
                values: list[bytes | None] = []
                if keys:
                    await link.ctl.send_command("MGET", *keys, check_health=False)
                    values = await link.ctl.read_response()
        except self._link_errors() as exc:
            link.lost(exc)
            raise BackplaneUnavailable("nodes", _describe(exc)) from None
        nodes: dict[str, ClusterNode] = {}
        skip = len(self._node_prefix.encode())
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # expired between SCAN and MGET
            node_id = key[skip:].decode(errors="replace")
            try:
                info = json.loads(value)
                nodes[node_id] = ClusterNode(
                    node_id, str(info["host"]), int(info["pid"]), float(info["started"])
                )
            except (ValueError, KeyError, TypeError):
                continue
        return nodes

    async def _synced(self) -> None:
        target = self._change_seq
        if self._confirmed_seq >= target:
            return
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._sync_waiters.append((target, fut))
        if self._writer_wake is not None:
            self._ping_due = True
            self._writer_wake.set()
        await fut


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # written by something else than wsup


@dataclass(frozen=True, slots=True)
class _Script:
    """A Lua script and its SHA1 digest (for ``EVALSHA``)."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        import hashlib

        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


# KEYS[1] the meta hash, KEYS[2] the stream, KEYS[3] the channel.
# ARGV: a new epoch (used when the hash is gone), the message (kind + data), size,
# ttl in ms, meta_ttl in ms, the sender tag (node id + NUL). Returns how many
# subscribers received it. The payload published is a record: the sender tag, kind
# "r", "<epoch>:<offset>", NUL, then the message's own kind and data. Every node
# delivers it, the sender too (its local members get it in the same order).
_HISTORY_APPEND: Final = _Script.of("""
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-' .. ms, 'm', ARGV[2])
local cutoff = tonumber(ms) - tonumber(ARGV[4])
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 8)
local keep = nil
for _, entry in ipairs(head) do
  local o, t = string.match(entry[1], '^(%d+)-(%d+)$')
  if tonumber(t) >= cutoff then keep = o break end
  keep = tostring(tonumber(o) + 1)
end
if keep then redis.call('XTRIM', KEYS[2], 'MINID', keep) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('PUBLISH', KEYS[3], ARGV[6] .. 'r' .. epoch .. ':' .. offset .. '\0' .. ARGV[2])
""")

# KEYS[1] the meta hash, KEYS[2] the stream. ARGV: the first offset wanted, ttl in
# ms, the most entries. Returns {epoch or '', last offset, entries} where entries is
# one string, "<offset>:<length>:<message>" for each entry not older than ttl (one
# reply to parse instead of three per entry: the parser, not Redis, was the cost).
_HISTORY_READ: Final = _Script.of("""
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset')
if not meta[1] then return {'', 0, {}} end
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
local entries = {}
if tonumber(ARGV[1]) <= tonumber(meta[2]) then
  local raw = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[3])
  for _, entry in ipairs(raw) do
    local o, t = string.match(entry[1], '^(%d+)-(%d+)$')
    if tonumber(t) >= cutoff then
      local body = entry[2][2]
      entries[#entries + 1] = o .. ':' .. #body .. ':' .. body
    end
  end
end
return {meta[1], tonumber(meta[2]), table.concat(entries)}
""")

# Lease scripts: KEYS[1] the lease, KEYS[2] its fencing counter; ARGV holder, ttl in ms.
_ACQUIRE: Final = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if current then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return token
"""
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_HGETALL_JSON: Final = "return cjson.encode(redis.call('HGETALL', KEYS[1]))"
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


WIRE_VERSION: Final = 1
"""The version of the wire format below (documented in ``docs/messaging.md``)."""


def encode_payload(tag: bytes, address: str, message: Any) -> bytes:
    """Encode ``message`` as a backplane payload: ``tag`` (the sender's node id and
    NUL, or only NUL from outside the cluster), a kind byte, then the data.

    Kinds: ``s`` a ``str`` (UTF-8), ``b`` ``bytes``, ``j`` anything else as JSON.

    Raises:
        TypeError: ``message`` is not ``str``, ``bytes`` or JSON-serialisable.
    """
    if type(message) is str:
        return tag + b"s" + message.encode("utf-8", "surrogatepass")
    if isinstance(message, (bytes, bytearray, memoryview)):  # a tuple: no union per call
        return tag + b"b" + bytes(message)
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"a message sent to {address!r} through the Redis backplane must be str, "
            f"bytes or JSON-serialisable, got {type(message).__name__} ({exc})"
        ) from None
    return tag + b"j" + text.encode("utf-8", "surrogatepass")


def _decode(payload: bytes) -> Any:
    sep = payload.find(b"\x00")
    if sep < 0 or sep + 1 >= len(payload):
        raise ValueError("not a wsup backplane message")
    kind = payload[sep + 1]
    data = payload[sep + 2 :]
    if kind == _KIND_STR:
        return data.decode("utf-8", "surrogatepass")
    if kind == _KIND_BYTES:
        return data
    if kind == _KIND_JSON:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    raise ValueError(f"unknown message kind {kind!r}")


def _history_entries(blob: bytes) -> list[tuple[int, bytes]]:
    """Split :data:`_HISTORY_READ`'s entries: ``<offset>:<length>:<message>``, repeated."""
    entries: list[tuple[int, bytes]] = []
    position, end = 0, len(blob)
    while position < end:
        first = blob.index(b":", position)
        second = blob.index(b":", first + 1)
        start = second + 1
        stop = start + int(blob[first + 1 : second])
        entries.append((int(blob[position:first]), blob[start:stop]))
        position = stop
    return entries


def _decode_record(address: str, data: bytes) -> Record:
    """Read a record's data (after its kind ``r``; see :data:`_HISTORY_APPEND`)."""
    sep = data.find(b"\x00")
    if sep < 0:
        raise ValueError("a history record without its message")
    position = Position.parse(data[:sep].decode("ascii"))
    message = _decode(b"\x00" + data[sep + 1 :])
    return Record(address, position.epoch, position.offset, message)


def _pack_publish(channel: bytes, payload: bytes) -> bytes:
    # PUBLISH in the Redis protocol, byte for byte what redis-py's pack_command
    # makes, at a tenth of its cost (its generic encoder is on every send's path).
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(payload),
        payload,
    )


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
