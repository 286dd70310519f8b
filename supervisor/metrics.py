"""Prometheus metrics exported by a wsup process.

Theory of operation:
    One :class:`Metrics` object owns every ``wsup_*`` metric and registers them on
    one :class:`~prometheus_client.CollectorRegistry`. The server creates one per
    process and hands it to the components that count things; tests create one
    per test on a private registry, so counts never leak between tests.

    Every label takes its values from a small fixed set, declared below as a
    ``Literal`` type (for callers' annotations) and a tuple of the same values
    (for iteration). All children of every labelled metric are created up front,
    so each series exists at zero from the first scrape: ``rate()`` and
    ``increase()`` then see the first event instead of a series appearing out of
    nowhere, and an alert on "dead letters rising" does not need an ``or vector(0)``.
    There is no label that names a connection, user, path, peer or exception:
    the number of series is fixed (about 200 plus histogram buckets) whatever the
    traffic.

    Attribute names are the metric names without the ``wsup_`` prefix and without
    the ``_total`` and ``_seconds`` suffixes (``wsup_handshakes_total`` is
    ``metrics.handshakes``, ``wsup_ping_rtt_seconds`` is ``metrics.ping_rtt``).
    Each attribute is the plain ``prometheus_client`` object, so callers use the
    usual ``inc()``, ``set()``, ``observe()`` and ``labels(...)``.

    The meaning of every family is written once, in :data:`METRIC_DOCS`; it is the
    ``# HELP`` text of the exposition and the source of the metrics catalogue in
    ``docs/operations.md``.

    The exposition leaves out ``prometheus_client``'s ``*_created`` samples: in the
    text format each becomes one more gauge series per counter or histogram child
    (over a hundred here) that Prometheus stores and nobody queries, since
    ``rate()`` and ``increase()`` already handle counter resets.

    Worker processes (``wsup serve --workers N``) share one port, so a scrape
    lands on any one of them. They run in ``prometheus_client``'s multiprocess
    mode: the master sets ``PROMETHEUS_MULTIPROC_DIR`` for them, every value
    lives in a file of that shared directory, and whichever worker answers
    ``/metrics`` renders the sum over all of them. Each gauge declares how
    workers combine (:data:`GAUGE_MODES`); gauges computed on demand
    (``set_function``) are written to their file by :meth:`Metrics.refresh`.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from actors import DEAD_LETTER_REASONS

from ._constants import CloseCode

__all__ = [
    "ACCEPT_ERRORS",
    "LIMIT_NAMES",
    "ACTOR_KINDS",
    "API_ENDPOINTS",
    "API_RESULTS",
    "BACKPLANE_DIRECTIONS",
    "CLOSE_INITIATORS",
    "CLOSE_REASONS",
    "CONNECTION_STATES",
    "DROP_POLICIES",
    "GAUGE_MODES",
    "GC_GENERATIONS",
    "GaugeMode",
    "GcGeneration",
    "HANDSHAKE_RESULTS",
    "MESSAGE_KINDS",
    "METRIC_DOCS",
    "AcceptError",
    "LimitName",
    "ActorKind",
    "ApiEndpoint",
    "ApiResult",
    "BackplaneDirection",
    "CloseInitiator",
    "CloseReason",
    "ConnectionState",
    "DropPolicy",
    "HandshakeResult",
    "MessageKind",
    "Metrics",
    "RECOVERY_RESULTS",
    "RESUME_RESULTS",
    "RecoveryResult",
    "ResumeResult",
    "close_reason_for_code",
    "multiprocess_directory",
]

# --- Label value sets ------------------------------------------------------------
# Each Literal is the single source of its values; the tuple next to it is derived
# from it so the two can never disagree.

ConnectionState = Literal["handshaking", "open", "detached", "draining", "closing"]
"""Where a connection is in its lifecycle (label ``state`` of ``wsup_connections``):
``detached`` is a resumable connection whose socket broke, its actor waiting
for the client to come back."""
CONNECTION_STATES: Final[tuple[ConnectionState, ...]] = get_args(ConnectionState)

HandshakeResult = Literal["accepted", "rejected", "failed", "timeout"]
"""Outcome of an opening handshake: ``rejected`` by the app's hook or routing
(an HTTP error status was sent), ``failed`` on an invalid request or a broken
socket, ``timeout`` when the handshake deadline passed."""
HANDSHAKE_RESULTS: Final[tuple[HandshakeResult, ...]] = get_args(HandshakeResult)

CloseReason = Literal[
    "normal",
    "going_away",
    "protocol_error",
    "invalid_data",
    "message_too_big",
    "internal_error",
    "slow_consumer",
    "policy",
    "timeout",
    "abnormal",
    "resume_expired",
    "other",
]
"""Why a connection closed; see :func:`close_reason_for_code`. ``timeout`` covers
keepalive (pong) and idle timeouts, which the close code alone cannot tell;
``resume_expired`` a detached connection whose client did not come back within
its route's grace window."""
CLOSE_REASONS: Final[tuple[CloseReason, ...]] = get_args(CloseReason)

CloseInitiator = Literal["server", "client", "network"]
"""Who ended a connection: ``network`` when the TCP connection broke without a
closing handshake."""
CLOSE_INITIATORS: Final[tuple[CloseInitiator, ...]] = get_args(CloseInitiator)

MessageKind = Literal["text", "binary"]
"""WebSocket data message type."""
MESSAGE_KINDS: Final[tuple[MessageKind, ...]] = get_args(MessageKind)

DropPolicy = Literal["drop_newest", "drop_oldest", "reject", "block_timeout", "disconnect"]
"""Overflow policy that discarded a message: ``block_timeout`` is a ``block``
sender that gave up, ``disconnect`` a slow consumer's outbound buffer."""
DROP_POLICIES: Final[tuple[DropPolicy, ...]] = get_args(DropPolicy)

# The ``reason`` label of wsup_dead_letters_total takes actors.DEAD_LETTER_REASONS.

ActorKind = Literal["connection", "service", "supervisor"]
"""Kind of actor: one per WebSocket connection, an application service actor, or
a supervisor."""
ACTOR_KINDS: Final[tuple[ActorKind, ...]] = get_args(ActorKind)

BackplaneDirection = Literal["sent", "received", "failed"]
"""Backplane traffic: published, received from another node, or failed to publish."""
BACKPLANE_DIRECTIONS: Final[tuple[BackplaneDirection, ...]] = get_args(BackplaneDirection)

AcceptError = Literal["emfile", "enfile", "enobufs", "enomem"]
"""Why ``accept()`` failed for lack of resources: the process's descriptor limit
(``EMFILE``), the system's (``ENFILE``), or kernel memory (``ENOBUFS``, ``ENOMEM``)."""
ACCEPT_ERRORS: Final[tuple[AcceptError, ...]] = get_args(AcceptError)

GcGeneration = Literal["0", "1", "2"]
"""The generation a garbage collection examined, with every younger one
(label ``generation`` of ``wsup_gc_pause_seconds``): ``2`` is a full collection,
which traverses every object the collector tracks."""
GC_GENERATIONS: Final[tuple[GcGeneration, ...]] = get_args(GcGeneration)

LimitName = Literal[
    "inbound_delay", "inbound_close", "max_connections", "max_handshakes",
    "max_connections_per_address", "accept_rate", "handshake_rate", "handshake_rate_per_address",
    "message_timeout",
    "request_head",
]  # fmt: skip
"""Which limit acted: a connection over its route's inbound rate had its reading
paused (``inbound_delay``) or was closed with 1008 (``inbound_close``); accepting
paused, new connections left in the listen backlog (``max_handshakes``,
``accept_rate``); an upgrade was answered 503 (``max_connections``,
``max_connections_per_address``, ``handshake_rate``, ``handshake_rate_per_address``);
or a connection that left a frame or message unfinished past ``message_timeout``
was closed with 1008 (``message_timeout``);
or a request head over ``max_header_bytes``, ``max_headers`` or the 8 KiB line
limit got 431 or 414 (``request_head``)."""
LIMIT_NAMES: Final[tuple[LimitName, ...]] = get_args(LimitName)

ApiEndpoint = Literal["send", "broadcast", "presence", "other"]
"""Server API endpoint called (``other``: a path under ``/api/`` that is none of them)."""
API_ENDPOINTS: Final[tuple[ApiEndpoint, ...]] = get_args(ApiEndpoint)

ApiResult = Literal[
    "ok", "bad_request", "unauthorized", "not_found", "method_not_allowed", "too_large",
    "unavailable",
]  # fmt: skip
"""How a server API call ended: ``ok`` (200); ``bad_request`` (400, 411: bad JSON, a
missing field, a chunked body); ``unauthorized`` (401); ``not_found`` (404);
``method_not_allowed`` (405); ``too_large`` (413); ``unavailable`` (503: the
backplane is down, or a mailbox refused the message)."""
API_RESULTS: Final[tuple[ApiResult, ...]] = get_args(ApiResult)
ResumeResult = Literal["resumed", "relayed", "expired", "unknown", "mismatch", "other_node"]
"""What became of a detached connection (``resumed`` on its own node,
``relayed`` from another node, ``expired``), or why a resume token was
refused: ``unknown`` (not issued, expired or ended), ``mismatch`` (the hooks
accepted other values, or another route or path), ``other_node`` (the token's
connection is on another node, which cannot be reached)."""
RESUME_RESULTS: Final[tuple[ResumeResult, ...]] = get_args(ResumeResult)

RecoveryResult = Literal["recovered", "epoch_changed", "trimmed", "unavailable", "invalid"]
"""How a recovery from an address's history ended (see ``actors.RecoveryResult``)."""
RECOVERY_RESULTS: Final[tuple[RecoveryResult, ...]] = get_args(RecoveryResult)

# --- Close codes -----------------------------------------------------------------

_CLOSE_REASON_BY_CODE: Final[Mapping[int, CloseReason]] = MappingProxyType(
    {
        CloseCode.NORMAL_CLOSURE: "normal",
        CloseCode.GOING_AWAY: "going_away",
        CloseCode.PROTOCOL_ERROR: "protocol_error",
        CloseCode.UNSUPPORTED_DATA: "invalid_data",
        CloseCode.ABNORMAL_CLOSURE: "abnormal",
        CloseCode.INVALID_DATA: "invalid_data",  # payload inconsistent with its type (bad UTF-8)
        CloseCode.POLICY_VIOLATION: "policy",
        CloseCode.MESSAGE_TOO_BIG: "message_too_big",
        CloseCode.INTERNAL_ERROR: "internal_error",
        CloseCode.TRY_AGAIN_LATER: "slow_consumer",  # what the disconnect policy sends
    }
)


def close_reason_for_code(code: int | None) -> CloseReason:
    """Map a WebSocket close code to the ``reason`` label of ``wsup_connections_closed_total``.

    Application close codes (3000-4999) and codes without a dedicated value map to
    ``"other"`` so the label set stays fixed. ``None`` (no close frame at all) and
    1006 map to ``"abnormal"``. A timeout cannot be read from a code: the caller
    that closed the connection because of a timeout passes ``"timeout"`` itself.

    Args:
        code: The close code received or sent, or None when there was none.

    Returns:
        The reason label value. Never raises; O(1).
    """
    if code is None:
        return "abnormal"
    return _CLOSE_REASON_BY_CODE.get(code, "other")


# --- Documentation ---------------------------------------------------------------

METRIC_DOCS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "wsup_connections": "WebSocket connections currently held, by lifecycle state.",
        "wsup_connections_accepted_total": (
            "TCP connections accepted on the server port: upgrades, refused ones and plain HTTP."
        ),
        "wsup_accept_failures_total": (
            "accept() calls that failed for lack of descriptors or memory, by error; "
            "accepting pauses after each (0.1 s to 1 s)."
        ),
        "wsup_limited_total": (
            "Times a limit acted, by limit: reading paused or a close for going over "
            "a route's inbound rate; accepting paused or a 503 from admission control; "
            "a close for a message left unfinished."
        ),
        "wsup_handshakes_total": "Opening handshakes completed, by result.",
        "wsup_handshake_duration_seconds": (
            "Time from accepting a TCP connection to the 101 response, for accepted handshakes."
        ),
        "wsup_connections_closed_total": "WebSocket connections closed, by reason and initiator.",
        "wsup_connection_duration_seconds": "Lifetime of WebSocket connections, open to closed.",
        "wsup_messages_received_total": "WebSocket data messages received from peers, by type.",
        "wsup_messages_sent_total": "WebSocket data messages sent to peers, by type.",
        "wsup_received_bytes_total": "Payload bytes of data messages received from peers.",
        "wsup_sent_bytes_total": "Payload bytes of data messages sent to peers.",
        "wsup_ping_rtt_seconds": "Round-trip time of keepalive pings (ping sent to pong received).",
        "wsup_mailbox_messages": "Messages waiting in all actor mailboxes of the process.",
        "wsup_mailbox_wait_seconds": "Time a message waited in a mailbox before processing began.",
        "wsup_message_processing_seconds": "Time an actor's behaviour took to process one message.",
        "wsup_messages_dropped_total": "Messages discarded by an overflow policy, by policy.",
        "wsup_dead_letters_total": "Messages that could not be delivered or processed, by reason.",
        "wsup_outbound_buffer_bytes": "Bytes queued in all connections' outbound buffers.",
        "wsup_actors": "Live actors, by kind.",
        "wsup_actor_crashes_total": "Actor behaviours that raised an unhandled exception, by kind.",
        "wsup_actor_restarts_total": "Actor restarts performed by supervisors, by kind.",
        "wsup_supervisor_escalations_total": (
            "Supervisors that exceeded their restart intensity, and services that gave up."
        ),
        "wsup_empty_group_publishes_total": (
            "Publishes and broadcasts that found no member of their group (not dead letters)."
        ),
        "wsup_event_loop_lag_seconds": (
            "How late the event-loop watchdog woke up: time the loop was blocked."
        ),
        "wsup_gc_pause_seconds": (
            "Time each run of Python's garbage collector stopped the process, by generation "
            "(2: a full collection)."
        ),
        "wsup_draining": "1 while the process is draining for shutdown, else 0.",
        "wsup_backplane_up": "1 when the backplane is connected (always 1 in-process), else 0.",
        "wsup_backplane_messages_total": (
            "Messages sent to, received from or failed to reach other nodes (0 in-process)."
        ),
        "wsup_backplane_publish_duration_seconds": "Time to publish one message on the backplane.",
        "wsup_history_appends_total": (
            "Messages stamped with an offset and added to an address's history by this process."
        ),
        "wsup_history_recoveries_total": (
            "Recoveries of missed messages from an address's history, by result."
        ),
        "wsup_history_recovered_messages_total": (
            "Messages handed back from history by successful recoveries."
        ),
        "wsup_resumes_total": (
            "Detached connections resumed or expired, and resume tokens refused, by result."
        ),
        "wsup_build_info": "Build information; the value is always 1.",
        "wsup_api_requests_total": "Server API requests answered, by endpoint and result.",
        "wsup_api_request_duration_seconds": (
            "Time to answer a server API request once its body was read, sends included."
        ),
    }
)
"""Exposed family name (as in the ``# TYPE`` line) → one-line meaning."""

# --- Histogram buckets -----------------------------------------------------------
# Chosen per metric so the interesting range has several buckets and the extremes
# (a timeout, a stall) still land below +Inf where they can be told apart.

# A loopback handshake takes well under a millisecond; a slow client over a
# mobile network can take seconds; the top buckets reach the handshake timeout.
_HANDSHAKE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# From a refused-after-one-message second to a connection kept for a day.
_CONNECTION_DURATION_BUCKETS: Final = (
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0,
    12 * 3600.0, 86400.0,
)  # fmt: skip
# LAN to intercontinental RTTs, then up to the usual 20 s pong timeout.
_PING_RTT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
)  # fmt: skip
# In-process queueing and callbacks: tens of microseconds when healthy, seconds
# when an actor is backed up or a callback blocks.
_IN_PROCESS_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# The watchdog's resolution is about a millisecond; ten seconds is a hung loop.
_EVENT_LOOP_LAG_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A young collection takes tens of microseconds; a full one over a million
# tracked objects (tens of thousands of connections) takes a second.
_GC_PAUSE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
)  # fmt: skip
# A Redis PUBLISH on a LAN is a fraction of a millisecond; seconds means trouble.
_BACKPLANE_PUBLISH_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip


# --- Worker processes ---------------------------------------------------------------

GaugeMode = Literal["livesum", "livemax", "livemin"]
"""How a gauge combines across worker processes (see :data:`GAUGE_MODES`)."""

GAUGE_MODES: Final[Mapping[str, GaugeMode]] = MappingProxyType(
    {
        "wsup_connections": "livesum",
        "wsup_mailbox_messages": "livesum",
        "wsup_outbound_buffer_bytes": "livesum",
        "wsup_actors": "livesum",
        "wsup_draining": "livemax",
        "wsup_backplane_up": "livemin",
        "wsup_build_info": "livemax",
    }
)
"""How each gauge combines across worker processes (``prometheus_client``'s
``multiprocess_mode``; "live" drops the value of a worker that exited). Quantities
add up; ``wsup_draining`` is 1 if any worker drains; ``wsup_backplane_up`` is 0 if
any worker lost the backplane. Counters and histograms always add up, dead
workers included, so they never go backwards when a worker is restarted."""


def multiprocess_directory() -> str | None:
    """Return the shared directory when this process runs in multiprocess mode, else None.

    ``prometheus_client`` decides once, when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; this reports that decision.
    """
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        return None
    # prometheus_client also honours the legacy lower-case name.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112
    )


class _Gauge(Gauge):
    """A gauge that remembers its ``set_function`` so the value can be written out."""

    _function: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        """Compute the value with ``f`` at every scrape (see :meth:`Metrics.refresh`)."""
        super().set_function(f)
        self._function = f

    def refresh(self) -> None:
        """Store the value of the function, if any, like :meth:`set` does."""
        if self._function is not None:
            self.set(self._function())


def _prefill(metric: Counter | Gauge | Histogram, *label_sets: Iterable[str]) -> None:
    """Create the child of ``metric`` for every combination of label values."""
    combos: list[tuple[str, ...]] = [()]
    for values in label_sets:
        combos = [(*combo, value) for combo in combos for value in values]
    for combo in combos:
        metric.labels(*combo)


class _WithoutCreated:
    """A view of a registry whose families carry no ``*_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        """Yield the registry's families, minus their creation-timestamp samples."""
        for family in self._registry.collect():
            # A shallow copy: a collector may hand out the same Metric each time.
            trimmed = copy.copy(family)
            created = family.name + "_created"
            trimmed.samples = [s for s in family.samples if s.name != created]
            yield trimmed


class _ProcessMetrics(ProcessCollector):
    """``process_*`` metrics of this process, read at each scrape.

    ``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
    ``process_virtual_memory_bytes``, ``process_start_time_seconds``,
    ``process_open_fds`` and ``process_max_fds``, as prometheus_client's own
    :class:`~prometheus_client.ProcessCollector` names them, with one change:
    the open descriptors are counted with :func:`descriptor_usage` (one
    ``stat()``) instead of a listing of ``/proc/self/fd``, which would block the
    event loop for some 170 ms per scrape at 20,000 descriptors. Where that
    count is unknown (Linux before 6.2) ``process_open_fds`` is left out.
    """

    def __init__(self) -> None:
        super().__init__(registry=None)

    def collect(self) -> Iterable[Metric]:
        from .server._accept import descriptor_usage  # metrics stays importable on its own

        pid = os.path.join(self._proc, "self")
        families: list[Metric] = []
        if self._btime:
            try:
                with open(os.path.join(pid, "stat"), "rb") as stat:
                    parts = stat.read().split(b")")[-1].split()
            except OSError:
                parts = []
            if len(parts) > 21:
                ticks = self._ticks
                families += [
                    GaugeMetricFamily(
                        "process_virtual_memory_bytes",
                        "Virtual memory size in bytes.",
                        value=float(parts[20]),
                    ),
                    GaugeMetricFamily(
                        "process_resident_memory_bytes",
                        "Resident memory size in bytes.",
                        value=float(parts[21]) * self._pagesize,
                    ),
                    GaugeMetricFamily(
                        "process_start_time_seconds",
                        "Start time of the process since unix epoch in seconds.",
                        value=float(parts[19]) / ticks + self._btime,
                    ),
                    CounterMetricFamily(
                        "process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds.",
                        value=(float(parts[11]) + float(parts[12])) / ticks,
                    ),
                ]
        usage = descriptor_usage()
        if usage is not None:
            families += [
                GaugeMetricFamily(
                    "process_open_fds", "Number of open file descriptors.", value=usage[0]
                ),
                GaugeMetricFamily(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    value=usage[1],
                ),
            ]
        return families


class _FlushOnCollect(Collector):
    """Registered before every wsup family: a read of the registry runs the flushers.

    So batched updates (see :class:`~supervisor.observe._instrumentation.BatchedCounter`)
    are exact for every reader on the thread that updates them: a scrape, a
    ``get_sample_value``, a custom exporter. Reads from other threads do not
    flush (the batches are not locked); they see the values of the last flush.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        """No families of its own."""
        return []

    def collect(self) -> list[Metric]:
        """Flush, on the owning thread; contributes no families."""
        if threading.get_ident() == self._metrics.owner_thread:
            self._metrics.flush()
        return []


class Metrics:
    """Every wsup metric, registered on one registry.

    Creating it registers about 30 families and creates all their labelled
    children at zero; that costs a few hundred small objects, once per process.
    Updating a metric is a lock-protected float operation in ``prometheus_client``.

    Attributes:
        registry: The registry the metrics are registered on; serve it on
            ``/metrics`` (see :meth:`render`).
        content_type: ``Content-Type`` of :meth:`render`'s output (Prometheus
            text format 0.0.4).
        multiprocess_dir: The directory shared by worker processes when this
            process is one of them (see :func:`multiprocess_directory`), else None.

    Args:
        registry: Where to register. None creates a new private registry, which
            is what tests want; the server passes the registry it serves.

    Raises:
        ValueError: If ``registry`` already holds a ``wsup_*`` metric (two
            ``Metrics`` on one registry).
    """

    content_type: Final[str] = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry: Final[CollectorRegistry] = (
            CollectorRegistry(auto_describe=True) if registry is None else registry
        )
        self.multiprocess_dir: Final = multiprocess_directory()
        self._flushers: list[Callable[[], None]] = []
        #: The thread that updates batched metrics (the event loop's): its reads flush them.
        self.owner_thread = threading.get_ident()
        self.registry.register(_FlushOnCollect(self))
        exposed = self.registry
        if self.multiprocess_dir is not None:
            exposed = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(exposed, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        elif self.registry is not REGISTRY:
            # Not under --workers: one worker's numbers would pass for the node's.
            # The default registry has prometheus_client's own already.
            self.registry.register(_ProcessMetrics())
        self._exposed: Final = _WithoutCreated(exposed)
        self._gauges: Final[list[_Gauge]] = []
        r = self.registry

        def counter(name: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, METRIC_DOCS[name], labels, registry=r)

        def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
            made = _Gauge(
                name,
                METRIC_DOCS[name],
                labels,
                registry=r,
                multiprocess_mode=GAUGE_MODES.get(name, "livesum"),
            )
            self._gauges.append(made)
            return made

        def histogram(
            name: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(
                name, METRIC_DOCS[name], labels, registry=r, buckets=(*buckets, math.inf)
            )

        # Connections and handshakes.
        self.connections: Final = gauge("wsup_connections", ("state",))
        self.connections_accepted: Final = counter("wsup_connections_accepted_total")
        self.accept_failures: Final = counter("wsup_accept_failures_total", ("error",))
        self.limited: Final = counter("wsup_limited_total", ("limit",))
        self.handshakes: Final = counter("wsup_handshakes_total", ("result",))
        self.handshake_duration: Final = histogram(
            "wsup_handshake_duration_seconds", _HANDSHAKE_BUCKETS
        )
        self.connections_closed: Final = counter(
            "wsup_connections_closed_total", ("reason", "initiator")
        )
        self.connection_duration: Final = histogram(
            "wsup_connection_duration_seconds", _CONNECTION_DURATION_BUCKETS
        )

        # Traffic.
        self.messages_received: Final = counter("wsup_messages_received_total", ("kind",))
        self.messages_sent: Final = counter("wsup_messages_sent_total", ("kind",))
        self.received_bytes: Final = counter("wsup_received_bytes_total")
        self.sent_bytes: Final = counter("wsup_sent_bytes_total")
        self.ping_rtt: Final = histogram("wsup_ping_rtt_seconds", _PING_RTT_BUCKETS)

        # Actors, mailboxes, backpressure.
        self.mailbox_messages: Final = gauge("wsup_mailbox_messages")
        self.mailbox_wait: Final = histogram("wsup_mailbox_wait_seconds", _IN_PROCESS_BUCKETS)
        self.message_processing: Final = histogram(
            "wsup_message_processing_seconds", _IN_PROCESS_BUCKETS
        )
        self.messages_dropped: Final = counter("wsup_messages_dropped_total", ("policy",))
        self.dead_letters: Final = counter("wsup_dead_letters_total", ("reason",))
        self.outbound_buffer_bytes: Final = gauge("wsup_outbound_buffer_bytes")
        self.actors: Final = gauge("wsup_actors", ("kind",))

        # Supervision.
        self.actor_crashes: Final = counter("wsup_actor_crashes_total", ("kind",))
        self.actor_restarts: Final = counter("wsup_actor_restarts_total", ("kind",))
        self.supervisor_escalations: Final = counter("wsup_supervisor_escalations_total")
        self.empty_group_publishes: Final = counter("wsup_empty_group_publishes_total")

        # Runtime and lifecycle.
        self.event_loop_lag: Final = histogram(
            "wsup_event_loop_lag_seconds", _EVENT_LOOP_LAG_BUCKETS
        )
        self.gc_pause: Final = histogram(
            "wsup_gc_pause_seconds", _GC_PAUSE_BUCKETS, ("generation",)
        )
        self.draining: Final = gauge("wsup_draining")

        # Backplane. Up starts at 0: the backplane sets it once it is connected
        # (the in-process one at once), so a node that never got there reads as down.
        self.backplane_up: Final = gauge("wsup_backplane_up")
        self.backplane_messages: Final = counter("wsup_backplane_messages_total", ("direction",))
        self.backplane_publish_duration: Final = histogram(
            "wsup_backplane_publish_duration_seconds", _BACKPLANE_PUBLISH_BUCKETS
        )

        # Server API.
        self.api_requests: Final = counter("wsup_api_requests_total", ("endpoint", "result"))
        self.api_request_duration: Final = histogram(
            "wsup_api_request_duration_seconds", _BACKPLANE_PUBLISH_BUCKETS
        )

        # History.
        self.history_appends: Final = counter("wsup_history_appends_total")
        self.history_recoveries: Final = counter("wsup_history_recoveries_total", ("result",))
        self.history_recovered_messages: Final = counter("wsup_history_recovered_messages_total")

        # Resumable connections (detached ones are wsup_connections{state="detached"}).
        self.resumes: Final = counter("wsup_resumes_total", ("result",))

        # Its label values are whatever the running build is, not a fixed set, so
        # no child exists until set_build_info() is called.
        self.build_info: Final = gauge("wsup_build_info", ("version", "python", "backend"))

        _prefill(self.connections, CONNECTION_STATES)
        _prefill(self.handshakes, HANDSHAKE_RESULTS)
        _prefill(self.accept_failures, ACCEPT_ERRORS)
        _prefill(self.limited, LIMIT_NAMES)
        _prefill(self.connections_closed, CLOSE_REASONS, CLOSE_INITIATORS)
        _prefill(self.messages_received, MESSAGE_KINDS)
        _prefill(self.messages_sent, MESSAGE_KINDS)
        _prefill(self.messages_dropped, DROP_POLICIES)
        _prefill(self.dead_letters, DEAD_LETTER_REASONS)
        _prefill(self.actors, ACTOR_KINDS)
        _prefill(self.actor_crashes, ACTOR_KINDS)
        _prefill(self.actor_restarts, ACTOR_KINDS)
        _prefill(self.backplane_messages, BACKPLANE_DIRECTIONS)
        _prefill(self.api_requests, API_ENDPOINTS, API_RESULTS)
        _prefill(self.history_recoveries, RECOVERY_RESULTS)
        _prefill(self.resumes, RESUME_RESULTS)
        _prefill(self.gc_pause, GC_GENERATIONS)

    def set_build_info(self, version: str, python: str, backend: str) -> None:
        """Publish ``wsup_build_info{version, python, backend} 1``.

        Replaces any previous value, so exactly one series exists afterwards.

        Args:
            version: wsup's version, e.g. ``"0.1.0"``.
            python: Python version, e.g. ``"3.12.4"``.
            backend: Event-loop backend, e.g. ``"asyncio+uvloop"`` or ``"trio"``.
        """
        if self.multiprocess_dir is None:
            # Not in multiprocess mode, where prometheus_client cannot clear labels
            # (and a worker sets its build information only once anyway).
            self.build_info.clear()
        self.build_info.labels(version=version, python=python, backend=backend).set(1)

    def refresh(self) -> None:
        """Write the current value of every gauge computed on demand.

        Only needed by worker processes: a scrape reads the other workers'
        values from their files, so each worker calls this every few seconds
        (and before rendering). Costs one call of each such gauge's function.
        """
        for gauge in self._gauges:
            gauge.refresh()

    def render(self) -> bytes:
        """Return the registry in the Prometheus text exposition format.

        Covers every collector on :attr:`registry`, not only wsup's, without the
        ``*_created`` samples; in a worker process, every worker's values
        combined. Costs one pass over every series (a few hundred lines; in a
        worker, a read of every worker's file).

        Returns:
            The exposition body, to be served with :attr:`content_type`.
        """
        self.flush()
        if self.multiprocess_dir is not None:
            self.refresh()
        return generate_latest(self._exposed)

    def add_flusher(self, flush: Callable[[], None]) -> None:
        """Call ``flush`` before every read of the registry on :attr:`owner_thread`
        and every render (batched observations land first)."""
        self._flushers.append(flush)

    def flush(self) -> None:
        """Run every registered flusher (see :class:`BatchedHistogram`)."""
        for flush in self._flushers:
            flush()

    def render_for(self, accept: str | None) -> tuple[bytes, str]:
        """Render for a scraper's ``Accept`` header (OpenMetrics when it asks for it).

        Args:
            accept: The request's ``Accept`` header value, or None.

        Returns:
            ``(body, content_type)``; the plain text format when ``accept`` is None
            or does not ask for OpenMetrics.
        """
        encoder, content_type = choose_encoder(accept or "")
        self.flush()
        if self.multiprocess_dir is not None:
            self.refresh()
        return encoder(self._exposed), content_type
