"""Every way ``wsup`` can fail before or while starting, run as a child process.

Each error is one ``wsup: error:`` line with a documented exit status: 2 for a
usage error (bad option or value, missing extra, an app that does not import),
1 when the server cannot run (port in use, the app's startup failed). When the
app's own code raised, its traceback comes first, without wsup's frames. Also
``wsup --version`` and what the log lines of a running server carry.
"""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import sys
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.e2e.apps.server_process import ServerProcess, free_port, run_cli

WSUP = str(Path(sys.executable).with_name("wsup"))
ECHO = "examples.echo:app"


def last_line_is_the_error(stderr: str) -> str:
    """Assert that exactly one ``wsup: error:`` line ends ``stderr``; return it."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("wsup: error: ")]
    assert errors == [lines[-1]], stderr
    return lines[-1]


def only_the_error(stderr: str) -> str:
    """Assert that ``stderr`` is one ``wsup: error:`` line and nothing else; return it."""
    assert len(stderr.strip().splitlines()) == 1, stderr
    return last_line_is_the_error(stderr)


def assert_no_frames_of_wsup(stderr: str) -> None:
    """The traceback shown is the user's: no frame of wsup, anyio or importlib."""
    for ours in (
        "supervisor/cli/__init__.py",
        "supervisor/server/_server.py",
        "anyio",
        "importlib",
    ):
        assert ours not in stderr, stderr


def hiding(tmp_path: Path, package: str) -> dict[str, str]:
    """An environment in which ``import package`` fails, as when it is not installed."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(f"import sys\nsys.modules[{package!r}] = None\n")
    return {"PYTHONPATH": str(shim)}


def write_app(tmp_path: Path, source: str) -> str:
    """Write an app module; return its ``path.py:app`` target."""
    path = tmp_path / "user_app.py"
    path.write_text(source)
    return f"{path}:app"


# --- version ------------------------------------------------------------------------------


def test_version_prints_the_installed_package_version() -> None:
    """``wsup --version`` prints ``wsup X.Y.Z`` from the package metadata and exits 0."""
    result = run_cli("--version", command=[WSUP])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wsup {importlib.metadata.version('wsup')}\n"


# --- usage errors: exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "abc"], "argument --port: invalid int value: 'abc'"),
        (["--workers", "many"], "argument --workers: invalid int value: 'many'"),
        (["--drain-timeout", "soon"], "argument --drain-timeout: invalid float value: 'soon'"),
        (["--drain-timeout", "nan"], "drain_timeout must be > 0 seconds"),
        (["--drain-window", "nan"], "drain_window must be >= 0 seconds"),
        (["--drain-window", "inf"], "drain_window must be >= 0 seconds"),
        (["--drain-batch-size", "0"], "drain_batch_size must be >= 1"),
        (["--drain-batch-size", "ten"], "argument --drain-batch-size: invalid int value: 'ten'"),
        (["--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
        (["--backend", "curio"], "argument --backend: invalid choice: 'curio'"),
        (["--metrics-port", "70000"], "metrics_port must be in 0..65535, got 70000"),
        (["--port", "9100", "--metrics-port", "9100"], "metrics_port must differ from port"),
        (["--ops-port-only"], "ops_port_only needs metrics_port (or api_port)"),
        (["--ops-allow", "10.0.0.1/8"], "invalid ops_allow network '10.0.0.1/8'"),
        (["--ops-allow", ","], "ops_allow must name at least one network"),
        (["--server-header", "full"], "argument --server-header: invalid choice: 'full'"),
        (["--message-timeout", "soon"], "argument --message-timeout: must be seconds or off"),
        (["--message-timeout", "0"], "message_timeout must be > 0 or None"),
        (["--redis", "not-a-url"], "--redis: Redis URL must specify one of"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_option_values_are_one_line_and_exit_2(args: list[str], expected: str) -> None:
    """A bad flag value is one ``wsup: error:`` line (pointing at --help), exit 2."""
    result = run_cli("serve", ECHO, *args, command=[WSUP])
    assert result.returncode == 2
    assert expected in only_the_error(result.stderr)
    assert result.stdout == ""


def test_no_command_is_one_line_and_exit_2() -> None:
    """``wsup`` alone says a command is required, in one line, exit 2."""
    result = run_cli(command=[WSUP])
    assert result.returncode == 2
    line = only_the_error(result.stderr)
    assert "a command is required: wsup serve MODULE:ATTR" in line
    assert "wsup --help" in line


@pytest.mark.parametrize(
    ("package", "args", "fix"),
    [
        ("trio", ["--backend", "trio"], "pip install 'wsup[trio]'"),
        ("redis", ["--redis", "redis://127.0.0.1:6379/0"], "pip install 'wsup[redis]'"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_install_command(
    tmp_path: Path, package: str, args: list[str], fix: str
) -> None:
    """``--backend trio`` without trio, ``--redis`` without redis: the pip command, exit 2."""
    result = run_cli(
        "serve", ECHO, "--port", str(free_port()), *args, env=hiding(tmp_path, package)
    )
    assert result.returncode == 2
    assert fix in only_the_error(result.stderr)


def test_an_app_with_a_syntax_error_shows_where_and_exits_2(tmp_path: Path) -> None:
    """A SyntaxError in the app: Python's pointer at the user's line, one error line, exit 2."""
    target = write_app(tmp_path, "from supervisor import App\napp = App(\n")
    result = run_cli("serve", target, command=[WSUP])
    assert result.returncode == 2
    line = last_line_is_the_error(result.stderr)
    assert "SyntaxError: '(' was never closed (user_app.py, line 2)" in line
    assert f'File "{tmp_path / "user_app.py"}", line 2' in result.stderr
    assert_no_frames_of_wsup(result.stderr)


def test_an_app_that_raises_at_import_shows_its_traceback_and_exits_2(tmp_path: Path) -> None:
    """An app raising at import: the user's traceback, then one error line, exit 2."""
    source = 'import json\nSETTINGS = json.loads("{oops")\napp = None\n'
    target = write_app(tmp_path, source)
    result = run_cli("serve", target, command=[WSUP])
    assert result.returncode == 2
    line = last_line_is_the_error(result.stderr)
    assert "cannot import" in line
    assert "JSONDecodeError" in line
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert 'SETTINGS = json.loads("{oops")' in result.stderr
    assert_no_frames_of_wsup(result.stderr)


def test_an_app_importing_a_missing_package_shows_the_import_line(tmp_path: Path) -> None:
    """A failed import inside the app is the app's error, shown with its line, exit 2."""
    target = write_app(tmp_path, "import no_such_package_for_wsup_tests\n")
    result = run_cli("serve", target, command=[WSUP])
    assert result.returncode == 2
    assert "No module named 'no_such_package_for_wsup_tests'" in last_line_is_the_error(
        result.stderr
    )
    assert "import no_such_package_for_wsup_tests" in result.stderr
    assert_no_frames_of_wsup(result.stderr)


def test_an_unreadable_app_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A ``path.py`` target that cannot be read (here, a directory): one line, exit 2."""
    (tmp_path / "folder.py").mkdir()
    result = run_cli("serve", f"{tmp_path / 'folder.py'}:app", command=[WSUP])
    assert result.returncode == 2
    assert "cannot read" in only_the_error(result.stderr)


# --- the server cannot run: exit 1 --------------------------------------------------------


STARTUP_FAILS = """\
from supervisor import App

app = App()


@app.on_startup.append
def open_database(app):
    raise ConnectionRefusedError("database at db.internal:5432 refused the connection")
"""


def test_an_app_whose_startup_fails_shows_its_traceback_and_exits_1(tmp_path: Path) -> None:
    """An on_startup hook that raises: its traceback, one line naming the hook, exit 1."""
    target = write_app(tmp_path, STARTUP_FAILS)
    result = run_cli("serve", target, "--port", str(free_port()), "--log-format", "json")
    assert result.returncode == 1
    line = last_line_is_the_error(result.stderr)
    assert "app startup failed: on_startup hook open_database raised ConnectionRefusedError" in (
        line
    )
    assert 'raise ConnectionRefusedError("database at db.internal:5432' in result.stderr
    assert "server.crashed" not in result.stderr
    assert_no_frames_of_wsup(result.stderr)


def test_a_port_in_use_with_workers_is_one_error_line_and_exit_1() -> None:
    """``--workers 2`` on a busy port: the first worker's one line, then the master exits 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve", ECHO, "--port", str(port), "--workers", "2", "--log-format", "json"
        )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("wsup: error: ")]
    assert len(errors) == 1, result.stderr
    assert f"127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in result.stderr


# --- what the log lines carry ----------------------------------------------------------------


def test_a_handshake_refused_by_the_app_is_logged_at_info() -> None:
    """The chat's hook refusing a client without ``?user`` writes ``handshake.rejected``."""
    with ServerProcess("examples.chat:app", "--log-level", "info") as server:
        server.wait_started()
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url("/chat/lobby"), open_timeout=20, proxy=None)
        assert refused.value.response.status_code == 400
        line = server.wait_for_event("handshake.rejected")
        assert (line["level"], line["reason"], line["status"]) == ("info", "hook", 400)
        assert (line["path"], line["client"]) == ("/chat/lobby", "127.0.0.1")
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0


def test_every_line_of_a_worker_names_the_worker() -> None:
    """With ``--workers 2``, each worker's lines carry ``worker``: 0 and 1."""
    with ServerProcess(ECHO, "--workers", "2") as server:
        server.wait_started("workers.started")
        started = server.events("server.started")
        assert sorted(line["worker"] for line in started) == [0, 1]
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
    stopped = server.events("server.stopped")
    assert sorted(line["worker"] for line in stopped) == [0, 1]
    assert all("worker" not in line for line in server.events("workers.stopped"))
