"""Admission control: whether the server takes one more socket or handshake, as pure decisions.

Theory of operation: a new client costs the server in two steps, and each step
has its own checks.

1. **Accepting a socket** (:meth:`Admission.accept_wait`, asked by the accept
   loops before each ``accept()``). Nothing is known of the client yet, and
   nothing can be answered to it: the server only decides whether to take the
   next connection from the listen backlog now. While ``max_handshakes``
   sockets of the server port are still handshaking, or while ``accept_rate``
   has no token, accepting pauses and the connections wait in the backlog
   (the kernel queues them; their clients see a slower connect, not an error).
   Under a burst this finished every client sooner than answering 503, at the
   same event-loop lag: see ``docs/hardening.md``, "Admission control".
2. **An upgrade request is read** (:meth:`Admission.request`, asked by the
   handshake decision once the request names a WebSocket route): the client
   address is known now, the one a trusted proxy forwards included. Refused
   with a :class:`Refusal` (HTTP 503 and ``Retry-After``): ``max_connections``
   open, ``max_connections_per_address`` open from this client, a client over
   ``handshake_rate_per_address``, the server over ``handshake_rate``. Plain
   HTTP, ``/healthz``, ``/readyz`` and ``/metrics`` are not upgrades and pass.
   An upgrade let through holds its per-address slot from then on, while its
   handshake hooks run: concurrent handshakes from one address whose hooks
   await cannot all pass the check before any of them opens. The slot is the
   connection's once it opens, and is given back when it closes, or at once
   when the handshake ends without a connection (:meth:`Admission.release`).

``Retry-After`` is the time until the rate allows one more, at least 1 s,
stretched by up to as much again at random so that the clients refused together
do not come back together.

Rates are token buckets (``_limits``). A per-address bucket that refilled is
forgotten, so a flood from ever-new addresses costs at most ``max_keys``
buckets; the per-address count holds only the connections open and the
handshakes admitted but not over.
Handshakes in progress are counted apart from ``max_connections``: the
descriptors the server holds for clients are at most ``max_connections`` +
``max_handshakes``, plus sockets closing after an answer.

Nothing here reads a clock or a socket: callers pass ``now``, and the random
stretch comes from ``jitter`` (tests give a fixed one).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..metrics import LimitName
from ._config import ServerConfig
from ._limits import AddressCounter, PerKeyBuckets, TokenBucket

__all__ = ["ADMISSION_LIMITS", "OTHER_LIMITS", "Admission", "Refusal"]

#: The ``limit`` labels of ``wsup_limited_total`` that admission control sets:
#: each is the name of its ``ServerConfig`` setting.
ADMISSION_LIMITS: Final[frozenset[LimitName]] = frozenset(
    {
        "max_connections",
        "max_handshakes",
        "max_connections_per_address",
        "accept_rate",
        "handshake_rate",
        "handshake_rate_per_address",
    }
)
#: The other ``limit`` labels: they act on a request head (``request_head``) or on
#: an open connection (its inbound rate, ``message_timeout``), not on admission.
OTHER_LIMITS: Final[frozenset[LimitName]] = frozenset(
    {"inbound_delay", "inbound_close", "message_timeout", "request_head"}
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A client turned away with 503.

    Attributes:
        limit: the ``limit`` label of ``wsup_limited_total`` (the setting's name).
        why: the answer's body, one line.
        retry_after: the ``Retry-After`` header, in whole seconds (>= 1).
    """

    limit: LimitName
    why: str
    retry_after: int


class Admission:
    """The admission limits of one server (see the module docstring).

    Args:
        config: the limits (``max_connections``, ``max_handshakes``,
            ``max_connections_per_address``, ``accept_rate``, ``handshake_rate``,
            ``handshake_rate_per_address``).
        now: the clock reading at creation (buckets start full).
        jitter: a number in [0, 1) per refusal, for the stretch of ``Retry-After``.

    Attributes:
        handshaking: sockets of the server port accepted whose handshake is not over.
    """

    __slots__ = (
        "_accept",
        "_address_rate",
        "_addresses",
        "_handshake",
        "_jitter",
        "_max_connections",
        "_max_handshakes",
        "handshaking",
    )

    def __init__(
        self, config: ServerConfig, now: float, jitter: Callable[[], float] = random.random
    ) -> None:
        self._max_connections = config.max_connections
        self._max_handshakes = config.max_handshakes
        self._accept = None if config.accept_rate is None else TokenBucket(config.accept_rate, now)
        self._handshake = (
            None if config.handshake_rate is None else TokenBucket(config.handshake_rate, now)
        )
        rate = config.handshake_rate_per_address
        self._address_rate = None if rate is None else PerKeyBuckets(rate)
        cap = config.max_connections_per_address
        self._addresses = None if cap is None else AddressCounter(cap)
        self._jitter = jitter
        self.handshaking = 0

    @property
    def per_address(self) -> bool:
        """Whether a limit needs the client's address (the decision then works it out)."""
        return self._address_rate is not None or self._addresses is not None

    def _refuse(self, limit: LimitName, why: str, wait: float = 0.0) -> Refusal:
        base = max(1, math.ceil(wait))
        return Refusal(limit, why, base + min(base, int(self._jitter() * (base + 1))))

    # -- step 1: accepting a socket -------------------------------------------------------

    def accept_wait(self, now: float) -> tuple[LimitName, float] | None:
        """Whether the server port may accept one more socket now.

        Returns:
            None; or the limit in the way and the seconds to wait before asking
            again (``math.inf``: until a handshake in progress is over).
        """
        if self._max_handshakes is not None and self.handshaking >= self._max_handshakes:
            return "max_handshakes", math.inf
        if self._accept is not None:
            wait = self._accept.until(now)
            if wait:
                return "accept_rate", wait
        return None

    def socket_accepted(self, now: float) -> None:
        """Count a socket of the server port just accepted: its handshake is in progress
        until :meth:`socket_settled`, and it took a token of ``accept_rate``."""
        self.handshaking += 1
        if self._accept is not None:
            self._accept.charge(now, 1)

    def socket_settled(self) -> None:
        """A server-port socket's handshake is over (answered, upgraded or failed)."""
        self.handshaking -= 1

    # -- step 2: an upgrade request ------------------------------------------------------------

    def request(self, client: str, open_connections: int, now: float) -> Refusal | None:
        """Whether a WebSocket upgrade from ``client`` may go on.

        Args:
            client: the client's address (forwarded by a trusted proxy, or the peer's).
            open_connections: WebSocket connections open now.
            now: the clock reading.

        The caps come first: they take no token from a bucket. Let through, the
        upgrade holds a slot of ``max_connections_per_address`` from now on: give
        it back with :meth:`release` if no connection opens, else with
        :meth:`connection_closed` when it closes.
        """
        if open_connections >= self._max_connections:
            return self._refuse("max_connections", "too many connections")
        addresses = self._addresses
        if addresses is not None and addresses.count(client) >= addresses.limit:
            return self._refuse(
                "max_connections_per_address", "too many connections from this address"
            )
        if self._address_rate is not None:
            wait = self._address_rate.take(client, now)
            if wait:
                return self._refuse(
                    "handshake_rate_per_address", "too many new connections from this address", wait
                )
        if self._handshake is not None:
            wait = self._handshake.take(now)
            if wait:
                return self._refuse("handshake_rate", "too many new connections", wait)
        if addresses is not None:
            addresses.add(client)
        return None

    def release(self, client: str) -> None:
        """Give back the slot :meth:`request` held for an upgrade from ``client`` that
        opened no connection (refused by a hook, failed, or closed before its 101)."""
        if self._addresses is not None:
            self._addresses.release(client)

    def connection_closed(self, client: str) -> None:
        """Count a connection of ``client`` as closed (it opened with the slot its
        request held): the cap has room again."""
        if self._addresses is not None:
            self._addresses.release(client)

    def open_from(self, client: str) -> int:
        """How many connections ``client`` holds open or is opening, as counted for the
        cap (0 when off)."""
        return 0 if self._addresses is None else self._addresses.count(client)
