"""Tests that the public surface of each package is exactly what its ``__all__`` says."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import types
from pathlib import Path

import pytest

import actors
import supervisor
import supervisor.lowlevel

PACKAGES = [pytest.param(actors, id="actors"), pytest.param(supervisor, id="supervisor")]


def _public_names(package: types.ModuleType) -> set[str]:
    """Names a user can import from ``package``: not private, not a submodule.

    ``dir()`` rather than ``vars()``: ``supervisor`` loads its names on first use.
    """
    return {
        name
        for name in dir(package)
        if not name.startswith("_") and not isinstance(getattr(package, name), types.ModuleType)
    }


def _loaded_modules(package: types.ModuleType) -> list[types.ModuleType]:
    """The package's own modules that importing it has loaded."""
    prefix = package.__name__ + "."
    return [m for name, m in sorted(sys.modules.items()) if name.startswith(prefix)]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_complete(package: types.ModuleType) -> None:
    """Every public name the package exposes is listed in ``__all__``, and nothing more."""
    assert set(package.__all__) == _public_names(package)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_has_no_duplicates_and_every_name_exists(package: types.ModuleType) -> None:
    """``__all__`` names each object once, and each name resolves."""
    assert len(package.__all__) == len(set(package.__all__))
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_public_classes_and_functions_come_from_the_package_and_are_documented(
    package: types.ModuleType,
) -> None:
    """Exported classes and functions are defined in the package and have a docstring."""
    for name in package.__all__:
        obj = getattr(package, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert obj.__module__.split(".")[0] == package.__name__, name
        assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize("package", PACKAGES)
def test_each_module_all_lists_only_names_it_defines(package: types.ModuleType) -> None:
    """A module's own ``__all__`` names only things that exist in that module."""
    for module in _loaded_modules(package):
        names = getattr(module, "__all__", [])
        missing = [name for name in names if not hasattr(module, name)]
        assert missing == [], module.__name__


@pytest.mark.parametrize("package", PACKAGES)
def test_private_modules_are_not_exported(package: types.ModuleType) -> None:
    """No ``_module`` appears in ``__all__``; the public surface is the package namespace."""
    assert not [name for name in package.__all__ if name.startswith("_")]


def _type_checking_imports(package: types.ModuleType) -> dict[str, str]:
    """``name → module`` for each ``from .module import name`` in the package's
    ``if TYPE_CHECKING:`` block (what type checkers see)."""
    assert package.__file__ is not None
    tree = ast.parse(Path(package.__file__).read_text(encoding="utf-8"))
    imports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.unparse(stmt)
                for alias in stmt.names:
                    imports[alias.asname or alias.name] = "." * stmt.level + (stmt.module or "")
    return imports


def test_supervisor_lazy_names_match_what_type_checkers_see() -> None:
    """Each lazily loaded name comes from the module the typed imports name, and only
    names of ``__all__`` are loaded that way."""
    sources = supervisor._SOURCES
    assert set(sources) == set(supervisor.__all__)
    assert _type_checking_imports(supervisor) == sources
    for name, module in sources.items():
        assert getattr(supervisor, name) is getattr(
            importlib.import_module(module, "supervisor"), name
        )


def test_supervisor_unknown_name_is_an_attribute_error() -> None:
    """A name that is not public fails like on any module, naming the name."""
    with pytest.raises(AttributeError, match="'supervisor' has no attribute 'Nope'"):
        supervisor.Nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError):
        from supervisor import decide  # type: ignore[attr-defined]  # noqa: F401


def _exported_exceptions(package: types.ModuleType) -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in package.__all__:
        obj = getattr(package, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            found[name] = obj
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_exceptions_are_defined_in_one_module_and_derive_from_wsup_error(
    package: types.ModuleType,
) -> None:
    """Every exception a package exports lives in its ``_exceptions`` module."""
    errors = _exported_exceptions(package)
    assert len(errors) > 5
    assert all(issubclass(e, actors.WsupError) for e in errors.values())
    home = f"{package.__name__}._exceptions"
    assert {name: e.__module__ for name, e in errors.items()} == dict.fromkeys(errors, home)


def _drawn_tree(text: str) -> dict[str, str]:
    """``class → parent`` from a tree drawn with box characters (first drawing in ``text``)."""
    start = text.index("WsupError\n")
    indent = start - (text.rfind("\n", 0, start) + 1)
    lines = [line[indent:] for line in text[start:].splitlines()]
    parents: dict[str, str] = {}
    stack = ["WsupError"]
    for line in lines[1:]:
        body = line.lstrip("│├└─ ")
        if not body or not body[0].isalpha():
            break
        depth = (len(line) - len(body)) // 4
        name = body.split()[0]
        del stack[depth:]
        parents[name] = stack[-1]
        stack.append(name)
    return parents


def _real_tree(errors: dict[str, type[BaseException]]) -> dict[str, str]:
    return {
        name: error.__bases__[0].__name__ for name, error in errors.items() if name != "WsupError"
    }


def test_the_drawn_exception_trees_are_the_real_one() -> None:
    """docs/exceptions.md and supervisor._exceptions draw the whole tree as the classes
    define it; actors._exceptions draws the runtime's part."""
    everything = {**_exported_exceptions(actors), **_exported_exceptions(supervisor)}
    docs = Path(__file__).parents[1] / "docs" / "exceptions.md"
    assert _drawn_tree(docs.read_text(encoding="utf-8")) == _real_tree(everything)
    whole = importlib.import_module("supervisor._exceptions").__doc__
    assert whole is not None
    assert _drawn_tree(whole) == _real_tree(everything)
    runtime = importlib.import_module("actors._exceptions").__doc__
    assert runtime is not None
    assert _drawn_tree(runtime) == _real_tree(_exported_exceptions(actors))


DOCS = Path(__file__).parents[1] / "docs"
#: Pages that are not guides: the contributors' map, the history of changes and the
#: development set-up (the API reference lives in docs/reference/, not read here).
NOT_GUIDES = {"architecture.md", "changelog.md", "development.md"}
#: Internals that left ``actors.__all__``: still importable from their private
#: modules (for wsup itself and its tests), no longer the public API.
INTERNALS = {
    "BackoffState": "actors._policy",
    "Cell": "actors._actor",
    "Exit": "actors._actor",
    "ExitKind": "actors._actor",
    "IntensityWindow": "actors._policy",
    "LeaseAction": "actors._policy",
    "Mailbox": "actors._mailbox",
    "MemoryHistory": "actors._history",
    "Overflow": "actors._policy",
    "TimerService": "actors._timers",
    "decide_overflow": "actors._policy",
    "lease_step": "actors._policy",
    "next_deadline": "actors._timers",
}


def _code_in_guides() -> str:
    """The code of every guide in docs/: fenced blocks and inline code spans."""
    code: list[str] = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name in NOT_GUIDES:
            continue
        text = page.read_text(encoding="utf-8")
        code += re.findall(r"```.*?```", text, flags=re.DOTALL)
        code += re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return "\n".join(code)


@pytest.mark.parametrize(
    "package",
    [*PACKAGES, pytest.param(supervisor.lowlevel, id="supervisor.lowlevel")],
)
def test_every_public_name_is_shown_in_a_guide(package: types.ModuleType) -> None:
    """Each name of ``__all__`` appears as code in at least one guide of docs/, not only
    in the API reference: what users call is shown where they learn to call it."""
    code = _code_in_guides()
    unseen = [
        name
        for name in package.__all__
        if not re.search(r"(?<![\w])" + re.escape(name) + r"(?!\w)", code)
    ]
    assert unseen == []


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_internals_are_out_of_the_api_but_importable(name: str) -> None:
    """The runtime's internals are not public names of ``actors``; their private
    modules still have them (for wsup itself, its tests and its extensions)."""
    assert name not in actors.__all__
    assert not hasattr(actors, name)
    assert hasattr(importlib.import_module(INTERNALS[name]), name)
