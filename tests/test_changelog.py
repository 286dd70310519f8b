"""CHANGELOG.md follows Keep a Changelog and covers the version the package reports."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

CHANGELOG = Path(__file__).resolve().parents[1] / "CHANGELOG.md"
SECTION = re.compile(r"^## \[(Unreleased|\d+\.\d+\.\d+)\](?: - (\d{4}-\d{2}-\d{2}))?$")
KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_changelog_sections_follow_keep_a_changelog() -> None:
    """Release headings are ``## [x.y.z] - YYYY-MM-DD`` (or Unreleased), kinds are the six."""
    lines = CHANGELOG.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# Changelog"
    releases = [line for line in lines if line.startswith("## ")]
    assert releases, "no release section"
    for heading in releases:
        match = SECTION.match(heading)
        assert match is not None, heading
        assert (match.group(1) == "Unreleased") == (match.group(2) is None), heading
    kinds = {line.removeprefix("### ") for line in lines if line.startswith("### ")}
    assert kinds <= KINDS


def test_changelog_covers_the_package_version() -> None:
    """The version ``wsup --version`` reports is a section, or the Unreleased one names it."""
    version = importlib.metadata.version("wsup")
    text = CHANGELOG.read_text(encoding="utf-8")
    top = text[text.index("\n## ") :].split("\n## ")[1]
    assert f"[{version}]" in top or version in top
