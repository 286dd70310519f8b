"""The ``wsup`` command line, run as a child process: help, errors, WSUP_* variables, JSON logs.

Every test runs the real command (``wsup`` or ``python -m supervisor``) from the
repository root with a clean ``WSUP_*`` environment, on free loopback ports,
with bounded timeouts; servers are always killed at the end.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from supervisor import Rate, ServerConfig, cli
from supervisor.cli import _admission
from tests.e2e.apps.server_process import STARTUP_TIMEOUT, ServerProcess, free_port, run_cli

WSUP = str(Path(sys.executable).with_name("wsup"))
ECHO = "examples.echo:app"


def one_error_line(stderr: str) -> str:
    """Assert that ``stderr`` is a single ``wsup: error:`` line without a traceback; return it."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("wsup: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def ipv6_loopback() -> bool:
    """Whether ``::1`` can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def healthz(port: int, host: str = "127.0.0.1") -> int:
    """Return the status of ``GET /healthz``."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


# --- help -----------------------------------------------------------------------------


def test_wsup_help_lists_the_serve_command() -> None:
    """``wsup --help`` exits 0 and names the ``serve`` command."""
    result = run_cli("--help", command=[WSUP])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: wsup ")
    assert "serve" in result.stdout
    assert result.stderr == ""


def test_serve_help_lists_every_option() -> None:
    """``wsup serve --help`` documents every option and its WSUP_* variable."""
    result = run_cli("serve", "--help", command=[WSUP])
    assert result.returncode == 0, result.stderr
    for option in (
        "MODULE:ATTR",
        "--host",
        "--port",
        "--drain-timeout",
        "--drain-window",
        "--drain-batch-size",
        "--log-format",
        "--log-level",
        "--backend",
    ):
        assert option in result.stdout
    for variable in (
        "WSUP_HOST",
        "WSUP_PORT",
        "WSUP_DRAIN_TIMEOUT",
        "WSUP_DRAIN_WINDOW",
        "WSUP_DRAIN_BATCH_SIZE",
        "WSUP_LOG_FORMAT",
    ):
        assert variable in result.stdout


@pytest.mark.parametrize(
    "args",
    [["--help"], ["serve", "--help"], ["serve", "examples.echo:nothing"], []],
    ids=["help", "serve-help", "bad-target", "no-command"],
)
def test_python_m_supervisor_is_the_wsup_command(args: list[str]) -> None:
    """``python -m supervisor`` prints and exits exactly like ``wsup``."""
    script = run_cli(*args, command=[WSUP])
    module = run_cli(*args)
    assert (module.returncode, module.stdout, module.stderr) == (
        script.returncode,
        script.stdout,
        script.stderr,
    )


def test_no_command_is_a_usage_error() -> None:
    """``wsup`` without a command says so in one line and exits 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "a command is required" in one_error_line(result.stderr)
    assert result.stdout == ""


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("examples.echo", "expected MODULE:ATTR"),
        (":app", "expected MODULE:ATTR"),
        ("no_such_module_for_wsup:app", "cannot import 'no_such_module_for_wsup'"),
        ("examples.echo:missing", "has no attribute 'missing'"),
        ("examples.echo:Echo", "not a supervisor.App"),
        ("examples/no_such_file.py:app", "cannot import"),
    ],
)
def test_bad_target_is_one_line_and_exit_2(target: str, expected: str) -> None:
    """A MODULE:ATTR that is malformed, missing or not an App: one line on stderr, exit 2."""
    result = run_cli("serve", target, "--port", str(free_port()))
    assert result.returncode == 2
    assert expected in one_error_line(result.stderr)
    assert result.stdout == ""


def test_a_file_path_target_is_served() -> None:
    """``path/to/file.py:ATTR`` works like ``module:ATTR``."""
    with ServerProcess("examples/echo.py:app") as server:
        started = server.wait_started()
        assert started["routes"] == ["/echo"]
        assert healthz(server.port) == 200
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


def test_port_in_use_is_one_line_naming_address_and_fix() -> None:
    """A port already in use: one line naming the address and the fix, no traceback, exit 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", ECHO, "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "--port" in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WSUP_LOG_FORMAT": "xml"}, "WSUP_LOG_FORMAT must be json or console, got 'xml'"),
        ({"WSUP_LOG_LEVEL": "loud"}, "unknown log level 'loud'"),
        ({"WSUP_BACKEND": "curio"}, "WSUP_BACKEND must be asyncio or trio, got 'curio'"),
        ({"WSUP_DRAIN_TIMEOUT": "0"}, "drain_timeout must be > 0"),
        ({"WSUP_DRAIN_WINDOW": "-1"}, "drain_window must be >= 0 seconds"),
        ({"WSUP_DRAIN_BATCH_SIZE": "0"}, "drain_batch_size must be >= 1"),
        ({"WSUP_MAX_HEADERS": "0"}, "max_headers must be >= 1"),
        ({"WSUP_MAX_HEADER_BYTES": "100"}, "max_header_bytes must be >= 1024 bytes"),
    ],
    ids=[
        "log-format",
        "log-level",
        "backend",
        "drain-timeout",
        "drain-window",
        "drain-batch",
        "max-headers",
        "max-header-bytes",
    ],
)
def test_invalid_environment_value_is_exit_2(env: dict[str, str], expected: str) -> None:
    """An invalid WSUP_* value: one clear line, exit 2, nothing served."""
    result = run_cli("serve", ECHO, "--port", str(free_port()), env=env)
    assert result.returncode == 2
    assert expected in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "variable",
    [
        "WSUP_PORT",
        "WSUP_DRAIN_TIMEOUT",
        "WSUP_DRAIN_WINDOW",
        "WSUP_DRAIN_BATCH_SIZE",
        "WSUP_MAX_HEADERS",
        "WSUP_MAX_HEADER_BYTES",
    ],
)
def test_non_numeric_environment_value_names_the_variable(variable: str) -> None:
    """A non-numeric number variable (WSUP_PORT, WSUP_DRAIN_*) is reported by its name."""
    result = run_cli("serve", ECHO, env={variable: "abc"})
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert variable in line
    assert "'abc'" in line


def test_invalid_option_value_is_a_usage_error() -> None:
    """``--log-format xml`` and ``--port abc`` are refused by the parser: one line, exit 2."""
    for args in (["--log-format", "xml"], ["--port", "abc"], ["--backend", "curio"]):
        result = run_cli("serve", ECHO, *args)
        assert result.returncode == 2, args
        line = one_error_line(result.stderr)
        assert "invalid" in line
        assert "wsup serve --help" in line


# --- environment and command line -----------------------------------------------------


def test_wsup_environment_variables_are_honoured() -> None:
    """WSUP_PORT, WSUP_HOST, WSUP_DRAIN_TIMEOUT, WSUP_DRAIN_WINDOW, WSUP_BACKEND and
    WSUP_LOG_FORMAT apply."""
    port = free_port()
    env = {
        "WSUP_PORT": str(port),
        "WSUP_HOST": "127.0.0.1",
        "WSUP_DRAIN_TIMEOUT": "7.5",
        "WSUP_DRAIN_WINDOW": "2.5",
        "WSUP_BACKEND": "trio",
        "WSUP_LOG_FORMAT": "json",
    }
    with ServerProcess(ECHO, port=port, port_option=False, env=env, log_format=None) as server:
        started = server.wait_started()
        assert started["listen"] == [f"127.0.0.1:{port}"]
        assert started["backend"] == "trio"
        assert healthz(port) == 200
        server.signal(signal.SIGTERM)
        started = server.wait_for_event("server.drain_started")
        assert (started["timeout"], started["window"]) == (7.5, 2.5)
        assert server.wait(20) == 0


def test_the_head_limits_come_from_the_environment_and_the_command_line() -> None:
    """WSUP_MAX_HEADERS applies; --max-header-bytes wins over WSUP_MAX_HEADER_BYTES."""
    port = free_port()
    env = {"WSUP_MAX_HEADERS": "8", "WSUP_MAX_HEADER_BYTES": "65536"}
    with ServerProcess(ECHO, "--max-header-bytes", "2048", port=port, env=env) as server:
        server.wait_started()

        def status(headers: list[bytes]) -> bytes:
            head = b"\r\n".join([b"GET /echo HTTP/1.1", b"Host: x", *headers]) + b"\r\n\r\n"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                return sock.recv(4096).split(b"\r\n", 1)[0]

        assert (
            status([b"X-%d: v" % n for n in range(8)])
            == b"HTTP/1.1 431 Request Header Fields Too Large"
        )
        assert status([b"X: " + b"a" * 2100]) == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert status([b"X: " + b"a" * 1900]) == b"HTTP/1.1 426 Upgrade Required"
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


def test_command_line_wins_over_the_environment() -> None:
    """--port, --host, --drain-timeout, --backend and --log-format override WSUP_*."""
    env_port, port = free_port(), free_port()
    env = {
        "WSUP_PORT": str(env_port),
        "WSUP_HOST": "::1",
        "WSUP_DRAIN_TIMEOUT": "7.5",
        "WSUP_DRAIN_WINDOW": "2.5",
        "WSUP_BACKEND": "trio",
        "WSUP_LOG_FORMAT": "console",
        "WSUP_LOG_LEVEL": "error",
    }
    args = ["--host", "127.0.0.1", "--drain-timeout", "3", "--backend", "asyncio"]
    args += ["--log-level", "info", "--drain-window", "0"]
    with ServerProcess(ECHO, *args, port=port, env=env) as server:
        started = server.wait_started()
        assert started["listen"] == [f"127.0.0.1:{port}"]
        assert started["backend"].startswith("asyncio")
        assert healthz(port) == 200
        server.signal(signal.SIGTERM)
        started = server.wait_for_event("server.drain_started")
        assert (started["timeout"], started["window"]) == (3.0, 0.0)
        assert server.wait(20) == 0


def get(port: int, path: str) -> tuple[int, str | None]:
    """Return the status and the ``Server`` header of ``GET path``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Server")
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["options", "variables"])
def test_ops_endpoints_off_the_main_port_for_listed_networks(how: str) -> None:
    """--ops-port-only, --ops-allow and --server-header (or their WSUP_* variables):
    the main port answers /healthz 404, the metrics port 403 outside the networks."""
    port, metrics_port = free_port(), free_port()
    settings = {
        "ops-port-only": "1",
        "ops-allow": "10.0.0.0/8",
        "server-header": "none",
        "metrics-port": str(metrics_port),
    }
    if how == "options":
        args = ["--ops-port-only", "--ops-allow", "10.0.0.0/8", "--server-header", "none"]
        args += ["--metrics-port", str(metrics_port)]
        env = {}
    else:
        args = []
        env = {f"WSUP_{name.replace('-', '_').upper()}": value for name, value in settings.items()}
    with ServerProcess(ECHO, *args, port=port, env=env) as server:
        server.wait_started()
        assert get(port, "/healthz") == (404, None)
        assert get(port, "/nowhere") == (404, None)
        assert get(metrics_port, "/healthz") == (403, None)
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0
    with ServerProcess(ECHO, "--ops-allow", "127.0.0.1/32,10.0.0.0/8", port=port) as server:
        server.wait_started()
        assert get(port, "/healthz") == (200, "wsup")
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


@pytest.mark.parametrize("how", ["options", "variables"])
def test_message_timeout_from_the_command_line(how: str) -> None:
    """--message-timeout (or WSUP_MESSAGE_TIMEOUT): a message left unfinished is closed
    with 1008 once it is that old."""
    port = free_port()
    args = ["--message-timeout", "0.5"] if how == "options" else []
    env = {"WSUP_MESSAGE_TIMEOUT": "0.5"} if how == "variables" else {}
    with ServerProcess(ECHO, *args, port=port, env=env) as server:
        server.wait_started()
        with connect(server.url("/echo"), open_timeout=20, proxy=None) as ws:
            with ws.protocol_mutex:  # the first fragment of a message, never the rest
                ws.protocol.send_text(b"begun", fin=False)
                ws.send_data()
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=20)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1008,
            "message not finished within 0.5 s",
        )
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_wsup_host_takes_several_hosts() -> None:
    """WSUP_HOST="127.0.0.1,::1" listens on both addresses."""
    port = free_port()
    with ServerProcess(ECHO, port=port, env={"WSUP_HOST": "127.0.0.1, ::1"}) as server:
        started = server.wait_started()
        assert started["listen"] == [f"127.0.0.1:{port}", f"::1:{port}"]
        assert healthz(port) == 200
        assert healthz(port, "::1") == 200
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


# --- JSON logs -------------------------------------------------------------------------


def test_json_log_lines_carry_the_lifecycle_events() -> None:
    """--log-format json: each stderr line is a JSON event; the lifecycle events are all there."""
    with ServerProcess(ECHO) as server:
        started = server.wait_started()
        assert started["level"] == "info"
        assert started["routes"] == ["/echo"]
        with connect(server.url("/echo"), open_timeout=20, ping_interval=None) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
            ws.send(b"\x01\x02\x03")
            assert ws.recv(timeout=10) == b"\x01\x02\x03"
        closed = server.wait_for_event("connection.closed")
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0

    assert server.lines, "no log at all"
    records = [json.loads(line) for line in server.lines]  # every line is JSON
    assert all(isinstance(r, dict) and isinstance(r.get("event"), str) for r in records)
    assert all({"level", "timestamp", "logger"} <= r.keys() for r in records)
    assert "debug" not in {r["level"] for r in records}  # info is the default level
    events = [r["event"] for r in records]
    for name in (
        "server.started",
        "connection.closed",
        "server.drain_started",
        "server.drain_completed",
        "server.stopped",
    ):
        assert name in events
    assert events.index("server.started") < events.index("connection.closed")
    assert events.index("server.drain_started") < events.index("server.drain_completed")

    assert closed["code"] == 1000
    assert closed["reason"] == ""
    assert closed["initiator"] == "client"
    assert closed["path"] == "/echo"
    assert isinstance(closed["duration"], float | int)
    assert closed["duration"] >= 0
    assert (closed["messages_in"], closed["messages_out"]) == (2, 2)
    assert closed["bytes_in"] > closed["bytes_out"] > 0  # client frames carry a mask
    assert closed["conn"].startswith("conn:")
    completed = server.events("server.drain_completed")[0]
    assert completed["cancelled"] == 0


def test_console_log_format_is_not_json() -> None:
    """--log-format console writes human-readable lines, not JSON."""
    with ServerProcess(ECHO, log_format="console") as server:
        server.wait_for_line("server.started", timeout=STARTUP_TIMEOUT)
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0
    assert server.records == []
    assert any("server.drain_completed" in line for line in server.lines)


def test_log_level_debug_adds_connection_opened() -> None:
    """--log-level debug also logs DEBUG lines such as connection.opened."""
    with ServerProcess(ECHO, "--log-level", "debug") as server:
        server.wait_started()
        with connect(server.url("/echo"), open_timeout=20, ping_interval=None) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
        opened = server.wait_for_event("connection.opened")
        assert opened["level"] == "debug"
        assert opened["path"] == "/echo"
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


# --- admission control ----------------------------------------------------------------


def test_admission_flags_win_over_variables_and_read_back_from_worker_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each admission option reads from its flag, else its WSUP_* variable; ``off``
    lifts a limit; the flags a master gives its workers read back to the same settings."""
    monkeypatch.setenv("WSUP_MAX_HANDSHAKES", "64")
    monkeypatch.setenv("WSUP_HANDSHAKE_RATE", "1")
    monkeypatch.setenv("WSUP_READINESS_LOOP_LAG", "0.5")
    args = cli._parser().parse_args(
        [
            "serve",
            ECHO,
            "--handshake-rate",
            "500/1000",
            "--accept-rate",
            "2000",
            "--max-connections-per-address",
            "8",
            "--handshake-rate-per-address",
            "off",
        ]
    )
    found = _admission.overrides(args)
    assert found == {
        "max_handshakes": 64,
        "max_connections_per_address": 8,
        "accept_rate": Rate(2000),
        "handshake_rate": Rate(500, burst=1000),
        "handshake_rate_per_address": None,
        "readiness_loop_lag": 0.5,
    }
    config = ServerConfig(**found)
    monkeypatch.delenv("WSUP_MAX_HANDSHAKES")
    monkeypatch.delenv("WSUP_HANDSHAKE_RATE")
    monkeypatch.delenv("WSUP_READINESS_LOOP_LAG")
    again = _admission.overrides(
        cli._parser().parse_args(["serve", ECHO, *_admission.as_flags(config)])
    )
    assert ServerConfig(**again) == config


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--handshake-rate", "fast"],
            {},
            "--handshake-rate must be PER_SECOND or PER_SECOND/BURST",
        ),
        ([], {"WSUP_ACCEPT_RATE": "0"}, "WSUP_ACCEPT_RATE must be PER_SECOND"),
        (["--max-handshakes", "many"], {}, "--max-handshakes must be a whole number"),
        ([], {"WSUP_MAX_CONNECTIONS_PER_ADDRESS": "0"}, "max_connections_per_address must be >= 1"),
        (["--readiness-loop-lag", "x"], {}, "--readiness-loop-lag must be a number of seconds"),
    ],
    ids=["rate", "rate-zero", "count", "count-zero", "seconds"],
)
def test_a_bad_admission_value_is_one_line_naming_it(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli("serve", ECHO, "--port", str(free_port()), *args, env=env)
    assert result.returncode == 2
    assert expected in one_error_line(result.stderr)


def test_the_admission_limits_in_force_are_logged_at_start() -> None:
    """``server.started`` lists the limits a command line and the environment set."""
    port = free_port()
    env = {"WSUP_MAX_HANDSHAKES": "100"}
    args = ["--handshake-rate-per-address", "5/10", "--log-format", "json"]
    with ServerProcess(ECHO, *args, port=port, env=env, log_format=None) as server:
        started = server.wait_started()
        assert started["admission"] == {
            "max_connections": 100_000,
            "max_handshakes": 100,
            "handshake_rate_per_address": "5/10",
        }
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


@pytest.mark.parametrize(
    ("args", "env", "tuned"),
    [([], {}, True), (["--gc-tuning", "off"], {}, False), ([], {"WSUP_GC_TUNING": "off"}, False)],
    ids=["default", "flag-off", "variable-off"],
)
def test_wsup_serve_tunes_the_garbage_collector_unless_told_not_to(
    args: list[str], env: dict[str, str], tuned: bool
) -> None:
    """``server.started`` shows the collector's tuning, on by default under ``wsup serve``."""
    port = free_port()
    with ServerProcess(
        ECHO, *args, "--log-format", "json", port=port, env=env, log_format=None
    ) as server:
        started = server.wait_started()
        if tuned:
            assert started["gc"]["threshold"] == [10_000, 4, 25]
            assert started["gc"]["frozen"] > 1000  # the imports and the app, at least
        else:
            assert started["gc"] is None
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


def test_a_bad_gc_tuning_value_is_a_usage_error() -> None:
    result = run_cli("serve", ECHO, "--port", str(free_port()), env={"WSUP_GC_TUNING": "yes"})
    assert result.returncode == 2
    assert "WSUP_GC_TUNING must be on or off" in one_error_line(result.stderr)
