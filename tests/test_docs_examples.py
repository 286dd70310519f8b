"""The concepts page (docs/concepts.md): its examples run and print what the page shows.

Each script in ``examples/concepts/`` runs in a subprocess with this interpreter,
three ways: exactly as the page tells a reader to run it, and with ``anyio.run``
forced onto asyncio with uvloop and onto trio. Every run must exit 0, write
nothing to stderr (warnings are errors), print its key lines in order, and print
exactly the output quoted under the example on the page. The page's python
blocks must be verbatim copies of the files. The exceptions page must cover
every exception class, and the landing page must link every page.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import actors
import supervisor
from tests.helpers.docs import assert_blocks_are_files

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONCEPTS = DOCS / "concepts.md"
EXAMPLES = ROOT / "examples" / "concepts"

# A deadlock guard for each run, not a timing assertion: each example takes a
# fraction of a second.
RUN_TIMEOUT = 60.0

# The behaviour each example demonstrates, as lines it must print in this order.
EXPECTED_LINES: dict[str, tuple[str, ...]] = {
    "first_actor": (
        "started at actor:demo.1",
        "count: 13",
        "digest 2cf24dba5fb0, computed in a worker thread: True",
        "stopping with count 13",
        "system stopped",
    ),
    "refs": (
        "ask -> THIRD",
        "ActorRestarted: actor:demo.2 crashed with RuntimeError('cannot do that')",
        "AskTimeout after 0.005 s; the request itself stays queued",
        "ActorStopped: actor:demo.1 stopped before replying",
        "alive: False",
        "MailboxClosed: actor:demo.1 has stopped",
    ),
    "mailboxes": (
        "block        handled=[1, 2]  refused=2  depth=2/2  dropped={}",
        "drop_newest  handled=[1, 2]  refused=0  depth=2/2  dropped={'drop_newest': 2}",
        "drop_oldest  handled=[3, 4]  refused=0  depth=2/2  dropped={'drop_oldest': 2}",
        "reject       handled=[1, 2]  refused=2  depth=2/2  dropped={'reject': 2}",
        "block+await  handled=[1, 2, 3, 4]  high_water=2/2",
        "stop through a full mailbox: alive=False, stopped=1",
    ),
    "dead_letters": (
        "dropped       actor:demo.1   2         drop_newest",
        "no_recipient  user:nobody    'hello?'  -",
        "failed        actor:demo.2   'three'   TypeError(\"not a number: 'three'\")",
        "stopped       actor:demo.3   4         stopped",
        "stopped       actor:demo.3   5         stopped",
        "{'dropped': 1, 'no_recipient': 1, 'failed': 1, 'stopped': 2, 'backplane_down': 0}",
    ),
    "addresses": (
        "send user:alice      -> alice/laptop, alice/phone",
        "publish room:lobby   -> alice/phone, bob",
        "broadcast            -> alice/laptop, alice/phone, bob",
        "send actor:demo.3    -> bob",
        "ask user:alice       -> AmbiguousAddress (2 members)",
        "ask user:bob         -> bob",
        "room:lobby members   -> ['actor:demo.1']",
        "send user:bob        -> nobody (a dead letter)",
        "ask user:bob         -> NoRecipient (user:bob)",
    ),
    "restarts": (
        "started   actor:demo.1",
        "dead letter 'crash' (failed)",
        "restarted actor:demo.1 (restart 1) after RuntimeError('bad input')",
        "c: handled 2 since the last start",
        "restarted actor:demo.1 (restart 2) after RuntimeError('bad input')",
        "dead letter 'd' (stopped)",
        "actor:demo.1 has stopped: alive=False",
    ),
    "strategies": (
        "one_for_one   starts: a=1 b=2 c=1",
        "one_for_all   starts: a=2 b=2 c=2",
        "rest_for_one  starts: a=1 b=2 c=2",
    ),
    "escalation": (
        "crash 2: worker restarted, same address",
        "crash 3: 'workers' escalated; root restarted it: actor:demo.2",
        "crash 5: worker restarted, same address",
        "SystemFailed: the actor system stopped: supervisor 'root' exceeded its restart"
        " intensity (2 restarts within 60 s) and escalates",
        "  caused by RuntimeError(\"cannot handle 'crash'\")",
    ),
    "shutdown": (
        "stopping session",
        "stuck    cancelled after its shutdown timeout (on_stop() is not called)",
        "stopping cache",
        "stopping database",
        "dead letter 'more work' (stopped, stopped)",
        "all stopped",
    ),
    "fake_clock": (
        "t= 29.9  still waiting",
        "t= 30.0  AskTimeout",
        "t= 30.0  crashed, restart due at t=31.0",
        "t= 31.0  crashed, restart due at t=33.0",
        "t= 33.0  crashed, restart due at t=37.0",
        "t= 37.0  restarted after RuntimeError('crash')",
    ),
    "critical": (
        "optional gave up: alive=False, escalations=1",
        "the rest runs on: feed alive=True",
        "SystemFailed: the actor system stopped: critical 'feed' exceeded its restart intensity"
        " (2 restarts within 60 s): the process stops",
        "  caused by RuntimeError(\"cannot handle 'z'\")",
    ),
    "delivery": (
        "send user:alice     Delivery(local=1, remote=False)",
        "publish room:lobby  Delivery(local=2, remote=False)",
        "publish room:empty  Delivery(local=0, remote=False)",
        "send user:nobody    Delivery(local=0, remote=False) reached: False",
        "dead letters: no_recipient=1 (the empty room is none)",
    ),
    "timers": (
        "t= 1.0  beat",
        "t= 2.0  beat",
        "t= 4.5  second reminder",
        "t= 5.0  started (restarts: 1)",
        "t= 5.0  timers left from before: []",
        "t= 6.0  beat",
    ),
    "monitors": (
        "down actor:demo.99: no_actor",
        "down actor:demo.2: exited",
        "down actor:demo.3: crashed (RuntimeError('crashed on purpose'))",
        "down actor:demo.4: stopped",
    ),
    "singletons": (
        "t=0.00  feed started on node a",
        "t=5.00  node b runs a feed: False",
        "t=5.00  feed stopped on node a",
        "t=5.25  feed started on node b",
        "t=5.25  ask feed -> node b",
    ),
    "backplane": (
        "default backplane: inprocess, up=True, remote=False",
        "  backplane: subscribe room:lobby",
        "  backplane: publish 'hello' to room:lobby",
        "  BackplaneUnavailable: backplane unavailable, cannot reach 'room:lobby': link cut",
        "  local member got 'during the outage'",
        "  backplane: unsubscribed ['actor:demo.1', 'room:lobby']",
    ),
}

# Runs a script as its own __main__, with anyio.run() forced onto one backend.
_ON_BACKEND = """\
import runpy, sys
import anyio

chosen, path = sys.argv[1], sys.argv[2]
options = {"use_uvloop": True} if chosen == "asyncio" else {}
run = anyio.run

def forced(func, *args, backend=None, backend_options=None):
    return run(func, *args, backend=chosen, backend_options=options)

anyio.run = forced
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""

VARIANTS: dict[str, tuple[str, ...]] = {
    "as-documented": (),
    "asyncio+uvloop": ("-c", _ON_BACKEND, "asyncio"),
    "trio": ("-c", _ON_BACKEND, "trio"),
}

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"# (examples/concepts/(\w+)\.py)\n")


@dataclass(frozen=True)
class Run:
    """How one run of an example ended (``returncode`` is None if it timed out)."""

    returncode: int | None
    stdout: str
    stderr: str


def _example_names() -> list[str]:
    return sorted(path.stem for path in EXAMPLES.glob("*.py"))


def _run(name: str, variant: str) -> Run:
    argv = [sys.executable, "-W", "error", *VARIANTS[variant], str(EXAMPLES / f"{name}.py")]
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return Run(None, str(exc.stdout or ""), str(exc.stderr or ""))
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[tuple[str, str], Future[Run]]]:
    """Start every example every way, eight processes at a time, in the order the tests
    come; each test waits for its own run only. (Waiting for all of them here would
    count their whole time, over a minute on a busy machine, against the first test's
    timeout.)"""
    jobs = [(name, variant) for name in _example_names() for variant in VARIANTS]
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        yield {job: pool.submit(_run, *job) for job in jobs}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _blocks() -> list[tuple[str, str]]:
    """Return the page's fenced blocks as (language, body), in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(CONCEPTS.read_text())]


def _documented_outputs() -> dict[str, str]:
    """Map each quoted example to the ```text block that follows it on the page."""
    blocks = _blocks()
    outputs: dict[str, str] = {}
    for index, (language, body) in enumerate(blocks):
        header = _HEADER.match(body) if language == "python" else None
        if header is None:
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        assert following[0] == "text", f"{header.group(1)} is not followed by its output"
        outputs[header.group(2)] = following[1]
    return outputs


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", _example_names())
def test_example_exits_cleanly_and_prints_its_key_lines(
    runs: dict[tuple[str, str], Future[Run]], name: str, variant: str
) -> None:
    """The example exits 0, writes no stderr, and prints its key lines in order."""
    run = runs[name, variant].result()
    assert run.returncode is not None, f"{name} did not finish within {RUN_TIMEOUT} s"
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = iter(run.stdout.splitlines())
    for expected in EXPECTED_LINES[name]:
        assert any(line == expected for line in lines), (
            f"{name} did not print {expected!r} in order; it printed:\n{run.stdout}"
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", _example_names())
def test_page_shows_the_real_output(
    runs: dict[tuple[str, str], Future[Run]], name: str, variant: str
) -> None:
    """The output quoted under the example is exactly what the example prints."""
    assert _documented_outputs()[name] == runs[name, variant].result().stdout


def test_every_python_block_is_an_example_file_verbatim() -> None:
    """Each ```python block names its file on line one and equals that file exactly."""
    blocks = [body for language, body in _blocks() if language == "python"]
    assert_blocks_are_files(blocks, _HEADER, "on the page")


def test_every_example_is_on_the_page_and_has_expectations() -> None:
    """The example files, the examples quoted on the page and EXPECTED_LINES agree."""
    names = set(_example_names())
    assert names == set(_documented_outputs())
    assert names == set(EXPECTED_LINES)


def test_no_example_shadows_a_module_it_imports() -> None:
    """No example is named like a module: the script's directory comes first on sys.path."""
    taken = set(sys.stdlib_module_names) | {"actors", "supervisor", "anyio", "structlog", "trio"}
    assert not set(_example_names()) & taken


def test_in_page_links_point_to_headings() -> None:
    """Every ``(#anchor)`` link of the concepts page names one of its headings."""
    text = CONCEPTS.read_text()
    prose = _FENCE.sub("", text)
    anchors = {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, flags=re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", prose))
    assert links
    assert links <= anchors, f"dangling: {sorted(links - anchors)}"


def test_exceptions_page_covers_every_exception() -> None:
    """docs/exceptions.md has a section for every public wsup exception class."""
    text = (DOCS / "exceptions.md").read_text()
    public = [getattr(actors, name) for name in actors.__all__]
    public += [getattr(supervisor, name) for name in supervisor.__all__]
    errors = {
        obj.__name__
        for obj in public
        if isinstance(obj, type) and issubclass(obj, actors.WsupError)
    }
    assert "WsupError" in errors
    missing = sorted(name for name in errors if f"### `{name}`" not in text)
    assert not missing, f"no section for {missing}"


def test_index_links_every_page_and_warns_about_supervisord() -> None:
    """The landing page links each docs page and says the package clashes with supervisord."""
    text = (DOCS / "index.md").read_text()
    for page in (
        "concepts.md",
        "exceptions.md",
        "server.md",
        "operations.md",
        "performance.md",
        "scaling.md",
        "faq.md",
    ):
        assert f"]({page})" in text, page
    assert "supervisord" in text
