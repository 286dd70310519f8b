"""Extension points: what code may plug into wsup, and the contract of each.

Most programs never need this module. It is for code that replaces a part of
wsup rather than using it: a cluster transport other than Redis, runtime events
sent somewhere other than Prometheus, a clock of one's own. Each name is
defined in :mod:`actors` (and importable from there too); this module is the
list of what wsup keeps stable for such code, and says where each piece plugs
in. It imports nothing but :mod:`actors`: not the server, websockets or
prometheus_client.

- :class:`Backplane` carries sends to addresses whose members live on other
  nodes, and keeps what nodes must agree on (leases, counters, the live
  nodes). It plugs into ``ActorSystem(backplane=...)``,
  ``Server(app, backplane=...)`` and ``serve(app, backplane=...)``. A subclass
  implements ``up``, ``run``, ``subscribe``, ``unsubscribe`` and ``publish``,
  and overrides ``acquire_lease``, ``renew_lease``, ``release_lease``,
  ``increment``, ``live_nodes`` (with ``node_check_interval``),
  ``member_joined``, ``member_left`` and ``presence`` for state shared between
  nodes, which the base class keeps in this process. Its
  contract: ``run(node, task_status=...)`` calls ``task_status.started()``
  once sends can go out (or once degraded, if it may start without its
  broker) and carries messages until cancelled; what arrives from another
  node goes to ``node.deliver_remote(address, message)``, a change between up
  and down to ``node.backplane_state_changed(up)``; ``publish`` never buffers
  without bound: when the message cannot go out it raises
  :class:`~actors.BackplaneUnavailable` at once (the runtime counts a
  ``backplane_down`` dead letter; local members got the message already).
  :class:`InProcessBackplane` is the default (one node, nothing on a wire),
  :class:`supervisor.RedisBackplane` the cluster one. A backplane that keeps
  history for the whole cluster sets ``keeps_history`` and answers
  ``read_history`` with a :class:`HistoryRead`, whose verdict comes from
  :func:`decide_recovery` (the one rule for a gap); without it each process
  keeps its own history.
- :class:`Node` is what a backplane sees of the local runtime: ``node_id``,
  ``deliver_remote``, ``deliver_own`` (a history record of this node's that
  the backplane brought back) and ``backplane_state_changed``.
- :class:`Clock` is where wsup reads time, sleeps and sets timeouts. It plugs
  into ``ActorSystem(clock=...)``, ``Runtime(clock=...)`` and
  ``Server(app, clock=...)``. :class:`MonotonicClock` is the default;
  :class:`FakeClock` moves only when a test advances it.
- :class:`Instrumentation` receives what the runtime does: messages handled
  and dropped, dead letters, actors started, crashed and restarted, backplane
  traffic. It plugs into ``ActorSystem(instrumentation=...)`` and
  ``Runtime(instrumentation=...)``; the base class ignores every event, so a
  subclass overrides only the hooks it wants. Hooks run on the hot path: they
  must be cheap and must not raise. A :class:`~supervisor.Server` uses its
  own, which feeds the ``wsup_*`` metrics (``Server(app,
  metrics=Metrics(registry))`` chooses the Prometheus registry; see
  :mod:`supervisor.metrics`).
- :class:`DeadLetterOffice`: ``runtime.dead_letters.subscribe(listener)``
  calls ``listener`` with every :class:`DeadLetter` from then on, and returns
  the function that stops it. A listener that raises is logged and does not
  affect the send.

Everything else is either the API a program calls (``actors``,
``supervisor``, ``supervisor.metrics``) or private (modules whose names start
with ``_``) and may change without notice. The guide ``docs/extending.md``
has a runnable example.
"""

from actors import (
    Backplane,
    Clock,
    DeadLetter,
    DeadLetterOffice,
    FakeClock,
    HistoryRead,
    InProcessBackplane,
    Instrumentation,
    MonotonicClock,
    Node,
    decide_recovery,
)

__all__ = [
    "Backplane",
    "Clock",
    "DeadLetter",
    "DeadLetterOffice",
    "FakeClock",
    "HistoryRead",
    "InProcessBackplane",
    "Instrumentation",
    "MonotonicClock",
    "Node",
    "decide_recovery",
]
