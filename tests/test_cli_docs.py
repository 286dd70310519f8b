"""The command line's documentation covers the command line: every option, variable, extra.

The option list comes from the real parser, so an option added to ``wsup serve``
without a row in the server guide's table fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from supervisor import cli

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "server.md"


def serve_options() -> list[str]:
    """The long options of ``wsup serve``, from the parser itself."""
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return [
        option
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


def cli_table() -> str:
    """The rows of the option table in the server guide's command-line section."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text[text.index("## The command line") :]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `--"))


def test_every_serve_option_has_a_row_with_its_variable() -> None:
    """Each ``wsup serve --option`` has a row naming its ``WSUP_*`` variable."""
    table = cli_table()
    missing: list[str] = []
    for option in serve_options():
        variable = "WSUP_" + option.removeprefix("--").replace("-", "_").upper()
        row = re.search(rf"^\| `{re.escape(option)}[ `].*$", table, re.MULTILINE)
        if row is None or f"`{variable}`" not in row.group(0):
            missing.append(f"{option} ({variable})")
    assert {"--metrics-port", "--redis", "--workers"} <= set(serve_options())
    assert not missing, f"options without a row (or its variable) in docs/server.md: {missing}"


def test_the_extras_are_named_where_they_are_needed() -> None:
    """The trio backend and the Redis backplane say which extra to install."""
    assert "pip install 'wsup[trio]'" in GUIDE.read_text(encoding="utf-8")
    assert "pip install 'wsup[redis]'" in (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")


def test_the_exit_statuses_and_version_are_documented() -> None:
    """The guide lists every exit status the command uses, and ``wsup --version``."""
    text = GUIDE.read_text(encoding="utf-8")
    for status in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert status in text
    assert "`wsup --version`" in text
