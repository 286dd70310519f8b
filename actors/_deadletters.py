"""Dead letters: messages that were dropped, unroutable, or failed their handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import structlog

from ._clock import Clock
from ._instrument import Instrumentation

__all__ = ["DEAD_LETTER_REASONS", "DeadLetter", "DeadLetterOffice", "DeadLetterReason"]

DeadLetterReason = Literal["dropped", "no_recipient", "failed", "stopped", "backplane_down"]
"""Why a message became a dead letter: ``dropped`` by an overflow policy,
``no_recipient`` for an address nobody holds, ``failed`` when processing it
crashed the actor, ``stopped`` when its actor stopped first, ``backplane_down``
when a remote send could not be published. Also the ``reason`` label of
``wsup_dead_letters_total``."""

DEAD_LETTER_REASONS: Final[tuple[DeadLetterReason, ...]] = get_args(DeadLetterReason)
"""Every reason a message can become a dead letter, in a fixed order."""

_log = structlog.get_logger("wsup.actors")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that reached no handler.

    Attributes:
        address: where it was sent.
        message: the message itself.
        reason: one of :data:`DEAD_LETTER_REASONS`.
        detail: e.g. the drop policy or the exception that failed it.
    """

    address: str
    message: Any
    reason: DeadLetterReason
    detail: str = ""


class DeadLetterOffice:
    """Counts dead letters, logs them at WARNING with rate limiting, and notifies listeners.

    At most one log line per reason per ``log_interval`` seconds; the next line
    says how many were suppressed in between.

    Args:
        clock: the time source for rate limiting.
        instrumentation: receives one ``dead_letter`` call per letter.
        log_interval: seconds between log lines for one reason.
    """

    def __init__(
        self, clock: Clock, instrumentation: Instrumentation, *, log_interval: float = 1.0
    ) -> None:
        self._clock = clock
        self._instrumentation = instrumentation
        self._log_interval = log_interval
        self._counts = dict.fromkeys(DEAD_LETTER_REASONS, 0)
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._listeners: list[Callable[[DeadLetter], None]] = []

    def post(self, letter: DeadLetter) -> None:
        """Record one dead letter."""
        reason = letter.reason
        self._counts[reason] = self._counts.get(reason, 0) + 1
        self._instrumentation.dead_letter(reason)
        for listener in self._listeners:
            try:
                listener(letter)
            except Exception:
                # A broken listener must not break the send that produced the letter.
                _log.exception("actor.dead_letter_listener_failed", address=letter.address)
        now = self._clock.now()
        last = self._last_log.get(reason)
        if last is not None and now - last < self._log_interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        _log.warning(
            "actor.dead_letter",
            address=letter.address,
            reason=reason,
            detail=letter.detail,
            message_type=type(letter.message).__name__,
            suppressed=self._suppressed.pop(reason, 0),
        )

    def subscribe(self, listener: Callable[[DeadLetter], None]) -> Callable[[], None]:
        """Call ``listener`` with every future dead letter; return an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def statistics(self) -> MappingProxyType[str, int]:
        """Return dead letters counted so far, by reason."""
        return MappingProxyType(dict(self._counts))
