"""The ``wsup`` command line (also ``python -m supervisor``).

Every option can also come from a ``WSUP_*`` environment variable (the
command line wins): ``WSUP_HOST`` (several hosts separated by commas),
``WSUP_PORT``, ``WSUP_DRAIN_TIMEOUT``, ``WSUP_LOG_FORMAT``, ``WSUP_LOG_LEVEL``,
``WSUP_BACKEND``, ``WSUP_METRICS_PORT``, ``WSUP_OPS_PORT_ONLY``, ``WSUP_OPS_ALLOW``
(networks separated by commas), ``WSUP_SERVER_HEADER``, ``WSUP_MESSAGE_TIMEOUT``
(seconds, or ``off``), ``WSUP_WORKERS``, ``WSUP_REDIS``,
``WSUP_REDIS_OPTIONAL``, ``WSUP_REDIS_NODE_TTL``, ``WSUP_REDIS_PREFIX``,
``WSUP_REUSE_PORT``, ``WSUP_API_PORT``, ``WSUP_API_KEY_FILE``,
``WSUP_MAX_HEADER_BYTES``, ``WSUP_MAX_HEADERS``, and those of
admission control (``WSUP_MAX_HANDSHAKES``, ``WSUP_HANDSHAKE_RATE``...: see
``_admission``) (flags take
``1``/``true``/``yes`` or ``0``/``false``/``no``); ``WSUP_API_KEY`` holds the
server API's key itself.

``wsup send ADDRESS MESSAGE --redis URL`` publishes one message to an address of
a running cluster (see :mod:`supervisor.publisher`).

``--workers N`` (N > 1) makes this process a master that runs N single-process
servers on the same port (see :mod:`supervisor.cli._workers`); ``--redis URL``
joins the cluster through Redis (see :mod:`supervisor.redis`).

Every error is one ``wsup: error: ...`` line on stderr. Exit statuses: 0 after
a graceful stop; 1 when the server cannot run (an address cannot be bound,
Redis is required and unreachable, the app's startup failed); 2 for a usage
error (an unknown option, a bad value, a missing extra, an app that does not
import); 130 on Ctrl-C before the server started. When the app's own code
raised (at import or at startup), its traceback comes first, without wsup's
frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import socket
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.abc
import structlog

from actors import Backplane, CriticalFailure

from .._exceptions import ListenError, RedisUnavailable, StartupError, find_exception
from ..observe._logging import configure_logging
from ..redis import RedisBackplane
from ..server._app import App
from ..server._config import SERVER_HEADERS, ServerConfig
from ..server._server import VERSION, Server, serve
from . import _admission
from ._workers import Master, worker_channel

__all__ = ["CRITICAL_EXIT_STATUS", "load_app", "main"]

CRITICAL_EXIT_STATUS = 3
"""The exit status of ``wsup serve`` after a ``critical`` service or subtree gave up
(1 is a start-up failure, 2 a usage error): a process manager restarts it."""


class UsageError(Exception):
    """A command-line mistake, reported as one line with exit status 2.

    Attributes:
        details: printed before the line (the user's traceback), or empty.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``wsup: error:`` line (exit 2) instead of usage."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the mistake and where help is; exit 2."""
        if "required: command" in message:
            message = "a command is required: wsup serve MODULE:ATTR or wsup send ADDRESS MESSAGE"
        self.exit(2, f"wsup: error: {message} (see '{self.prog} --help')\n")


# Frames of these files are wsup's (or its machinery's), not the user's.
_OUR_DIRS = tuple(
    str(Path(module.__file__).parent) + os.sep
    for module in (
        sys.modules["supervisor"],
        sys.modules["actors"],
        anyio,
        importlib,
    )
    if module.__file__ is not None
)


def _user_traceback(exc: BaseException) -> str:
    """Format ``exc`` like Python does, minus wsup's, anyio's and importlib's frames."""
    formatted = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [formatted]
    while pending:
        te = pending.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        te.stack = traceback.StackSummary.from_list(
            [
                frame
                for frame in te.stack
                if not frame.filename.startswith(_OUR_DIRS)
                and not frame.filename.startswith("<frozen ")
            ]
        )
        pending += [t for t in (te.__cause__, te.__context__) if t is not None]
    return "".join(formatted.format())


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"WSUP_{name}", default)


def _env_number(name: str, default: str, kind: type[int] | type[float]) -> Any:
    raw = _env(name, default)
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"WSUP_{name} must be {what}, got {raw!r}") from None


_OFF = "off"


def _seconds_or_off(text: str) -> float | str:
    """A number of seconds, or ``off``.

    Raises:
        argparse.ArgumentTypeError: neither (argparse names the option).
    """
    if text.strip().lower() == _OFF:
        return _OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds or off, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wsup", description="A WebSocket server in which every connection is an actor."
    )
    parser.add_argument("--version", action="version", version=f"wsup {VERSION}")
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
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /metrics, /healthz, /readyz on this port (WSUP_METRICS_PORT)",
    )
    run.add_argument(
        "--ops-port-only",
        action="store_true",
        default=None,
        help="serve /metrics, /healthz, /readyz only on --metrics-port (or --api-port): "
        "the main port answers them 404 (WSUP_OPS_PORT_ONLY)",
    )
    run.add_argument(
        "--ops-allow",
        metavar="CIDRS",
        default=None,
        help="client networks that may read /metrics, /healthz, /readyz, separated by "
        "commas, e.g. 10.0.0.0/8,127.0.0.1/32; others get 403 (default any; WSUP_OPS_ALLOW)",
    )
    run.add_argument(
        "--server-header",
        choices=SERVER_HEADERS,
        default=None,
        help="the Server header: version (wsup/X.Y.Z), name (wsup) or none "
        "(default name; WSUP_SERVER_HEADER)",
    )
    run.add_argument(
        "--message-timeout",
        type=_seconds_or_off,
        default=None,
        metavar="S",
        help="seconds a client has to finish a frame or message it began, then close 1008; "
        "off: no limit (default 60; WSUP_MESSAGE_TIMEOUT)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        help="seconds to drain on SIGTERM before cancelling (default 30; WSUP_DRAIN_TIMEOUT)",
    )
    run.add_argument(
        "--drain-window",
        type=float,
        default=None,
        help="seconds over which the drain spreads closing connections in batches "
        "(default 10, 0: all at once; WSUP_DRAIN_WINDOW)",
    )
    run.add_argument(
        "--drain-batch-size",
        type=int,
        default=None,
        help="connections closed per batch of the drain (default 1000; WSUP_DRAIN_BATCH_SIZE)",
    )
    run.add_argument(
        "--gc-tuning",
        choices=("on", "off"),
        default=None,
        help="freeze start-up objects and raise the garbage collector's thresholds "
        "while serving (default on; WSUP_GC_TUNING)",
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
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default 1: this process serves; WSUP_WORKERS)",
    )
    run.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="join a cluster through Redis, e.g. redis://127.0.0.1:6379/0 (WSUP_REDIS)",
    )
    run.add_argument(
        "--redis-optional",
        action="store_true",
        default=None,
        help="start even if Redis is unreachable: not ready, local delivery only, "
        "reconnecting (WSUP_REDIS_OPTIONAL)",
    )
    run.add_argument(
        "--redis-node-ttl",
        type=float,
        default=None,
        metavar="S",
        help="seconds before a silent node leaves the cluster's node set "
        "(default 10; WSUP_REDIS_NODE_TTL)",
    )
    run.add_argument(
        "--redis-prefix",
        metavar="P",
        default=None,
        help="namespace of the cluster's Redis channels and keys: apps sharing one Redis "
        "need different ones (default wsup; WSUP_REDIS_PREFIX)",
    )
    run.add_argument(
        "--api-key-file",
        metavar="F",
        default=None,
        help="turn the server API on with the key in this file "
        "(WSUP_API_KEY_FILE; or the key itself in WSUP_API_KEY)",
    )
    run.add_argument(
        "--api-port",
        type=int,
        default=None,
        metavar="N",
        help="serve the server API on this port instead of under /api/ (WSUP_API_PORT)",
    )
    run.add_argument(
        "--max-header-bytes",
        type=int,
        default=None,
        metavar="N",
        help="largest request head in bytes; bigger gets 431 (default 32768; "
        "WSUP_MAX_HEADER_BYTES)",
    )
    run.add_argument(
        "--max-headers",
        type=int,
        default=None,
        metavar="N",
        help="most header fields in a request; more get 431 (default 100; WSUP_MAX_HEADERS)",
    )
    run.add_argument(
        "--reuse-port",
        action="store_true",
        default=None,
        help="set SO_REUSEPORT so several processes share the port (WSUP_REUSE_PORT)",
    )
    _admission.add_arguments(run)
    send = commands.add_parser(
        "send", help="send one message to an address: wsup send ADDRESS MESSAGE --redis URL"
    )
    send.add_argument("address", metavar="ADDRESS", help="e.g. user:42, room:lobby, all")
    send.add_argument(
        "message",
        metavar="MESSAGE",
        help="JSON: '\"hi\"' sends the text hi, '{\"a\": 1}' sends that JSON text",
    )
    send.add_argument(
        "--redis", metavar="URL", default=None, help="the cluster's Redis (WSUP_REDIS)"
    )
    send.add_argument(
        "--redis-prefix",
        metavar="P",
        default=None,
        help="the cluster's prefix (default wsup; WSUP_REDIS_PREFIX)",
    )
    return parser


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _env_flag(name: str) -> bool:
    raw = _env(name, "")
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise UsageError(f"WSUP_{name} must be 1, true, yes, 0, false or no, got {raw!r}")


@dataclass(frozen=True, slots=True)
class _Cluster:
    """The multi-process and cluster options, resolved."""

    workers: int
    redis: str | None
    redis_optional: bool
    node_ttl: float
    reuse_port: bool
    redis_prefix: str


def _cluster_options(args: argparse.Namespace) -> _Cluster:
    workers = args.workers if args.workers is not None else _env_number("WORKERS", "1", int)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    node_ttl = (
        args.redis_node_ttl
        if args.redis_node_ttl is not None
        else _env_number("REDIS_NODE_TTL", "10", float)
    )
    if node_ttl <= 0:
        raise UsageError(f"--redis-node-ttl must be > 0 seconds, got {node_ttl:g}")
    reuse_port = bool(args.reuse_port) or _env_flag("REUSE_PORT") or workers > 1
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("--workers and --reuse-port need SO_REUSEPORT, which this OS lacks")
    return _Cluster(
        workers=workers,
        redis=args.redis or _env("REDIS") or None,
        redis_optional=bool(args.redis_optional) or _env_flag("REDIS_OPTIONAL"),
        node_ttl=node_ttl,
        reuse_port=reuse_port,
        redis_prefix=_redis_prefix(args),
    )


def _redis_prefix(args: argparse.Namespace) -> str:
    prefix: str = args.redis_prefix or _env("REDIS_PREFIX") or "wsup"
    if "\x00" in prefix or not prefix.isprintable() or " " in prefix:
        raise UsageError(f"--redis-prefix must be printable, without spaces, got {prefix!r}")
    return prefix


def _api_key(args: argparse.Namespace) -> str | None:
    """The server API's key: from --api-key-file, WSUP_API_KEY, or WSUP_API_KEY_FILE."""
    path = args.api_key_file
    if path is None and _env("API_KEY"):
        return str(_env("API_KEY")).strip()
    path = path or _env("API_KEY_FILE")
    if not path:
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--api-key-file: cannot read {path}: {reason}") from None
    if not key:
        raise UsageError(f"--api-key-file: {path} is empty")
    return key


def _backplane(cluster: _Cluster) -> Backplane | None:
    if cluster.redis is None:
        return None
    try:
        return RedisBackplane(
            cluster.redis,
            required=not cluster.redis_optional,
            node_ttl=cluster.node_ttl,
            prefix=cluster.redis_prefix,
        )
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(f"--redis: {exc}") from None


def load_app(target: str) -> App:
    """Import ``MODULE:ATTR`` (or ``path/to/file.py:ATTR``) and return the :class:`App`.

    The current directory is importable, as with ``python -m``.

    Raises:
        UsageError: the target is malformed, does not import, or is not an App.
            When the module itself raised (a SyntaxError, an exception at import,
            an import of its own that failed), ``details`` holds its traceback.
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
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_prefix(exc.name, module_name):
            raise _raised_at_import(module_name, exc) from exc
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except FileNotFoundError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {module_name!r}: {exc.strerror or exc}") from exc
    except Exception as exc:  # the module's own code raised: show where
        raise _raised_at_import(module_name, exc) from exc
    app = getattr(module, attr, None)
    if app is None:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise UsageError(f"{target} is a {type(app).__name__}, not a supervisor.App")
    return app


def _is_prefix(missing: str, module_name: str) -> bool:
    """Whether the missing module is ``module_name`` or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _raised_at_import(module_name: str, exc: BaseException) -> UsageError:
    if isinstance(exc, SyntaxError):
        where = f" ({Path(exc.filename or '?').name}, line {exc.lineno})"
        what = f"SyntaxError: {exc.msg}{where}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return UsageError(
        f"cannot import {module_name!r}: {what} (traceback above)", details=_user_traceback(exc)
    )


def _check_backend(backend: str) -> None:
    """Fail with the install command when the chosen backend's package is missing."""
    if backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            raise UsageError(
                "--backend trio needs the trio package: pip install 'wsup[trio]'"
            ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "send":
        return _send(args)
    try:
        # Flags win over WSUP_* variables, which win over the app's own ServerConfig.
        overrides: dict[str, Any] = {}
        if args.host:
            overrides["hosts"] = tuple(args.host)
        elif _env("HOST"):
            overrides["hosts"] = tuple(h.strip() for h in _env("HOST").split(",") if h.strip())
        if args.port is not None:
            overrides["port"] = args.port
        elif _env("PORT") is not None:
            overrides["port"] = _env_number("PORT", "8765", int)
        if args.metrics_port is not None:
            overrides["metrics_port"] = args.metrics_port
        elif _env("METRICS_PORT") is not None:
            overrides["metrics_port"] = _env_number("METRICS_PORT", "0", int)
        if args.ops_port_only or _env_flag("OPS_PORT_ONLY"):
            overrides["ops_port_only"] = True
        ops_allow = args.ops_allow if args.ops_allow is not None else _env("OPS_ALLOW")
        if ops_allow is not None:
            overrides["ops_allow"] = tuple(n.strip() for n in ops_allow.split(",") if n.strip())
        server_header = args.server_header or _env("SERVER_HEADER")
        if server_header is not None:
            if server_header not in SERVER_HEADERS:
                choices = ", ".join(SERVER_HEADERS)
                raise UsageError(f"WSUP_SERVER_HEADER must be {choices}, got {server_header!r}")
            overrides["server_header"] = server_header
        if args.api_port is not None:
            overrides["api_port"] = args.api_port
        elif _env("API_PORT") is not None:
            overrides["api_port"] = _env_number("API_PORT", "0", int)
        api_key = _api_key(args)
        if api_key is not None:
            overrides["api_key"] = api_key
        message_timeout = args.message_timeout
        if message_timeout is None and _env("MESSAGE_TIMEOUT") is not None:
            try:
                message_timeout = _seconds_or_off(_env("MESSAGE_TIMEOUT"))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"WSUP_MESSAGE_TIMEOUT {exc}") from None
        if message_timeout is not None:
            seconds = None if message_timeout == _OFF else message_timeout
            overrides["message_timeout"] = seconds
        if args.drain_timeout is not None:
            overrides["drain_timeout"] = args.drain_timeout
        elif _env("DRAIN_TIMEOUT") is not None:
            overrides["drain_timeout"] = _env_number("DRAIN_TIMEOUT", "30", float)
        if args.drain_window is not None:
            overrides["drain_window"] = args.drain_window
        elif _env("DRAIN_WINDOW") is not None:
            overrides["drain_window"] = _env_number("DRAIN_WINDOW", "10", float)
        if args.drain_batch_size is not None:
            overrides["drain_batch_size"] = args.drain_batch_size
        elif _env("DRAIN_BATCH_SIZE") is not None:
            overrides["drain_batch_size"] = _env_number("DRAIN_BATCH_SIZE", "1000", int)
        gc_tuning = args.gc_tuning or _env("GC_TUNING")
        if gc_tuning is not None:
            if gc_tuning not in ("on", "off"):
                raise UsageError(f"WSUP_GC_TUNING must be on or off, got {gc_tuning!r}")
            overrides["gc_tuning"] = gc_tuning == "on"
        try:
            overrides.update(_admission.overrides(args))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        for name in ("max_header_bytes", "max_headers"):
            value = getattr(args, name)
            if value is None and _env(name.upper()) is not None:
                value = _env_number(name.upper(), "0", int)
            if value is not None:
                overrides[name] = value
        log_format = args.log_format or _env("LOG_FORMAT")
        if log_format not in (None, "json", "console"):
            raise UsageError(f"WSUP_LOG_FORMAT must be json or console, got {log_format!r}")
        level = args.log_level or _env("LOG_LEVEL", "info")
        backend = args.backend or _env("BACKEND", "asyncio")
        if backend not in ("asyncio", "trio"):
            raise UsageError(f"WSUP_BACKEND must be asyncio or trio, got {backend!r}")
        _check_backend(backend)
        cluster = _cluster_options(args)
        # A worker's lines say which worker wrote them (see _workers.Master).
        worker_index = os.environ.get("WSUP_WORKER_INDEX")
        context = {"worker": int(worker_index)} if worker_index else None
        try:
            configure_logging(log_format, level, context)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        app = load_app(args.app)
        try:
            if "message_timeout" in overrides:
                seconds = overrides.pop("message_timeout")
                keepalive = dataclasses.replace(app.config.keepalive, message_timeout=seconds)
                overrides["keepalive"] = keepalive
            config = dataclasses.replace(app.config, **overrides)
            if config.gc_tuning is None:
                # This process serves one server and nothing else: tune it.
                config = dataclasses.replace(config, gc_tuning=True)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        port = config.port
        if cluster.reuse_port:
            config = dataclasses.replace(config, reuse_port=True)
        if cluster.workers > 1 and port == 0:
            raise UsageError("--workers needs a fixed --port (port 0 differs per process)")
        backplane = _backplane(cluster)
    except (UsageError, ValueError) as exc:
        if isinstance(exc, UsageError) and exc.details:
            print(exc.details, end="", file=sys.stderr)
        print(f"wsup: error: {exc}", file=sys.stderr)
        return 2
    if cluster.workers > 1:
        return _run_workers(args.app, config, cluster, log_format, level, backend)
    options: dict[str, Any] = {}
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401

            options["use_uvloop"] = True
        except ImportError:
            pass
    try:
        anyio.run(_serve, app, config, backplane, backend=backend, backend_options=options)
    except BaseException as exc:
        listen_error = find_exception(exc, ListenError) or find_exception(exc, RedisUnavailable)
        if isinstance(listen_error, RedisUnavailable):
            hint = "start Redis, fix --redis, or pass --redis-optional to start without it"
            print(f"wsup: error: {listen_error} ({hint})", file=sys.stderr)
            return 1
        if listen_error is not None:
            print(f"wsup: error: {listen_error}", file=sys.stderr)
            return 1
        startup_error = find_exception(exc, StartupError)
        if startup_error is not None:
            if startup_error.__cause__ is not None:
                print(_user_traceback(startup_error.__cause__), end="", file=sys.stderr)
            print(f"wsup: error: {startup_error} (traceback above)", file=sys.stderr)
            return 1
        if find_exception(exc, KeyboardInterrupt) is not None:
            return 130
        critical = find_exception(exc, CriticalFailure)
        if critical is not None:
            # Logged already (server.critical_failure); the status tells the process manager.
            print(f"wsup: error: {critical}", file=sys.stderr)
            return CRITICAL_EXIT_STATUS
        raise
    return 0


async def _serve(app: App, config: ServerConfig, backplane: Backplane | None = None) -> None:
    try:
        async with anyio.create_task_group() as tg:

            async def run(*, task_status: anyio.abc.TaskStatus[Server]) -> None:
                await serve(app, config, backplane=backplane, task_status=task_status)
                tg.cancel_scope.cancel()  # the helpers below end with the server

            server = await tg.start(run)
            if server.metrics.multiprocess_dir is not None:
                tg.start_soon(_refresh_metrics, server)
            channel = worker_channel()
            if channel is not None:
                tg.start_soon(_talk_to_master, channel, server)
    except BaseException as exc:
        expected = (ListenError, RedisUnavailable, StartupError, KeyboardInterrupt, CriticalFailure)
        if not any(find_exception(exc, kind) for kind in expected):
            structlog.get_logger("wsup.server").exception("server.crashed")
        raise


_METRICS_REFRESH = 2.0
"""Seconds between writes of a worker's computed gauges for the other workers' scrapes."""


async def _refresh_metrics(server: Server) -> None:
    while True:
        server.metrics.refresh()
        await anyio.sleep(_METRICS_REFRESH)


async def _talk_to_master(channel: socket.socket, server: Server) -> None:
    """Tell the master this worker serves; drain if the master goes away."""
    with channel:
        channel.send(b"ready\n")  # a few bytes into an empty socket buffer: never blocks
        while True:
            await anyio.wait_readable(channel)
            try:
                data = channel.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
    structlog.get_logger("wsup.workers").warning("worker.orphaned")
    await server.shutdown()


def _run_workers(
    target: str,
    config: ServerConfig,
    cluster: _Cluster,
    log_format: str | None,
    level: str,
    backend: str,
) -> int:
    """Run as the master of ``cluster.workers`` single-process servers on one port."""
    command = [sys.executable, "-m", "supervisor", "serve", target, "--workers", "1"]
    command += ["--reuse-port", "--port", str(config.port)]
    command += ["--drain-timeout", repr(config.drain_timeout), "--log-level", level]
    command += ["--drain-window", repr(config.drain_window)]
    command += ["--drain-batch-size", str(config.drain_batch_size)]
    command += ["--gc-tuning", "on" if config.gc_tuning else "off"]
    command += _admission.as_flags(config)
    command += ["--backend", backend, "--redis-node-ttl", repr(cluster.node_ttl)]
    for host in config.hosts:
        command += ["--host", host]
    if config.metrics_port is not None:
        command += ["--metrics-port", str(config.metrics_port)]
    if config.ops_port_only:
        command.append("--ops-port-only")
    if config.ops_allow is not None:
        command += ["--ops-allow", ",".join(config.ops_allow)]
    command += ["--server-header", config.server_header]
    message_timeout = config.keepalive.message_timeout
    command += ["--message-timeout", _OFF if message_timeout is None else repr(message_timeout)]
    if log_format is not None:
        command += ["--log-format", log_format]
    if cluster.redis_optional:
        command.append("--redis-optional")
    command += ["--redis-prefix", cluster.redis_prefix]
    if config.api_port is not None:
        command += ["--api-port", str(config.api_port)]
    env: dict[str, str] = {}
    if config.api_key is not None:
        env["WSUP_API_KEY"] = config.api_key  # a secret: never on a command line
    if cluster.redis is not None:
        # In the environment, not on the command line: a URL may hold a password.
        env["WSUP_REDIS"] = cluster.redis
    else:
        structlog.get_logger("wsup.workers").warning(
            "workers.backplane_missing",
            detail="without --redis, connections on different workers cannot reach each other",
        )
    master = Master(
        command, cluster.workers, env=env, metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    )
    return master.run()


def _send(args: argparse.Namespace) -> int:
    """``wsup send``: publish one message through the cluster's Redis."""
    from ..publisher import Publisher

    url = args.redis or _env("REDIS")
    try:
        if not url:
            raise UsageError("wsup send needs the cluster's Redis: --redis URL (or WSUP_REDIS)")
        try:
            message = json.loads(args.message)
        except ValueError as exc:
            raise UsageError(f"MESSAGE must be JSON ('\"hi\"' for the text hi): {exc}") from None
        prefix = _redis_prefix(args)
        try:
            publisher = Publisher(url, prefix=prefix)
        except ImportError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:
            raise UsageError(f"--redis: {exc}") from None
    except UsageError as exc:
        print(f"wsup: error: {exc}", file=sys.stderr)
        return 2
    from redis.exceptions import RedisError

    try:
        with publisher:
            nodes = publisher.send(args.address, message)
    except (RedisError, OSError) as exc:
        print(f"wsup: error: cannot reach Redis at {publisher.display_url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"address": args.address, "nodes": nodes}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
