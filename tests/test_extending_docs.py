"""The extending guide (docs/extending.md) and supervisor.lowlevel say the same, truly.

The example runs as the page says and on both backends, and prints what the
page shows; each extension point is on the page; and each constructor the page
names really takes the extension point it says plugs into it.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import actors
import supervisor.lowlevel
from actors import Runtime
from supervisor import ActorSystem, Server, serve
from tests.helpers.docs import assert_blocks_are_files
from tests.test_docs_examples import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"
EXAMPLE = ROOT / "examples" / "extending" / "two_nodes.py"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"# (examples/extending/\w+\.py)\n")


def _blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(PAGE.read_text(encoding="utf-8"))]


def test_the_python_block_is_the_example_verbatim() -> None:
    """The page quotes the example file exactly."""
    blocks = [body for language, body in _blocks() if language == "python"]
    assert len(blocks) == 1
    assert_blocks_are_files(blocks, _HEADER, "in the extending guide")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_example_prints_what_the_page_shows(variant: str) -> None:
    """Run as documented and forced onto each backend: exit 0, no stderr, the page's output."""
    done = subprocess.run(
        [sys.executable, "-W", "error", *VARIANTS[variant], str(EXAMPLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    blocks = _blocks()
    index = next(i for i, (language, _) in enumerate(blocks) if language == "python")
    assert blocks[index + 1][0] == "text"
    assert blocks[index + 1][1] == done.stdout
    assert "bob on b got 'hello from a'" in done.stdout  # it crossed the backplane


def test_every_extension_point_is_on_the_page() -> None:
    """Each name of ``supervisor.lowlevel`` is named on the page."""
    text = PAGE.read_text(encoding="utf-8")
    assert [name for name in supervisor.lowlevel.__all__ if f"`{name}`" not in text] == []


@pytest.mark.parametrize(
    ("target", "parameters"),
    [
        (ActorSystem, {"backplane", "clock", "instrumentation"}),
        (Runtime, {"clock", "instrumentation"}),
        (Server, {"backplane", "clock", "metrics"}),
        (serve, {"backplane"}),
    ],
)
def test_each_extension_point_plugs_where_the_page_says(
    target: object, parameters: set[str]
) -> None:
    """The constructors the page names take the extension points it says they take."""
    assert callable(target)
    assert parameters <= set(inspect.signature(target).parameters)
    text = PAGE.read_text(encoding="utf-8")
    name = getattr(target, "__name__", "")
    for parameter in parameters - {"metrics"}:
        assert re.search(rf"`{name}\((app, )?{parameter}=\.\.\.\)`", text), (name, parameter)


def test_the_extension_points_are_the_runtime_objects() -> None:
    """``supervisor.lowlevel`` hands out the very classes ``actors`` defines, not copies."""
    for name in supervisor.lowlevel.__all__:
        assert getattr(supervisor.lowlevel, name) is getattr(actors, name)
