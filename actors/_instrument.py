"""Hooks through which the runtime reports what it does.

``actors`` knows nothing of Prometheus: it calls an :class:`Instrumentation`,
whose methods do nothing by default. ``supervisor.metrics`` supplies one that
updates the ``wsup_*`` metrics. Every hook must be cheap and must not raise.
"""

from __future__ import annotations

__all__ = ["Instrumentation"]


class Instrumentation:
    """Receives runtime events; the base class ignores them all."""

    def message_processed(self, kind: str, wait: float, duration: float) -> None:
        """A message was taken from a mailbox after ``wait`` s and handled in ``duration`` s."""

    def message_dropped(self, policy: str) -> None:
        """A mailbox dropped a message under ``policy``."""

    def dead_letter(self, reason: str) -> None:
        """A message could not be delivered or handled, for ``reason``."""

    def actor_started(self, kind: str) -> None:
        """An actor of ``kind`` came to life (not counting restarts)."""

    def actor_stopped(self, kind: str) -> None:
        """An actor of ``kind`` stopped for good."""

    def actor_crashed(self, kind: str) -> None:
        """An actor's behaviour raised."""

    def actor_restarted(self, kind: str) -> None:
        """An actor's behaviour was re-created by its supervisor."""

    def escalated(self) -> None:
        """A supervisor exceeded its restart intensity, or a service gave up."""

    def published_to_empty_group(self) -> None:
        """A publish or broadcast found no member of its group on any node."""

    def backplane_message(self, direction: str) -> None:
        """A message crossed the backplane (``sent``, ``received`` or ``failed``)."""

    def backplane_published(self, seconds: float) -> None:
        """A publish to the backplane took ``seconds``."""

    def backplane_state(self, up: bool) -> None:
        """The backplane went up or down."""

    def history_appended(self) -> None:
        """A message was stamped and added to an address's history."""

    def history_recovered(self, result: str, records: int) -> None:
        """A recovery ended with ``result`` (a ``RecoveryResult`` value), replaying ``records``."""
