"""bench.sections: the C frames it puts around Python functions change nothing
but the name callgrind sees, and its reading of callgrind_annotate's output."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import shutil
import sysconfig
from collections.abc import Generator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench.sections import HANDSHAKE_SECTIONS, SECTIONS, build, parse_annotate, section_name


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    if shutil.which("cc") is None:
        pytest.fail("bench.sections needs a C compiler (cc)")
    directory = tmp_path_factory.mktemp("sections")
    build(directory)
    path = directory / f"_sections{sysconfig.get_config_var('EXT_SUFFIX')}"
    spec = importlib.util.spec_from_file_location("_sections", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sample:
    def add(self, x: int, *, y: int = 1) -> int:
        return x + y

    async def twice(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @classmethod
    def echo(cls, first: Any) -> Generator[Any, Any, Any]:
        second = yield first
        return (cls.__name__, second)


def test_wrapped_functions_behave_as_before(sections: Any) -> None:
    class Wrapped(Sample):
        add = sections.wrap(Sample.add, 0, False)
        twice = sections.wrap(Sample.twice, 1, True)
        echo: Any = classmethod(sections.wrap(Sample.__dict__["echo"].__func__, 2, True))

    sample = Wrapped()
    assert sample.add(1, y=2) == 3
    assert Wrapped.add(sample, 4) == 5
    assert Wrapped.add.__name__ == "add"
    assert inspect.iscoroutinefunction(sample.twice)
    assert asyncio.run(sample.twice(21)) == 42

    def outer() -> Generator[Any, Any, Any]:
        return (yield from Wrapped.echo("first"))

    steps = outer()
    assert next(steps) == "first"
    with pytest.raises(StopIteration) as done:
        steps.send("second")
    assert done.value.value == ("Wrapped", "second")
    with pytest.raises(ValueError, match="section index"):
        sections.wrap(Sample.add, sections.SECTIONS, False)


def test_section_names_are_the_c_functions() -> None:
    source = (Path(__file__).parents[2] / "bench" / "_sections.c").read_text()
    assert "SECTION(n)" in source
    assert [section_name(i) for i in (0, 7, 8, 63)] == [
        "section_10",
        "section_17",
        "section_20",
        "section_87",
    ]


def test_annotate_output_is_read_per_function_and_object() -> None:
    out = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
9,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                     file:function
--------------------------------------------------------------------------------
5,000 (55.56%)  ./Python/ceval.c:_PyEval_EvalFrameDefault [/usr/lib/libpython3.11.so.1.0]
1,500 (16.67%)  ???:_PyEval_EvalFrameDefault'2 [/usr/lib/libpython3.11.so.1.0]
  700 ( 7.78%)  ???:_PyEval_EvalFrameDefault
  300 ( 3.33%)  ???:section_10 [/tmp/x/_sections.so]
"""
    assert parse_annotate(out) == {
        "_PyEval_EvalFrameDefault (libpython3.11.so.1.0)": 7200,
        "section_10 (_sections.so)": 300,
    }


def test_every_wsup_section_names_a_function() -> None:
    """A renamed function would silently drop out of the profile: each target resolves."""
    for target, _ in [*SECTIONS["wsup"], *HANDSHAKE_SECTIONS["wsup"]]:
        module_name, _, attribute = target.partition(":")
        owner: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            owner = getattr(owner, part)
        assert callable(owner), target
