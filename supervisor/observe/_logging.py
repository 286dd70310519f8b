"""Logging: structlog for wsup's own events, the standard library's routed through it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal

import structlog

__all__ = ["configure_logging"]

LogFormat = Literal["json", "console"]


def configure_logging(
    log_format: LogFormat | None = None,
    level: str = "info",
    context: Mapping[str, Any] | None = None,
) -> None:
    """Send every log line — wsup's and its dependencies' — through one structlog pipeline.

    Args:
        log_format: ``json`` (one object per line, for production) or
            ``console`` (coloured, for a terminal); ``None`` picks ``console``
            on a TTY and ``json`` otherwise.
        level: the minimum level name (``debug``, ``info``, ``warning``, ``error``).
        context: fields added to every line of this process, bound once
            (a worker's ``worker`` index).

    Raises:
        ValueError: an unknown level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if context:
        shared.insert(1, _Bind(context))
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if log_format == "json" else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # websockets logs each handshake at INFO; wsup logs its own canonical lines instead.
    logging.getLogger("websockets").setLevel(max(numeric, logging.WARNING))


class _Bind:
    """A processor that adds the same fields to every line (the call's own win)."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        self._context = dict(context)

    def __call__(
        self, logger: object, name: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        for key, value in self._context.items():
            event_dict.setdefault(key, value)
        return event_dict


def _identity(
    logger: object, name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event_dict
