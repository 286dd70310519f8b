"""Where a server's instructions go: callgrind counts per C function and per chosen Python function.

Not a test. ``python -m bench.instructions`` counts a server's instructions per
operation; this breaks that count down, with the same method (two windows
under callgrind, the difference divided by the difference in operations), into

* every C function's *self* count (interpreter, uvloop, the C parts of
  websockets and aiohttp, libc), and
* the *inclusive* count of chosen Python functions (:data:`SECTIONS`, or
  :data:`HANDSHAKE_SECTIONS` for ``--scenario handshake``), which
  callgrind cannot tell apart on its own: on Python 3.11 every Python function
  runs inside ``_PyEval_EvalFrameDefault``. ``bench/_sections.c``, compiled on
  the fly, gives each chosen function a C frame of its own (``section_NN``; a
  coroutine's or a generator's steps run in ``section_NN_send``), put in
  place in the server process by a ``sitecustomize`` module before the server
  starts. That frame costs about 100 instructions per call on top of the
  function itself, so the total per operation is somewhat higher than
  ``bench.instructions`` reports; the instrumented total is printed with it.

Usage: ``python -m bench.sections [--scenario rr-echo|handshake|echo] [--servers wsup,aiohttp]
[--conns 100] [--size 4096] [--top 25]``. Requires valgrind, a C compiler and
Python's headers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.instructions import Load, _count, arguments, chosen
from bench.registry import ServerSpec

_HERE = Path(__file__).resolve().parent
_ENV = "BENCH_SECTIONS"

#: Python functions given a C frame of their own, per server: ``module:attribute``
#: (``Class.method``, or a module-level function as the module that calls it
#: sees it), and whether calling it returns a coroutine or a generator whose
#: steps are to be counted too.
_PARSER = [
    ("websockets.protocol:Protocol.receive_data", False),
    ("websockets.protocol:Protocol.events_received", False),
    ("websockets.protocol:Protocol.recv_frame", False),
    ("websockets.frames:Frame.parse", True),
    ("websockets.frames:Frame.check", False),
    ("websockets.streams:StreamReader.feed_data", False),
    ("websockets.streams:StreamReader.read_exact", True),
    ("websockets.streams:StreamReader.at_eof", True),
]
_UVICORN_WS = "uvicorn.protocols.websockets.websockets_sansio_impl"
SECTIONS: dict[str, list[tuple[str, bool]]] = {
    "wsup": [
        ("supervisor.server._drivers:TransportDriver.data_received", False),
        ("supervisor.server._drivers:enter_callback", False),
        ("supervisor.server._drivers:exit_callback", False),
        ("actors._clock:MonotonicClock.now", False),
        ("supervisor.server._core:ConnectionCore.receive_data", False),
        ("supervisor.server._core:ConnectionCore._take_frames", False),
        ("websockets.protocol:Protocol.receive_data", False),
        ("supervisor.server._keepalive:Keepalive.on_frame", False),
        ("supervisor.server._connection:Connection._deliver", False),
        ("actors._actor:Cell.step_inline", False),
        ("actors._actor:step_as", False),
        ("supervisor.server._app:Handler._dispatch", True),
        ("supervisor.server._connection:Connection.send", True),
        ("supervisor.server._connection:Connection._encode", False),
        ("supervisor.server._connection:Connection._enqueue", False),
        ("supervisor.server._drivers:TransportDriver.flush_soon", False),
        ("supervisor.observe._instrumentation:MetricsInstrumentation.message_processed", False),
        ("supervisor.server._connection:Connection._settle", False),
        ("supervisor.server._core:ConnectionCore.after_read", False),
        ("supervisor.server._keepalive:Keepalive.on_message", False),
        ("supervisor.observe._instrumentation:BatchedCounter.inc", False),
        ("supervisor.server._drivers:TransportDriver._scheduled_flush", False),
        ("supervisor.server._drivers:TransportDriver._flush", False),
        ("supervisor.server._core:ConnectionCore.data_to_send", False),
        ("supervisor.server._outbound:OutboundBuffer.__bool__", False),
        ("supervisor.server._outbound:OutboundBuffer.take", False),
        ("supervisor.server._core:ConnectionCore._close_pending", False),
        ("supervisor.server._core:ConnectionCore._frame", False),
        ("supervisor.server._core:frame_header", False),
    ],
    "wsup-asgi": [
        ("supervisor.server._drivers:ASGIDriver._reader", True),
        ("supervisor.server._drivers:ASGIDriver._writer", True),
        ("supervisor.server._drivers:_TaskDriver._hand_on", True),
        ("supervisor.server._drivers:_TaskDriver._sleep_until_woken", True),
        ("supervisor.server._drivers:_TaskDriver.flush_soon", False),
        ("supervisor.server._core:ConnectionCore.receive_message", False),
        ("supervisor.server._connection:Connection._deliver", False),
        ("supervisor.server._connection:Connection._settle", False),
        ("supervisor.server._core:ConnectionCore.after_read", False),
        ("supervisor.server._app:Handler._dispatch", True),
        ("supervisor.server._connection:Connection.send", True),
        ("supervisor.server._connection:Connection._encode", False),
        ("supervisor.server._connection:Connection._enqueue", False),
        ("supervisor.server._core:ConnectionCore.take_messages", False),
        ("supervisor.server._core:ConnectionCore.close_due", False),
        ("supervisor.observe._instrumentation:MetricsInstrumentation.message_processed", False),
        ("supervisor.observe._instrumentation:BatchedCounter.inc", False),
        (f"{_UVICORN_WS}:WebSocketProtocol.receive", True),
        (f"{_UVICORN_WS}:WebSocketProtocol.send", True),
        (f"{_UVICORN_WS}:WebSocketProtocol.data_received", False),
    ],
    "fastapi": [
        (f"{_UVICORN_WS}:WebSocketProtocol.receive", True),
        (f"{_UVICORN_WS}:WebSocketProtocol.send", True),
        (f"{_UVICORN_WS}:WebSocketProtocol.data_received", False),
        ("starlette.websockets:WebSocket.receive", True),
        ("starlette.websockets:WebSocket.send", True),
    ],
    "websockets": [
        *_PARSER,
        ("websockets.asyncio.connection:Connection.data_received", False),
        ("websockets.asyncio.connection:Connection.recv", True),
        ("websockets.asyncio.connection:Connection.send", True),
        ("websockets.asyncio.messages:Assembler.put", False),
        ("websockets.asyncio.messages:Assembler.get", True),
        ("websockets.protocol:Protocol.send_binary", False),
        ("websockets.protocol:Protocol.data_to_send", False),
    ],
    "aiohttp": [
        ("aiohttp.web_protocol:RequestHandler.data_received", False),
        ("aiohttp.web_ws:WebSocketResponse.receive", True),
        ("aiohttp.web_ws:WebSocketResponse.send_bytes", True),
        ("aiohttp._websocket.writer:WebSocketWriter.send_frame", True),
    ],
}

#: The sections of ``--scenario handshake``: a connection's whole life (accept,
#: request, 101, the connection and its actor, the close), per server.
HANDSHAKE_SECTIONS: dict[str, list[tuple[str, bool]]] = {
    "wsup": [
        ("supervisor.server._aio:_Acceptor._accept", False),
        ("supervisor.server._aio:HandshakeProtocol.__init__", False),
        ("supervisor.server._aio:HandshakeProtocol.connection_made", False),
        ("supervisor.server._aio:HandshakeProtocol.data_received", False),
        ("supervisor.server._aio:_finish", False),
        ("supervisor.server._server:Handshakes.new_protocol", False),
        ("supervisor.server._server:Handshakes.socket", False),
        ("supervisor.server._server:Handshakes.reader", False),
        ("supervisor.server._server:Handshakes.opened", False),
        ("supervisor.server._server:Handshakes.settled", False),
        ("supervisor.server._handshake:RequestReader.feed", False),
        ("supervisor.server._handshake:Handshake.decide", False),
        ("websockets.server:ServerProtocol.process_request", False),
        ("supervisor.server._aio:HandshakeProtocol._conclude", False),
        ("websockets.protocol:Protocol.data_to_send", False),
        ("supervisor.server._server:Server._open_connection", False),
        ("supervisor.server._connection:Connection.__init__", False),
        ("supervisor.server._connection:Connection._new_core", False),
        ("supervisor.server._connection:Connection._bind", False),
        ("supervisor.server._server:Server._spawn", False),
        ("supervisor.tree._tree:Supervisor.start_child_nowait", False),
        ("actors._runtime:Runtime.create_cell", False),
        ("actors._runtime:Runtime.add_member", False),
        ("supervisor.server._connection:Connection._attach", False),
        ("supervisor.server._server:Server._opened", False),
        ("supervisor.server._server:Server.schedule_keepalive", False),
        ("supervisor.server._drivers:TransportDriver.start", False),
        ("supervisor.server._drivers:TransportDriver.data_received", False),
        ("supervisor.server._core:ConnectionCore.receive_data", False),
        ("supervisor.server._connection:Connection._settle", False),
        ("supervisor.server._connection:Connection._handle_events", False),
        ("actors._actor:Cell.request_drain", False),
        ("supervisor.tree._tree:Supervisor._unpark", False),
        ("supervisor.tree._tree:Supervisor._finish", False),
        ("actors._actor:Cell.terminate", False),
        ("actors._runtime:Runtime.forget", False),
        ("supervisor.server._drivers:TransportDriver._flush", False),
        ("supervisor.server._drivers:TransportDriver._scheduled_flush", False),
        ("supervisor.server._drivers:TransportDriver.eof_received", False),
        ("supervisor.server._drivers:TransportDriver.connection_lost", False),
        ("supervisor.server._connection:Connection._finalize", False),
        ("supervisor.server._core:ConnectionCore.finish", False),
        ("supervisor.server._server:Server.connection_closed", False),
        ("supervisor.server._server:Server._forget_keepalive", False),
        ("supervisor.server._connection:Connection._set_state", False),
        ("supervisor.server._connection:Connection._actor_ended", False),
        ("supervisor.server._connection:Connection._room", False),
        ("supervisor.server._connection:Connection._lost", False),
        ("supervisor.server._core:ConnectionCore.after_read", False),
        ("supervisor.server._core:ConnectionCore._record_close", False),
        ("supervisor.server._core:ConnectionCore.data_to_send", False),
        ("supervisor.server._core:ConnectionCore._take_close", False),
        ("websockets.protocol:Protocol.recv_frame", False),
        ("websockets.protocol:Protocol.receive_eof", False),
        ("actors._mailbox:Mailbox.put_control", False),
        ("actors._mailbox:Mailbox.close", False),
        ("actors._actor:Cell.idle_exit", False),
        ("actors._runtime:Runtime.remove_member", False),
        ("supervisor.observe._instrumentation:MetricsInstrumentation.actor_stopped", False),
        ("supervisor.server._admission:Admission.connection_closed", False),
        ("supervisor.server._drivers:TransportDriver._write_eof", False),
        ("supervisor.server._drivers:TransportDriver._end", False),
        ("supervisor.server._server:Server._keepalive_loop", True),
        ("supervisor.server._server:Server._flush_metrics", True),
    ],
}

#: Put in the server process's ``sys.path`` as ``sitecustomize``: wraps the sections.
_SITECUSTOMIZE = """
import importlib, json, os, sys
sys.path.insert(0, os.path.dirname(__file__))
import _sections

def _install(index, target, coroutine):
    module_name, _, attribute = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    raw = owner.__dict__[name] if path else getattr(owner, name)
    kind = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
    function = raw.__func__ if kind else raw
    wrapped = _sections.wrap(function, index, coroutine)
    setattr(owner, name, kind(wrapped) if kind else wrapped)

for _index, (_target, _coroutine) in enumerate(json.loads(os.environ.pop("BENCH_SECTIONS"))):
    try:
        _install(_index, _target, _coroutine)
    except (AttributeError, KeyError, ImportError) as _exc:
        print(f"bench.sections: no {_target} ({_exc!r})", file=sys.stderr)
"""


def section_name(index: int) -> str:
    """The C function that counts section ``index`` (see ``bench/_sections.c``)."""
    return f"section_{index // 8 + 1}{index % 8}"


def build(directory: Path) -> None:
    """Compile ``_sections.c`` and write the ``sitecustomize`` module into ``directory``."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(
        [
            "cc",
            "-O2",
            "-fno-ipa-icf",
            "-shared",
            "-fPIC",
            f"-I{sysconfig.get_paths()['include']}",
            "-o",
            str(directory / f"_sections{suffix}"),
            str(_HERE / "_sections.c"),
        ],
        check=True,
    )
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)


_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)(?:\s+\[(.*)\])?\s*$")


def annotate(path: Path, *, inclusive: bool) -> dict[str, int]:
    """Instructions per function (``function (object)``) in a callgrind output file."""
    out = subprocess.run(
        [
            "callgrind_annotate",
            f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100",
            "--auto=no",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return parse_annotate(out)


def parse_annotate(out: str) -> dict[str, int]:
    """The per-function counts of ``callgrind_annotate``'s output."""
    counts: dict[str, int] = {}
    objects: dict[str, str] = {}
    started = False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        found = _LINE.match(line) if started else None
        if found is None:
            continue
        count, where, obj = found.groups()
        # Recursion levels ('2) and a function listed with and without its object: one.
        function = re.sub(r"'\d+$", "", where.rpartition(":")[2])
        key = f"{function} ({Path(obj).name})" if obj else function
        counts[key] = counts.get(key, 0) + int(count.replace(",", ""))
        if obj:
            objects[function] = key
    # Merge "f" into "f (object)" where both appear.
    for function, key in objects.items():
        if function in counts and function != key:
            counts[key] += counts.pop(function)
    return counts


def _per_operation(
    short: dict[str, int], long: dict[str, int], operations: int
) -> dict[str, float]:
    return {
        key: (long.get(key, 0) - short.get(key, 0)) / operations for key in set(short) | set(long)
    }


def measure(
    spec: ServerSpec, load: Load, short: float, long: float, workdir: Path
) -> tuple[float, dict[str, float], dict[str, float]]:
    """Run ``spec`` twice under callgrind with its sections.

    Returns:
        ``(total, self counts, section counts)`` per operation;
        a section's count is the sum of its call and its steps.
    """
    chosen = HANDSHAKE_SECTIONS if load.mode == "handshake" else SECTIONS
    sections = chosen.get(spec.name, [])
    env = {
        **os.environ,
        _ENV: json.dumps(sections),
        "PYTHONPATH": os.pathsep.join(
            [str(workdir), str(_HERE.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_count, spec, short, workdir, load, env, long - short)
        second = pool.submit(_count, spec, long, workdir, load, env)
        (n1, i1), (n2, i2) = first.result(), second.result()
    if n2 <= n1:
        raise RuntimeError(f"the long run did no more operations ({n2}) than the short ({n1})")
    files = [workdir / f"{spec.name}-{seconds:g}.out" for seconds in (short, long)]
    first_file, second_file = files
    own = _per_operation(
        annotate(first_file, inclusive=False), annotate(second_file, inclusive=False), n2 - n1
    )
    inclusive = _per_operation(
        annotate(first_file, inclusive=True), annotate(second_file, inclusive=True), n2 - n1
    )
    by_section: dict[str, float] = {}
    for index, (target, _) in enumerate(sections):
        name = section_name(index)
        by_section[target.partition(":")[2]] = sum(
            count
            for key, count in inclusive.items()
            if key.startswith((f"{name} ", f"{name}_send "))
        )
    return (i2 - i1) / (n2 - n1), own, by_section


def _by_object(counts: dict[str, float]) -> dict[str, float]:
    """Self counts added up per shared object (the interpreter, uvloop, libc...)."""
    totals: dict[str, float] = {}
    for key, value in counts.items():
        obj = key.rpartition(" (")[2].rstrip(")") if key.endswith(")") else "?"
        totals[obj] = totals.get(obj, 0.0) + value
    return totals


def _top(counts: dict[str, float], top: int, skip: Iterable[str] = ()) -> list[tuple[str, float]]:
    hidden = tuple(skip)
    rows = [(key, value) for key, value in counts.items() if not key.startswith(hidden)]
    return sorted(rows, key=lambda row: -row[1])[:top]


def main(argv: list[str] | None = None) -> None:
    """Measure the servers named on the command line and print their breakdowns."""
    parser = arguments(__doc__.splitlines()[0], "rr-echo", "wsup,aiohttp")
    parser.add_argument("--top", type=int, default=25, help="C functions to list")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args(argv)
    specs, load = chosen(args)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            workdir = args.keep / spec.name if args.keep else Path(tmp) / spec.name
            workdir.mkdir(parents=True, exist_ok=True)
            build(workdir)
            total, own, by_section = measure(spec, load, args.short, args.long, workdir)
            print(f"{spec.name}: {total:,.0f} instructions per {load.unit} (instrumented)")
            if by_section:
                print("  Python functions, inclusive:")
                for name, value in by_section.items():
                    print(f"    {value:>9,.0f}  {name}")
            print("  self, by object:")
            for name, value in _top(_by_object(own), args.top):
                print(f"    {value:>9,.0f}  {name}")
            print("  C functions, self:")
            for name, value in _top(own, args.top, skip=("section_",)):
                print(f"    {value:>9,.0f}  {name}")
            print(flush=True)


if __name__ == "__main__":
    main()
