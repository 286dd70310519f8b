"""The event-loop watchdog: measures stalls and names the code that caused them.

Theory of operation: a heartbeat task on the event loop wakes every
``interval`` seconds and records how late it woke (``wsup_event_loop_lag_seconds``).
A plain thread watches the heartbeat; when it has not beaten for longer than
``threshold``, the loop is stalled *right now*, so the thread reads the loop
thread's current Python stack and logs, once per stall, which actor and which
callback are running. Nothing is done per message.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from types import FrameType

import anyio
import structlog

from actors._actor import Cell

from ..metrics import Metrics

__all__ = ["LoopWatchdog", "describe_stack"]

_log = structlog.get_logger("wsup.watchdog")
_SKIP = ("/anyio/", "/asyncio/", "/trio/", "/uvloop/", "/actors/", "/supervisor/", "/threading.py")


def describe_stack(frame: FrameType | None) -> dict[str, str]:
    """Return the actor and the innermost application callback on ``frame``'s stack."""
    actor = ""
    callback = ""
    location = ""
    stack = traceback.extract_stack(frame, limit=64) if frame is not None else []
    f = frame
    while f is not None:
        candidate = f.f_locals.get("self")
        if isinstance(candidate, Cell):
            actor = candidate.address
            break
        f = f.f_back
    for entry in reversed(stack):
        if not any(part in entry.filename for part in _SKIP):
            callback = entry.name
            location = f"{entry.filename.rsplit('/', 1)[-1]}:{entry.lineno}"
            break
    if not callback and stack:
        callback = stack[-1].name
        location = f"{stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno}"
    return {"actor": actor, "callback": callback, "location": location}


class LoopWatchdog:
    """Heartbeat on the loop plus a watching thread.

    Args:
        metrics: where to record the lag.
        threshold: stall length (s) worth a WARNING naming the culprit.
        interval: heartbeat period (s).
    """

    def __init__(self, metrics: Metrics, threshold: float, interval: float = 0.05) -> None:
        self.metrics = metrics
        self.threshold = threshold
        self.interval = interval
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()
        # The largest lag of the current second and of the one before (recent_lag).
        self._window_start = time.monotonic()
        self._window_max = 0.0
        self._previous_max = 0.0

    def recent_lag(self, now: float | None = None) -> float:
        """The largest lag measured over the last one to two seconds, in seconds.

        ``now``: a ``time.monotonic()`` reading (default: read it).
        """
        if (time.monotonic() if now is None else now) - self._window_start >= 2.0:
            return 0.0  # no beat finished for a while: the loop is stopped or stalled now
        return max(self._window_max, self._previous_max)

    def _record(self, late: float, now: float) -> None:
        if now - self._window_start >= 1.0:
            self._previous_max = self._window_max if now - self._window_start < 2.0 else 0.0
            self._window_start = now
            self._window_max = 0.0
        self._window_max = max(self._window_max, late)

    async def run(self) -> None:
        """Beat until cancelled; the watching thread lives as long."""
        self._loop_thread = threading.get_ident()
        thread = threading.Thread(target=self._watch, name="wsup-loop-watchdog", daemon=True)
        thread.start()
        lag = self.metrics.event_loop_lag
        try:
            while True:
                before = time.monotonic()
                self._beat = before
                await anyio.sleep(self.interval)
                after = time.monotonic()
                late = max(after - before - self.interval, 0.0)
                lag.observe(late)
                self._record(late, after)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        reported_beat = -1.0
        while not self._stop.wait(self.threshold / 2):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled > self.threshold and beat != reported_beat:
                reported_beat = beat
                frame = sys._current_frames().get(self._loop_thread)
                _log.warning(
                    "loop.stalled",
                    stalled_for=round(stalled, 3),
                    threshold=self.threshold,
                    **describe_stack(frame),
                )
