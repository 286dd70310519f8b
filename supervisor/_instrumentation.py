"""Runtime events → ``wsup_*`` metrics."""

from __future__ import annotations

from actors import Instrumentation

from .metrics import Metrics

__all__ = ["MetricsInstrumentation"]


class MetricsInstrumentation(Instrumentation):
    """Updates :class:`~supervisor.metrics.Metrics` from runtime hooks.

    Labelled children are resolved once here, so the per-message hooks cost a
    dictionary lookup and a locked float update each.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._wait = metrics.mailbox_wait
        self._processing = metrics.message_processing

    def message_processed(self, kind: str, wait: float, duration: float) -> None:
        """Observe mailbox wait and processing time."""
        self._wait.observe(wait)
        self._processing.observe(duration)

    def message_dropped(self, policy: str) -> None:
        """Count a mailbox drop."""
        self.metrics.messages_dropped.labels(policy=policy).inc()

    def dead_letter(self, reason: str) -> None:
        """Count a dead letter."""
        self.metrics.dead_letters.labels(reason=reason).inc()

    def actor_started(self, kind: str) -> None:
        """One more live actor of ``kind``."""
        self.metrics.actors.labels(kind=kind).inc()

    def actor_stopped(self, kind: str) -> None:
        """One fewer live actor of ``kind``."""
        self.metrics.actors.labels(kind=kind).dec()

    def actor_crashed(self, kind: str) -> None:
        """Count a crash."""
        self.metrics.actor_crashes.labels(kind=kind).inc()

    def actor_restarted(self, kind: str) -> None:
        """Count a restart."""
        self.metrics.actor_restarts.labels(kind=kind).inc()

    def escalated(self) -> None:
        """Count an escalation."""
        self.metrics.supervisor_escalations.inc()

    def backplane_message(self, direction: str) -> None:
        """Count a backplane message."""
        self.metrics.backplane_messages.labels(direction=direction).inc()

    def backplane_published(self, seconds: float) -> None:
        """Observe a publish."""
        self.metrics.backplane_publish_duration.observe(seconds)

    def backplane_state(self, up: bool) -> None:
        """Record backplane health."""
        self.metrics.backplane_up.set(1 if up else 0)
