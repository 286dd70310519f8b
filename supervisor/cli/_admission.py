"""The admission control options of ``wsup serve``: flags, ``WSUP_*`` variables, and
the same settings written back as flags for worker processes.

Each option is one row of :data:`OPTIONS`: its flag, the ``ServerConfig`` field,
and how its text reads. A count or a rate takes ``off`` to lift the limit; a rate
is ``PER_SECOND`` or ``PER_SECOND/BURST`` (``500/1000``: 500 a second, bursts of
1,000).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..server._config import ServerConfig
from ..server._limits import Rate

__all__ = ["OPTIONS", "add_arguments", "as_flags", "overrides"]


class BadValue(ValueError):
    """A value that does not read as its option's kind; the text says what it takes."""


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadValue("a whole number") from None


def _count_or_off(text: str) -> int | None:
    return None if text.strip().lower() == "off" else _count(text)


def _rate_or_off(text: str) -> Rate | None:
    if text.strip().lower() == "off":
        return None
    per_second, _, burst = text.partition("/")
    try:
        return Rate(float(per_second), float(burst) if burst else None)
    except ValueError as exc:
        raise BadValue(f"PER_SECOND or PER_SECOND/BURST, or off ({exc})") from None


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise BadValue("a number of seconds, or off") from None


def _rate_text(rate: Rate) -> str:
    return f"{rate.per_second!r}" + ("" if rate.burst is None else f"/{rate.burst!r}")


@dataclass(frozen=True, slots=True)
class Option:
    """One admission option: ``--flag`` and ``WSUP_FLAG`` set ``ServerConfig.field``."""

    flag: str
    field: str
    metavar: str
    read: Callable[[str], Any]
    #: The help text, up to its default: "... (default 10" (the variable is added).
    help: str

    @property
    def variable(self) -> str:
        return "WSUP_" + self.flag.removeprefix("--").replace("-", "_").upper()

    def write(self, value: Any) -> str:
        """The flag's text for ``value`` (what :attr:`read` reads back)."""
        if value is None:
            return "off"
        return _rate_text(value) if isinstance(value, Rate) else repr(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--max-connections",
        "max_connections",
        "N",
        _count,
        "open WebSocket connections; more get 503 (default 100000",
    ),
    Option(
        "--max-handshakes",
        "max_handshakes",
        "N",
        _count_or_off,
        "handshakes in progress; past it, new connections wait in the listen backlog (default 2048",
    ),
    Option(
        "--max-connections-per-address",
        "max_connections_per_address",
        "N",
        _count_or_off,
        "open connections per client address; more get 503 (default off",
    ),
    Option(
        "--accept-rate",
        "accept_rate",
        "R[/B]",
        _rate_or_off,
        "sockets accepted per second on the server port; past it, accepting pauses (default off",
    ),
    Option(
        "--handshake-rate",
        "handshake_rate",
        "R[/B]",
        _rate_or_off,
        "WebSocket upgrades per second; past it, 503 (default off",
    ),
    Option(
        "--handshake-rate-per-address",
        "handshake_rate_per_address",
        "R[/B]",
        _rate_or_off,
        "WebSocket upgrades per second per client address; past it, 503 (default off",
    ),
    Option(
        "--readiness-loop-lag",
        "readiness_loop_lag",
        "S",
        _seconds_or_off,
        "/readyz answers 503 while the event loop lags more than S seconds (default off",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every admission option to ``wsup serve``'s parser."""
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            metavar=option.metavar,
            default=None,
            help=f"{option.help}; {option.variable})",
        )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` fields the flags (or else the variables) set.

    Raises:
        ValueError: a value does not read; the message names the flag or variable.
    """
    found: dict[str, Any] = {}
    for option in OPTIONS:
        text = getattr(args, option.field)
        source = option.flag
        if text is None:
            text = os.environ.get(option.variable)
            source = option.variable
        if text is None:
            continue
        try:
            found[option.field] = option.read(text)
        except BadValue as exc:
            raise ValueError(f"{source} must be {exc}, got {text!r}") from None
    return found


def as_flags(config: ServerConfig) -> list[str]:
    """Every admission setting of ``config`` as flags (a worker's command line)."""
    flags: list[str] = []
    for option in OPTIONS:
        flags += [option.flag, option.write(getattr(config, option.field))]
    return flags
