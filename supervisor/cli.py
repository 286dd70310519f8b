"""The ``wsup`` command line (also ``python -m supervisor``).

Every option can also come from a ``WSUP_*`` environment variable (the
command line wins): ``WSUP_HOST`` (several hosts separated by commas),
``WSUP_PORT``, ``WSUP_DRAIN_TIMEOUT``, ``WSUP_LOG_FORMAT``, ``WSUP_LOG_LEVEL``,
``WSUP_BACKEND``, ``WSUP_METRICS_PORT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from ._app import App
from ._exceptions import ListenError
from ._logging import configure_logging
from ._server import serve

__all__ = ["load_app", "main"]


class UsageError(Exception):
    """A command-line mistake, reported as one line with exit status 2."""


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"WSUP_{name}", default)


def _env_number(name: str, default: str, kind: type[int] | type[float]) -> Any:
    raw = _env(name, default)
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"WSUP_{name} must be {what}, got {raw!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsup", description="A WebSocket server in which every connection is an actor."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve an app: wsup serve MODULE:ATTR")
    run.add_argument("app", metavar="MODULE:ATTR", help="e.g. examples.echo:app")
    run.add_argument(
        "--host",
        action="append",
        default=None,
        help="address to listen on; repeat for several (default 127.0.0.1; WSUP_HOST)",
    )
    run.add_argument("--port", type=int, default=None, help="TCP port (default 8765; WSUP_PORT)")
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds to drain on SIGTERM before cancelling (default 30; WSUP_DRAIN_TIMEOUT)",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=None,
        help="log format (default: console on a terminal, else json; WSUP_LOG_FORMAT)",
    )
    run.add_argument(
        "--log-level",
        default=None,
        help="debug, info, warning, error (default info; WSUP_LOG_LEVEL)",
    )
    run.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default=None,
        help="event loop (default asyncio, with uvloop when installed; WSUP_BACKEND)",
    )
    return parser


def load_app(target: str) -> App:
    """Import ``MODULE:ATTR`` (or ``path/to/file.py:ATTR``) and return the :class:`App`.

    The current directory is importable, as with ``python -m``.

    Raises:
        UsageError: the target is malformed, does not import, or is not an App.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (e.g. examples.echo:app), got {target!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or spec.loader is None:
                raise UsageError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if app is None:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise UsageError(f"{target} is a {type(app).__name__}, not a supervisor.App")
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        hosts = args.host or [h.strip() for h in _env("HOST", "127.0.0.1").split(",") if h.strip()]
        port = args.port if args.port is not None else _env_number("PORT", "8765", int)
        drain = (
            args.drain_timeout
            if args.drain_timeout is not None
            else _env_number("DRAIN_TIMEOUT", "30", float)
        )
        log_format = args.log_format or _env("LOG_FORMAT")
        if log_format not in (None, "json", "console"):
            raise UsageError(f"WSUP_LOG_FORMAT must be json or console, got {log_format!r}")
        level = args.log_level or _env("LOG_LEVEL", "info")
        backend = args.backend or _env("BACKEND", "asyncio")
        if backend not in ("asyncio", "trio"):
            raise UsageError(f"WSUP_BACKEND must be asyncio or trio, got {backend!r}")
        try:
            configure_logging(log_format, level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        app = load_app(args.app)
        try:
            config = dataclasses.replace(
                app.config, hosts=tuple(hosts), port=port, drain_timeout=drain
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    except (UsageError, ValueError) as exc:
        print(f"wsup: error: {exc}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {}
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            pass
    try:
        anyio.run(_serve, app, config, backend=backend, backend_options=options)
    except BaseException as exc:
        listen_error = _find(exc, ListenError)
        if listen_error is not None:
            print(f"wsup: error: {listen_error}", file=sys.stderr)
            return 1
        if _find(exc, KeyboardInterrupt) is not None:
            return 130
        raise
    return 0


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """Return the first ``kind`` inside ``exc`` (task groups wrap errors in groups)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


async def _serve(app: App, config: Any) -> None:
    try:
        await serve(app, config)
    except BaseException as exc:
        if _find(exc, ListenError) is None and _find(exc, KeyboardInterrupt) is None:
            structlog.get_logger("wsup.server").exception("server.crashed")
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
