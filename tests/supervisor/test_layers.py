"""The layers stay apart: generic supervision runs without the server, in a fresh process.

Each check runs in a child interpreter, since this one has imported everything
already: what matters is what a program that only asks for the tree loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import supervisor
from supervisor._constants import CLEAN_CLOSE_CODES, OPS_PATHS, SHUTDOWN_REASON, CloseCode

#: Third-party packages that only the server, the metrics or the cluster need.
SERVER_ONLY = ("websockets", "prometheus_client", "redis")

#: A supervised actor that crashes on its first message, is restarted by its
#: supervisor, and answers the second one; then the modules it loaded.
SUPERVISED_RESTART = textwrap.dedent(
    """
    import json
    import sys

    import anyio

    from actors import Actor, ActorRestarted, Backoff, FakeClock
    from supervisor import ActorSystem, ChildSpec, Restart, Supervisor, SupervisorSpec

    starts = []


    class Flaky(Actor):
        async def on_start(self):
            starts.append(len(starts) + 1)

        async def on_receive(self, message):
            if message == "crash":
                raise RuntimeError("crash on purpose")
            return (message, len(starts))


    async def main():
        spec = ChildSpec(Flaky, names=("flaky",), restart=Restart.PERMANENT,
                         backoff=Backoff(minimum=0.0))
        async with ActorSystem(SupervisorSpec((spec,), id="workers"), clock=FakeClock()) as system:
            try:
                await system.ask("flaky", "crash")
            except ActorRestarted:
                pass
            answer = await system.ask("flaky", "ping")
        assert isinstance(system.root, Supervisor)
        return answer


    answer = anyio.run(main, backend=sys.argv[1])
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    supervisor_modules = sorted(name for name in sys.modules if name.startswith("supervisor."))
    print(json.dumps({"answer": answer, "loaded": loaded, "supervisor": supervisor_modules}))
    """
)


def run_child(script: str, *args: str) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter and return the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_supervised_actor_restarts_without_loading_the_server(backend: str) -> None:
    """The tree restarts a crashed actor with websockets, prometheus_client and redis unloaded."""
    result = run_child(SUPERVISED_RESTART, backend)
    assert result["answer"] == ["ping", 2]  # the second incarnation answered
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert [name for name in SERVER_ONLY if name in loaded] == []
    assert result["supervisor"] == [
        "supervisor.tree",
        "supervisor.tree._system",
        "supervisor.tree._tree",
    ]


def test_the_actor_runtime_loads_nothing_of_supervisor() -> None:
    """``import actors`` loads neither ``supervisor`` nor the server's dependencies."""
    result = run_child(
        "import json, sys; import actors; "
        "print(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules})}))"
    )
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert [name for name in (*SERVER_ONLY, "supervisor") if name in loaded] == []


def test_a_server_name_loads_the_server() -> None:
    """The lazy namespace still hands out the server: asking for it imports it."""
    result = run_child(
        "import json, sys; from supervisor import Server; "
        "print(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules}), "
        "'module': Server.__module__}))"
    )
    assert result["module"] == "supervisor.server._server"
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert "websockets" in loaded


def test_the_extension_points_load_only_the_runtime() -> None:
    """``supervisor.lowlevel`` is for code that plugs into the runtime: it loads no server."""
    result = run_child(
        "import json, sys; import supervisor.lowlevel; "
        "print(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules}), "
        "'supervisor': sorted(n for n in sys.modules if n.startswith('supervisor.'))}))"
    )
    loaded = result["loaded"]
    assert isinstance(loaded, list)
    assert [name for name in SERVER_ONLY if name in loaded] == []
    assert result["supervisor"] == ["supervisor.lowlevel"]


#: What each subpackage of ``supervisor`` may import of the others (its own
#: modules always): the layers of docs/architecture.md, lowest first.
MAY_IMPORT = {
    "tree": {"supervisor._exceptions", "supervisor._constants"},
    "observe": {"supervisor._exceptions", "supervisor._constants", "supervisor.metrics"},
    "server": {
        "supervisor.asgi",  # the server's ASGI driver, a public module
        "supervisor._exceptions",
        "supervisor._constants",
        "supervisor.metrics",
        "supervisor.tree",
        "supervisor.observe",
    },
}


def _imports_of(path: Path, package: str) -> set[str]:
    """Absolute names of the supervisor modules ``path`` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "supervisor"}


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    """tree/ is generic (nothing of the server, metrics or cluster); observe/ knows no
    server; server/ knows no command line. Checked on every import, lazy ones included."""
    root = Path(supervisor.__file__).parent / layer
    allowed = MAY_IMPORT[layer] | {f"supervisor.{layer}"}
    wrong = {}
    for path in sorted(root.glob("*.py")):
        outside = {
            name
            for name in _imports_of(path, f"supervisor.{layer}")
            if not any(name == ok or name.startswith(ok + ".") for ok in allowed)
        }
        if outside:
            wrong[path.name] = sorted(outside)
    assert wrong == {}


def test_every_subpackage_is_in_the_distribution() -> None:
    """pyproject.toml lists each package directory, or the wheel would leave it out."""
    root = Path(supervisor.__file__).parents[1]
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for package in ("actors", "supervisor")
        for init in (root / package).rglob("__init__.py")
    }
    assert set(listed) == found


#: Private attributes a driver may reach on something other than itself.
DRIVER_PRIVATE_OK = {"self._sock._accept"}  # socket.socket's C accept, under accept()


@pytest.mark.parametrize("module", ["server/_drivers.py", "server/_aio.py", "asgi.py"])
def test_drivers_reach_a_connection_only_through_its_port(module: str) -> None:
    """A driver touches no private member of a connection, of the server (or of
    anything but itself): what it may reach is ``DriverPort``, a typed, narrow
    interface, and the server's ``handshake_gate`` (the ASGI adapter too)."""
    path = Path(supervisor.__file__).parent / module
    reached = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") or (
            isinstance(node.value, ast.Name) and node.value.id == "self"
        ):
            continue
        reached.add(ast.unparse(node))
    assert reached - DRIVER_PRIVATE_OK == set()


#: The connection and server modules, where every close code and operational path
#: comes from ``supervisor/_constants.py``.
CONNECTION_MODULES = (
    "server/_connection.py",
    "server/_core.py",
    "server/_drivers.py",
    "server/_server.py",
    "server/_aio.py",
    "server/_handshake.py",
    "asgi.py",
)


@pytest.mark.parametrize("module", CONNECTION_MODULES)
def test_close_codes_and_operational_paths_are_named_once(module: str) -> None:
    """No close code (1000-1015) or operational path is written as a literal in code
    (docstrings and comments may spell them out): each has its one name."""
    path = Path(supervisor.__file__).parent / module
    literals = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Constant):
            continue
        value = node.value
        code = type(value) is int and 1000 <= value <= 1015
        if code or (isinstance(value, str) and value in OPS_PATHS):
            literals.append((node.lineno, value))
    assert literals == []


def test_a_close_code_shows_as_its_number() -> None:
    """What handlers print (``conn.close_info()``, an exception's code) reads as the number."""
    assert repr((CloseCode.GOING_AWAY, SHUTDOWN_REASON)) == "(1001, 'server shutting down')"
    assert CloseCode.GOING_AWAY in CLEAN_CLOSE_CODES
