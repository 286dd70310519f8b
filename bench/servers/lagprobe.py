"""Event-loop lag probe for the peer servers (``--lag-file PATH``).

The same measurement as wsup's loop watchdog, which exports it as
``wsup_event_loop_lag_seconds``: a task sleeps ``INTERVAL`` seconds and records
how much later than asked it woke up, i.e. how long the loop was busy with
something else. Each sample is one line ``MONOTONIC LAG`` (seconds, the time
the probe woke up and its lateness) appended to the file, so the harness can
keep the samples of the window it measured. ``time.monotonic()`` is the
system-wide ``CLOCK_MONOTONIC`` on Linux, comparable across processes.

The peer scripts import this module from their own directory (``python
bench/servers/X.py`` puts it first on ``sys.path``), so they still import
nothing from ``bench``. Twenty wake-ups and writes a second cost the server
next to nothing, as the watchdog costs wsup.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

#: Seconds between wake-ups: wsup's watchdog interval.
INTERVAL = 0.05


async def probe(path: Path) -> None:
    """Record the loop's lag into ``path`` until cancelled."""
    with path.open("a", buffering=1) as out:
        while True:
            before = time.monotonic()
            await asyncio.sleep(INTERVAL)
            now = time.monotonic()
            out.write(f"{now:.6f} {max(now - before - INTERVAL, 0.0):.6f}\n")


def start(path: Path | None) -> asyncio.Task[None] | None:
    """Start the probe on the running loop when ``path`` is given; keep the task."""
    return asyncio.get_running_loop().create_task(probe(path)) if path is not None else None
