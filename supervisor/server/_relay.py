"""Resuming on another node: the claim, and the relay.

Theory of operation: a resume token names the node that issued it (see
``_resume``). When a client brings it to another node that shares a backplane
with it, that node (the *relay node*) has run the handshake hooks as for any
resume; it then *claims* the connection from the token's node (the *home
node*), and if the home node grants it, the actor stays where it is and its
traffic is relayed:

1. The relay node keeps the new socket's connection without an actor (reading
   paused) and sends ``claim`` (token, path, the hooks' values) to the home
   node's endpoint, ``wsup.resume:<node>``, which every node with a resumable
   route subscribes to (:meth:`actors.Runtime.add_receiver`).
2. The home node checks it as a resume on the node itself would
   (:meth:`ResumeTable.claim_remote`). Claims are taken one at a time, in the
   order they arrive: the connection is re-attached to a :class:`RelayDriver`
   (an earlier socket or relay is dropped, as a resume on one node takes a
   connection over), and ``granted`` goes back; or ``refused`` with the reason.
3. The relay node spawns a :class:`RelayHandler` for the socket: an actor that
   answers to no name, watches the home actor, and once its own address
   reaches the backplane sends ``start`` to the home node.
4. From ``start`` on, the home connection's outbound buffer (first the
   ``wsup.resume`` announcement, then what waited, in order, then live
   traffic) goes, one message at a time, to the relay actor's address; there
   it skips the mailbox into the socket's outbound buffer, under the route's
   limit and slow-consumer policy. What the client sends goes to the home
   node's endpoint (``in``, numbered from 1), and into the home actor's
   mailbox as if read from a socket there.
5. Flow control, so that the home node holds no more of what the client sends
   than a direct socket would: the relay forwards at most ``window`` messages
   (``granted`` says how many: :func:`window_for` the route's mailbox) that
   the home side has not taken yet. The home side tells how far it has taken
   (``credit``, the number of the last message the home mailbox accepted)
   every half window, to the relay node's endpoint. Without credit the relay
   actor waits in ``on_message``: its own mailbox fills, and the route's
   overflow policy applies there as on a direct connection (``block`` stops
   reading the socket). A relay that waited :data:`CREDIT_QUERY_INTERVAL`
   asks (``want``, with the number of the last message it sent): the answer
   repairs a credit the backplane lost, and accounts for messages it lost on
   the way; nobody listening at the home node's endpoint is the home node
   lost, and a home node that relays the claim no more answers ``abort``. A
   peer that sends more than twice the window ends the connection
   (:data:`OVERRUN_CODE`): the home side's queue has a hard bound whatever
   the peer does.
6. The end: the home side closing sends ``close`` (the relay closes the socket
   with that code, and acknowledges with ``closed``); the client closing sends
   ``closed``; the client dropping (or the relay node shutting down) sends
   ``drop``, and the home connection detaches again, its grace window starting
   over; a takeover sends ``abort`` (the relay drops its socket); the home node
   lost (the backplane stops listing it) closes the relay with 1012.

What the home side tells the relay beside its data (``close``, ``abort``,
``credit``) goes to the relay node's endpoint, not to the relay actor: it must
get through while the actor waits for credit with its mailbox full. ``close``
still comes after the data sent before it: the home side sends it once they
were published, and a backplane delivers one node's messages to another in
order (Redis: one publisher connection, one subscriber connection).

Every message is a JSON object with :data:`RELAY_KEY`, and the ``claim`` id
that the home node granted: a message of an older claim finds no relay and is
ignored. Nothing here reads a clock except the deadlines
(:data:`CLAIM_TIMEOUT`, :data:`START_TIMEOUT`, :data:`CREDIT_QUERY_INTERVAL`).
"""

from __future__ import annotations

import base64
import functools
import secrets
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import structlog

from actors import BackplaneUnavailable, Down, DownReason
from actors._monitor import node_of

from .._constants import CloseCode
from ._app import Handler
from ._drivers import ASGIDriver
from ._resume import ResumeRefusal, comparable, token_node

if TYPE_CHECKING:
    from ._server import Server

__all__ = [
    "CLAIM_TIMEOUT",
    "CREDIT_QUERY_INTERVAL",
    "HOME_LOST_CODE",
    "HOME_LOST_REASON",
    "MAX_WINDOW",
    "OVERRUN_CODE",
    "OVERRUN_REASON",
    "RELAY_KEY",
    "START_TIMEOUT",
    "CreditLedger",
    "Granted",
    "RelayDriver",
    "RelayHandler",
    "RelayWindow",
    "Relays",
    "endpoint",
    "window_for",
]

_log = structlog.get_logger("wsup.server")

#: Marks the messages of the claim and the relay (JSON objects with this key).
RELAY_KEY: Final = "__wsup_resume__"
#: Seconds a relay node waits for the home node to answer a claim.
CLAIM_TIMEOUT: Final = 5.0
#: Seconds a home node waits for a granted relay to start, before detaching again.
START_TIMEOUT: Final = 10.0
#: The close code and reason of a relay whose home node the backplane lost.
HOME_LOST_CODE: Final = CloseCode.SERVICE_RESTART
HOME_LOST_REASON: Final = "resume home node lost"
#: The most client messages a relay forwards that the home side has not taken yet.
MAX_WINDOW: Final = 64
#: Seconds a relay waits for credit before it asks the home node again.
CREDIT_QUERY_INTERVAL: Final = 1.0
#: The close code and reason of a home connection whose relay sent more than twice
#: its window (it ignored credit: a bug, or a node that does not speak this protocol).
OVERRUN_CODE: Final = CloseCode.INTERNAL_ERROR
OVERRUN_REASON: Final = "relay window exceeded"


def endpoint(node_id: str) -> str:
    """The address a node takes claims and relayed traffic at."""
    return f"wsup.resume:{node_id}"


def window_for(capacity: int) -> int:
    """The window of a relay whose home actor's mailbox holds ``capacity`` messages:
    as many, up to :data:`MAX_WINDOW` (a credit goes back every half window)."""
    return max(1, min(capacity, MAX_WINDOW))


class RelayWindow:
    """The relay side's books of its window (no I/O): what it forwarded, and how
    far the home side said it took.

    Attributes:
        size: the most messages forwarded and not yet taken.
        sent: the number of the last message forwarded (numbered from 1).
        acked: the number of the last one the home side took (its credit).
    """

    __slots__ = ("acked", "sent", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = self.acked = 0

    def full(self) -> bool:
        """Whether forwarding one more must wait for credit."""
        return self.sent - self.acked >= self.size

    def next(self) -> int:
        """The number of the next message forwarded."""
        self.sent += 1
        return self.sent

    def credit(self, number: int) -> bool:
        """The home side took up to ``number``; whether that is news (a credit that
        came late, twice, or from beyond what was sent changes nothing more)."""
        number = min(number, self.sent)
        if number <= self.acked:
            return False
        self.acked = number
        return True


class CreditLedger:
    """The home side's books of a relay's window (no I/O): how far the mailbox took
    the relay's messages, and when to say so.

    Credit is the number of the last message taken, so a credit lost on the way
    is made good by the next one. It is due every half window (``batch``), and
    whenever the relay asks (:meth:`asked`). The relay's messages arrive in
    order: when it asks having sent up to ``n``, whatever up to ``n`` is not
    waiting here was lost on the way, and counts as taken.

    Attributes:
        batch: how many taken make a credit due.
        taken: the number of the last message taken (or lost).
        told: the last credit given.
        queried: the highest number the relay asked about.
    """

    __slots__ = ("batch", "queried", "taken", "told")

    def __init__(self, window: int) -> None:
        self.batch = max(1, window // 2)
        self.taken = self.told = self.queried = 0

    def took(self, number: int, idle: bool) -> int | None:
        """The mailbox took message ``number`` (``idle``: nothing else waits here);
        the credit to give now, if one is due."""
        if number > self.taken:
            self.taken = number
        if idle and self.queried > self.taken:
            self.taken = self.queried
        if self.taken - self.told < self.batch:
            return None
        self.told = self.taken
        return self.taken

    def asked(self, number: int, idle: bool) -> int:
        """The relay waits for credit, having sent up to ``number`` (``idle``: nothing
        waits here); the credit to give now."""
        if number > self.queried:
            self.queried = number
        if idle and number > self.taken:
            self.taken = number
        self.told = self.taken
        return self.taken


@dataclass(frozen=True, slots=True)
class Granted:
    """A claim the home node granted: its id, the home actor's address and node, and
    the relay's window (``None``: a home node that gives no credit)."""

    claim: str
    home: str
    node: str
    window: int | None = None


class _Waiting:
    __slots__ = ("answer", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.answer: Granted | ResumeRefusal | None = None


_DROPPED: Final = object()


class Relays:
    """A node's side of the claims and relays, both ways (one per server)."""

    __slots__ = ("_claims", "_drivers", "_relays", "_server", "endpoint")

    def __init__(self, server: Server) -> None:
        self._server = server
        self.endpoint = endpoint(server.runtime.node_id)
        self._claims: dict[str, _Waiting] = {}  # claims this node made, by id
        self._drivers: dict[str, RelayDriver] = {}  # relays of this node's actors, by claim
        self._relays: dict[str, RelayHandler] = {}  # relays of other nodes' actors, by claim
        server.runtime.add_receiver(self.endpoint, self._received)

    def close(self) -> None:
        """Stop taking claims and relayed traffic."""
        self._server.runtime.remove_receiver(self.endpoint)

    def __len__(self) -> int:
        return len(self._drivers)

    # -- the relay node: claiming ----------------------------------------------------------

    async def claim(self, token: str, path: str, values: Any) -> Granted | ResumeRefusal:
        """Ask the token's node for its connection: granted, or why not
        (``other_node`` when it cannot be reached or does not answer in time)."""
        runtime = self._server.runtime
        node = token_node(token)
        claim = secrets.token_hex(8)
        waiting = self._claims[claim] = _Waiting()
        message = {
            RELAY_KEY: "claim",
            "claim": claim,
            "from": runtime.node_id,
            "token": token,
            "path": path,
            "values": comparable(values),
        }
        try:
            try:
                reached = await runtime.send(endpoint(node), message)
            except BackplaneUnavailable:
                return "other_node"
            if not reached:
                return "other_node"  # nobody listens there: no such node (any more)
            with self._server.clock.move_on_after(CLAIM_TIMEOUT):
                await waiting.event.wait()
            return waiting.answer or "other_node"
        finally:
            del self._claims[claim]

    def relaying(self, handler: RelayHandler) -> None:
        """``handler`` relays its claim from now on: what its home side tells it
        beside the data reaches it here."""
        self._relays[handler.granted.claim] = handler

    def relayed(self, handler: RelayHandler) -> None:
        """``handler`` relays no more."""
        claim = handler.granted.claim
        if self._relays.get(claim) is handler:
            del self._relays[claim]

    def release(self, granted: Granted) -> None:
        """A granted claim whose client left before its relay started: the home
        connection detaches again."""
        self._server.runtime.post(
            endpoint(granted.node), {RELAY_KEY: "drop", "claim": granted.claim}
        )

    # -- the home node -------------------------------------------------------------------

    def _claimed(self, message: dict[str, Any], claim: str) -> None:
        server = self._server
        origin = message.get("from")
        token, path = message.get("token"), message.get("path")
        if not isinstance(origin, str) or not token_node(f".{origin}"):
            return  # nowhere to answer
        reply = endpoint(origin)
        if isinstance(token, str) and isinstance(path, str):
            found = server.resumes.claim_remote(token, path, message.get("values"))
        else:
            found = "unknown"
        if isinstance(found, str):
            server.runtime.post(reply, {RELAY_KEY: "refused", "claim": claim, "why": found})
            _log.info("connection.relay_refused", path=path, node=origin, refused=found)
            return
        window = window_for(found.route.mailbox.capacity)
        driver = RelayDriver(self, claim, origin, window)
        self._drivers[claim] = driver
        found._relay(driver)
        driver.start(False)
        granted = {RELAY_KEY: "granted", "claim": claim, "conn": found.address, "window": window}
        server.runtime.post(reply, granted)
        _log.info(
            "connection.resumed",
            conn=found.address,
            path=path,
            node=origin,
            buffered_bytes=found.buffered_bytes,
        )

    def forget(self, claim: str, driver: RelayDriver) -> None:
        """``driver`` relays no more."""
        if self._drivers.get(claim) is driver:
            del self._drivers[claim]

    # -- both ------------------------------------------------------------------------------

    def _received(self, message: Any) -> None:
        """What another node sent to this node's endpoint (never raises)."""
        if message.__class__ is not dict:
            return
        kind, claim = message.get(RELAY_KEY), message.get("claim")
        if not isinstance(claim, str):
            return
        try:
            if kind == "in":
                driver = self._drivers.get(claim)
                if driver is not None:
                    driver.inbound(message)
            elif kind == "credit" or kind == "close" or kind == "abort":
                relay = self._relays.get(claim)
                if relay is not None:
                    relay.told(kind, message)
            elif kind == "want":
                driver = self._drivers.get(claim)
                number, relay = message.get("n"), message.get("relay")
                if driver is not None and isinstance(number, int):
                    driver.queried(number)
                elif driver is None and isinstance(relay, str) and (node := node_of(relay)):
                    # This node relays that claim no more (its end was lost on the way).
                    self._server.runtime.post(endpoint(node), {RELAY_KEY: "abort", "claim": claim})
            elif kind == "claim":
                self._claimed(message, claim)
            elif kind == "start":
                relay = message.get("relay")
                driver = self._drivers.get(claim)
                if driver is not None and isinstance(relay, str):
                    driver.started(relay)
                elif isinstance(relay, str) and (node := node_of(relay)) is not None:
                    # Taken over (or given up) before it started: drop that socket.
                    self._server.runtime.post(endpoint(node), {RELAY_KEY: "abort", "claim": claim})
            elif kind == "drop":
                driver = self._drivers.get(claim)
                if driver is not None:
                    driver.peer_ended(None)
            elif kind == "closed":
                driver = self._drivers.get(claim)
                if driver is not None:
                    code, reason = message.get("code"), message.get("reason")
                    if isinstance(code, int) and isinstance(reason, str):
                        driver.peer_ended((code, reason))
                    else:
                        driver.peer_ended((CloseCode.NO_STATUS_RCVD, ""))
            elif kind == "granted" or kind == "refused":
                self._answered(message, claim, kind)
        except Exception:
            _log.exception("connection.relay_message_failed", kind=kind)

    def _answered(self, message: dict[str, Any], claim: str, kind: str) -> None:
        waiting = self._claims.get(claim)
        home = message.get("conn")
        node = node_of(home) if isinstance(home, str) else None
        if kind == "granted" and (home is None or node is None):
            return  # malformed
        if waiting is None or waiting.event.is_set():
            if kind == "granted" and node is not None:
                # Granted after this node gave up waiting: the home connection detaches again.
                self._server.runtime.post(endpoint(node), {RELAY_KEY: "drop", "claim": claim})
            return
        if kind == "granted" and isinstance(home, str) and node is not None:
            window = message.get("window")
            if not isinstance(window, int) or window < 1:
                window = None
            waiting.answer = Granted(claim, home, node, window)
        else:
            why = message.get("why")
            waiting.answer = "mismatch" if why == "mismatch" else "unknown"
        waiting.event.set()


class RelayDriver(ASGIDriver):
    """The driver of a home connection whose client is on another node: whole
    messages to and from the relay actor there, through the backplane.

    It serves the connection as :class:`ASGIDriver` serves an ASGI server's
    socket: one message at a time leaves the outbound buffer (so the route's
    limit and slow-consumer policy hold here too), and reads are fed to the
    core whole. Nothing is sent before the relay started; a relay that does not
    start within :data:`START_TIMEOUT` counts as dropped.

    What the client sends waits in an inbox while the home mailbox is full
    under ``block``; credit for what left it goes back to the relay node every
    half ``window``, and more than twice ``window`` waiting ends the
    connection (:data:`OVERRUN_CODE`).

    Attributes:
        high_water: the most client messages that waited in the inbox at once.
    """

    __slots__ = (
        "_aborted",
        "_claim",
        "_end",
        "_holding",
        "_inbox",
        "_inbox_wake",
        "_ledger",
        "_node",
        "_overrun",
        "_peer_gone",
        "_relays",
        "_started",
        "_target",
        "_window",
        "high_water",
    )

    def __init__(self, relays: Relays, claim: str, node: str, window: int) -> None:
        super().__init__(self._never, self._send_out)
        self._relays = relays
        self._claim = claim
        self._node = node  # the relay node
        self._window = window
        self._ledger = CreditLedger(window)
        self._target: str | None = None
        self._started = anyio.Event()
        self._inbox: deque[tuple[int, str | bytes]] = deque()  # (number, message)
        self._inbox_wake: anyio.Event | None = None
        # How the client's side ended (its close code and reason, or _DROPPED): after
        # the inbox, since it came after everything in it.
        self._end: tuple[int, str] | object | None = None
        self._holding = False  # a message left the inbox, the mailbox has not taken it yet
        self._overrun = False  # the relay sent more than twice its window
        self._peer_gone = False
        self._aborted = False
        self.high_water = 0

    # -- what the relay node reports --------------------------------------------------------

    def started(self, relay: str) -> None:
        """The relay actor at ``relay`` listens: send it what is queued."""
        if self._target is None:
            self._target = relay
            self._started.set()

    def inbound(self, message: dict[str, Any]) -> None:
        """A message from the client (``t``: text; ``b``: binary, in base64; ``n``:
        its number)."""
        if self._overrun or self._end is not None:
            return
        number = message.get("n")
        if not isinstance(number, int):
            number = 0  # no number: credit for it goes with the next one's
        item: str | bytes
        text = message.get("t")
        if isinstance(text, str):
            item = text
        else:
            data = message.get("b")
            if not isinstance(data, str):
                return
            item = base64.b64decode(data)
        inbox = self._inbox
        if len(inbox) >= 2 * self._window:
            self._overran()
            return
        inbox.append((number, item))
        if len(inbox) > self.high_water:
            self.high_water = len(inbox)
        self._wake()

    def queried(self, number: int) -> None:
        """The relay waited for credit, having sent up to ``number``: say how far the
        mailbox took (see :class:`CreditLedger`)."""
        self._credit(self._ledger.asked(number, not self._inbox and not self._holding))

    def peer_ended(self, close: tuple[int, str] | None) -> None:
        """The client closed (``close``: its code and reason) or dropped (``None``)."""
        self._peer_gone = True
        if self._end is None:
            self._end = _DROPPED if close is None else close
        self._wake()

    def _wake(self) -> None:
        wake = self._inbox_wake
        if wake is not None:
            self._inbox_wake = None
            wake.set()

    def _credit(self, number: int) -> None:
        message = {RELAY_KEY: "credit", "claim": self._claim, "n": number}
        self._relays._server.runtime.post(endpoint(self._node), message)

    def _overran(self) -> None:
        """The relay ignored its window: keep nothing more, and end the connection
        (now: the reader may be waiting for room in the mailbox)."""
        self._overrun = True
        self._inbox.clear()
        port = self._port
        _log.warning(
            "connection.relay_overrun",
            conn=port.connection.address,
            node=self._node,
            window=self._window,
        )
        self._core.fail(OVERRUN_CODE, OVERRUN_REASON, label="internal_error")
        port.settle(port.clock.now())

    # -- serving -----------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        """Serve in a task of the server (unless taken over already)."""
        if not self._aborted:
            super().start(resume)

    async def run(self) -> None:
        """Relay until the connection ends here or there. Never raises for I/O."""
        try:
            if self._aborted:
                self._port.finalize()
                return
            self._port.start_soon(self._start_deadline)
            await super().run()
        finally:
            self._relays.forget(self._claim, self)

    async def _start_deadline(self) -> None:
        await self._port.clock.sleep(START_TIMEOUT)
        if self._target is None and not self._aborted and not self._peer_gone:
            _log.info("connection.relay_not_started", conn=self._port.connection.address)
            self.peer_ended(None)

    async def _never(self) -> MutableMapping[str, Any]:
        raise AssertionError("the relay reads its inbox")  # pragma: no cover

    async def _reader(self) -> None:
        core = self._core
        port = self._port
        clock = port.clock
        inbox = self._inbox
        while True:
            while not inbox:
                end = self._end
                if end is _DROPPED:
                    port.lost()  # the home connection detaches again, if it may
                    return
                if end is not None:
                    code, reason = cast(tuple[int, str], end)
                    core.peer_closed(code, reason)
                    return
                wake = self._inbox_wake = anyio.Event()
                await wake.wait()
            number, item = inbox.popleft()
            size = len(item) if isinstance(item, bytes) or item.isascii() else len(item.encode())
            self._holding = True
            await self._hand_on([item] if core.receive_message(item, size) else [], clock.now())
            if core.read_pause:
                await self._rate_pause()
            self._holding = False
            credit = self._ledger.took(number, not inbox)
            if credit is not None:
                self._credit(credit)

    async def _send_out(self, message: MutableMapping[str, Any]) -> None:
        if self._target is None:
            await self._started.wait()
        target = self._target
        assert target is not None
        payload: Any
        if message["type"] == "websocket.send":
            text = message.get("text")
            payload = text if text is not None else message["bytes"]
        else:
            # To the relay node's endpoint: the relay actor may wait for credit, its
            # mailbox full. The data sent before it was published first.
            target = endpoint(self._node)
            payload = {
                RELAY_KEY: "close",
                "claim": self._claim,
                "code": message["code"],
                "reason": message["reason"],
            }
        try:
            reached = await self._relays._server.runtime.send(target, payload)
        except BackplaneUnavailable as exc:
            raise OSError(f"relay: {exc}") from None
        if not reached:
            raise OSError("relay: nobody listens at the relay's address")

    def abort(self) -> None:
        """Stop relaying now; the relay node drops its socket (a takeover, a forced end)."""
        self._aborted = True
        if self._target is not None and not self._peer_gone:
            self._peer_gone = True
            self._relays._server.runtime.post(
                endpoint(self._node), {RELAY_KEY: "abort", "claim": self._claim}
            )
        self._relays.forget(self._claim, self)
        super().abort()


class RelayHandler(Handler):
    """The actor of a socket on the relay node: forwards what the client sends to the
    home node, within its window, and acts on what the home node says (its data
    skips the mailbox, see ``Connection._attach``; the rest reaches :meth:`told`
    through :class:`Relays`)."""

    relays: Relays
    granted: Granted
    #: ``open``; ``closing`` (the home side closes: acknowledge); ``gone`` (taken
    #: over, node lost, backplane down: nobody to tell).
    _home: str
    _window: RelayWindow | None  # None: a home node that gives no credit
    _credit_wake: anyio.Event | None

    async def on_connect(self) -> None:
        self._home = "open"
        size = self.granted.window
        self._window = None if size is None else RelayWindow(size)
        self._credit_wake = None
        self.relays.relaying(self)
        self.context.watch(self.granted.home)
        backplane = self.relays._server.runtime.backplane
        synced = getattr(backplane, "synced", None)  # the Redis backplane's
        if synced is not None:
            # The home node sends to this actor's address: it must reach the backplane first.
            with anyio.move_on_after(CLAIM_TIMEOUT):
                await synced()
        await self._to_home("start", {"relay": self.conn.address})

    async def on_message(self, message: str | bytes) -> None:
        window = self._window
        if window is not None and window.full():
            await self._wait_for_credit(window)
        if self._home != "open":
            return  # the home side closes (it takes nothing more) or is gone
        fields: dict[str, Any]
        if isinstance(message, str):
            fields = {"t": message}
        else:
            fields = {"b": base64.b64encode(message).decode("ascii")}
        if window is not None:
            fields["n"] = window.next()
        await self._to_home("in", fields)

    async def _wait_for_credit(self, window: RelayWindow) -> None:
        """Wait until the home side took enough, or ended. The mailbox fills meanwhile:
        the route's overflow policy applies (``block`` stops reading the socket)."""
        clock = self.relays._server.clock
        while self._home == "open" and window.full():
            wake = self._credit_wake = anyio.Event()
            with clock.move_on_after(CREDIT_QUERY_INTERVAL):
                await wake.wait()
            self._credit_wake = None
            if not wake.is_set() and self._home == "open":
                # A credit lost on the way, a handler still busy, or the home node gone.
                reached = await self._to_home(
                    "want", {"n": window.sent, "relay": self.conn.address}
                )
                if not reached and self._home == "open":
                    _log.warning("connection.relay_home_lost", conn=self.conn.address)
                    self._lost()

    def told(self, kind: str, message: dict[str, Any]) -> None:
        """What the home side says beside its data: ``credit``, ``close``, ``abort``."""
        if kind == "credit":
            number, window = message.get("n"), self._window
            if isinstance(number, int) and window is not None and window.credit(number):
                self._wake()
            return
        if kind == "close":
            code, reason = message.get("code"), message.get("reason")
            self._home = "closing"
            if isinstance(code, int) and isinstance(reason, str):
                self.conn.close_nowait(code, reason)
            else:
                self.conn.close_nowait(CloseCode.INTERNAL_ERROR, "internal error")
        elif kind == "abort":
            self._home = "gone"
            self.conn.abort()
        self._wake()

    def _wake(self) -> None:
        wake = self._credit_wake
        if wake is not None:
            self._credit_wake = None
            wake.set()

    async def on_receive(self, message: Any) -> None:
        if isinstance(message, Down):
            # An end of the home actor is followed by its close; a lost node is not.
            if self._home != "open":
                return
            if message.reason is DownReason.NODE_LOST:
                _log.warning("connection.relay_home_lost", conn=self.conn.address)
                self._lost()
            else:
                server = self.relays._server
                server.start_soon(functools.partial(self._close_due, server.config.close_timeout))

    async def on_close(self, code: int, reason: str) -> None:
        home = self._home
        if home == "gone":
            return
        if home == "open" and (code == CloseCode.ABNORMAL_CLOSURE or self.relays._server.draining):
            await self._to_home("drop", {})  # the client may come back, here or elsewhere
        else:
            await self._to_home("closed", {"code": code, "reason": reason})

    async def on_stop(self) -> None:
        try:
            await super().on_stop()
        finally:
            self.relays.relayed(self)

    async def _close_due(self, timeout: float) -> None:
        """The home actor ended: its close is on its way; if lost (pub/sub keeps
        nothing), end as if its node were."""
        await self.relays._server.clock.sleep(timeout)
        if self._home == "open":
            self._lost()

    def _lost(self) -> None:
        self._home = "gone"
        self.conn.close_nowait(HOME_LOST_CODE, HOME_LOST_REASON)
        self._wake()

    async def _to_home(self, kind: str, fields: dict[str, Any]) -> bool:
        """Send ``kind`` to the home node; whether anyone listened there."""
        fields[RELAY_KEY] = kind
        fields["claim"] = self.granted.claim
        try:
            return bool(await self.relays._server.runtime.send(endpoint(self.granted.node), fields))
        except BackplaneUnavailable:
            if self._home == "open":
                self._lost()
            return False
