"""Every log event the code emits is in the operations guide's table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A logger call whose first argument is a constant event name, possibly on the next line.
EVENT = re.compile(
    r"_log\.(?:debug|info|warning|error|critical|exception)\(\s*\"([a-z_]+\.[a-z_]+)\""
)


def emitted_events() -> set[str]:
    """Collect the event names of every structlog call in actors/ and supervisor/."""
    events: set[str] = set()
    for package in ("actors", "supervisor"):
        for path in (ROOT / package).rglob("*.py"):
            events.update(EVENT.findall(path.read_text(encoding="utf-8")))
    return events


def test_every_log_event_is_documented() -> None:
    """A new log event without a row in docs/operations.md fails here."""
    events = emitted_events()
    assert {"connection.closed", "server.started", "loop.stalled"} <= events
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(e for e in events if f"`{e}`" not in doc)
    assert not missing, f"log events missing from docs/operations.md: {missing}"
