"""The log table of the operations guide matches the code: events, levels, fields.

Every structlog call whose first argument is a constant ``component.past_tense``
name is found by walking the syntax tree of ``actors/`` and ``supervisor/``,
whatever the logger variable is called; its keyword arguments are the fields
it writes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"debug", "info", "warning", "error", "critical", "exception", "log"}
EVENT_NAME = re.compile(r"[a-z_]+\.[a-z_]+")
# Keyword arguments of a logger call that are not fields of the line.
NOT_FIELDS = {"exc_info", "stack_info"}
LEVEL_OF = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
}
ROW = re.compile(r"^\| `([a-z_.]+)`(?: / `([a-z_.]+)`)? \|([^|]*)\|[^|]*\|(.*)\|$", re.MULTILINE)


class Call:
    """One logger call: where, which event, which fields, and whether it spreads ``**kw``."""

    def __init__(
        self, where: str, event: str, fields: set[str], spread: bool, level: str | None
    ) -> None:
        self.where = where
        self.event = event
        self.fields = fields
        self.spread = spread
        #: DEBUG, INFO, ...; None for ``log(level, ...)``, whose level is computed.
        self.level = level


def _event_argument(node: ast.Call) -> str | None:
    """The constant event name of a logger call, or None if ``node`` is not one."""
    if not isinstance(node.func, ast.Attribute) or node.func.attr not in LEVELS:
        return None
    # _log.log(level, "event", ...) names the event second.
    args = node.args[1:] if node.func.attr == "log" else node.args
    if not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
        return None
    return args[0].value if EVENT_NAME.fullmatch(args[0].value) else None


def logger_calls() -> list[Call]:
    """Every structlog call with a constant event name in actors/ and supervisor/."""
    calls: list[Call] = []
    for package in ("actors", "supervisor"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                event = _event_argument(node)
                if event is None:
                    continue
                fields = {k.arg for k in node.keywords if k.arg is not None} - NOT_FIELDS
                spread = any(k.arg is None for k in node.keywords)
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                assert isinstance(node.func, ast.Attribute)
                level = LEVEL_OF.get(node.func.attr)
                calls.append(Call(where, event, fields, spread, level))
    return calls


def documented_fields() -> dict[str, set[str]]:
    """Event → the fields its row in docs/operations.md names (outside parentheses)."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    doc = doc[doc.index("\n## Logs\n") :]
    rows: dict[str, set[str]] = {}
    for match in ROW.finditer(doc):
        column = re.sub(r"\([^)]*\)", "", match.group(4))
        fields = set(re.findall(r"`([a-z_]+)`", column))
        for event in filter(None, match.group(1, 2)):
            rows[event] = fields
    return rows


def test_every_log_event_is_documented() -> None:
    """A new log event without a row in docs/operations.md fails here."""
    events = {call.event for call in logger_calls()}
    assert {"connection.closed", "server.started", "loop.stalled", "worker.orphaned"} <= events
    rows = documented_fields()
    missing = sorted(e for e in events if e not in rows)
    assert not missing, f"log events missing from docs/operations.md: {missing}"


def test_every_documented_log_event_is_emitted() -> None:
    """A row for an event that no code writes any more fails here."""
    events = {call.event for call in logger_calls()}
    stale = sorted(set(documented_fields()) - events)
    assert not stale, f"docs/operations.md documents events nothing logs: {stale}"


def test_every_logged_field_is_documented_and_every_documented_one_is_logged() -> None:
    """Each call writes only its row's fields; together, an event's calls write them all
    (a field some calls lack, such as ``conn`` before a connection opens, is optional)."""
    rows = documented_fields()
    wrong: list[str] = []
    written: dict[str, set[str]] = {}
    spread: set[str] = set()
    for call in logger_calls():
        written.setdefault(call.event, set()).update(call.fields)
        if call.spread:
            spread.add(call.event)
        extra = call.fields - rows.get(call.event, set())
        if extra:
            wrong.append(f"{call.where} {call.event}: logs undocumented {sorted(extra)}")
    for event, fields in written.items():
        absent = rows.get(event, set()) - fields
        if absent and event not in spread:
            wrong.append(f"{event}: documented but never logged {sorted(absent)}")
    assert not wrong, "\n".join(wrong)


def documented_levels() -> dict[str, set[str]]:
    """Event → the levels its row names (``INFO / ERROR`` rows give one to each event)."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    doc = doc[doc.index("\n## Logs\n") :]
    levels: dict[str, set[str]] = {}
    for match in ROW.finditer(doc):
        named = re.findall(r"DEBUG|INFO|WARNING|ERROR|CRITICAL", match.group(3))
        first, second = match.group(1, 2)
        if second is not None and len(named) == 2:
            levels[first], levels[second] = {named[0]}, {named[1]}
        else:
            levels[first] = set(named)
    return levels


def test_every_log_call_uses_a_documented_level() -> None:
    """A call logs at a level its event's row names (``log(level, ...)`` calls aside)."""
    levels = documented_levels()
    wrong = [
        f"{call.where} {call.event}: {call.level}, documented {sorted(levels.get(call.event, []))}"
        for call in logger_calls()
        if call.level is not None and call.level not in levels.get(call.event, set())
    ]
    assert not wrong, "\n".join(wrong)
