"""The docs site's own tooling: a docstring cleaner for the build, a check of its output.

It lives beside the pages it builds, not in the test suite: ``mkdocs.yml``
loads the extension and ``make docs`` runs the check; no test imports it.
``mkdocs.yml`` keeps this directory out of the site (``exclude_docs``).

:class:`SphinxRoles` is a griffe extension (``mkdocs.yml`` loads it): the
docstrings cross-reference with Sphinx roles (``:class:`App```), which Markdown
would show as written; it turns each into plain code (``App``).

Run by ``make docs`` after ``mkdocs build --strict``, :func:`main` checks that
every public name has its entry in the API reference::

    python docs/_tools/docs_site.py site

mkdocstrings gives each documented object an HTML ``id`` equal to its full
dotted path; a name of ``__all__`` without one was left out of the reference
(a filter, an alias that did not resolve, a page that lost its ``:::`` line).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import griffe

#: Public module → the reference page (under the site directory) that documents it.
REFERENCE_PAGES = {
    "actors": "reference/actors/index.html",
    "supervisor": "reference/supervisor/index.html",
    "supervisor.metrics": "reference/metrics/index.html",
    "supervisor.lowlevel": "reference/lowlevel/index.html",
}


_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in docstrings as ``target`` in code style."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Clean one object's docstring (called for every object griffe loads)."""
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)


def missing_names(site: Path) -> list[str]:
    """Return ``module.name`` for every name of a module's ``__all__`` absent from its page."""
    missing: list[str] = []
    for module_name, page in REFERENCE_PAGES.items():
        module = importlib.import_module(module_name)
        html = (site / page).read_text(encoding="utf-8")
        ids = set(re.findall(r'id="([^"]+)"', html))
        missing += [
            f"{module_name}.{name}" for name in module.__all__ if f"{module_name}.{name}" not in ids
        ]
    return missing


def main(argv: list[str]) -> int:
    """Print what is missing and return 1, or return 0."""
    site = Path(argv[0] if argv else "site")
    missing = missing_names(site)
    for name in missing:
        print(f"docs: {name} is public but missing from the API reference", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
