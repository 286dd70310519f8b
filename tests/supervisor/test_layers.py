"""The layers stay apart: generic supervision runs without the server, in a fresh process.

Each check runs in a child interpreter, since this one has imported everything
already: what matters is what a program that only asks for the tree loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

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
    assert result["supervisor"] == ["supervisor._system", "supervisor._tree"]


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
    assert result["module"] == "supervisor._server"
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
