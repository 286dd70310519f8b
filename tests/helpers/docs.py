"""Check that the code blocks of a documentation page are the example files, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: example paths in block headers are relative to it."""


def assert_blocks_are_files(blocks: list[str], header: re.Pattern[str], where: str) -> None:
    """Assert that each block names its file on line one and equals that file exactly.

    Args:
        blocks: the bodies of the page's ```python blocks, in order (at least one).
        header: matches a block's first line; group 1 is the file's path from the root.
        where: how the messages name the page, such as ``"in the guide"``.
    """
    assert blocks
    for block in blocks:
        found = header.match(block)
        assert found is not None, f"a python block does not start with its file:\n{block[:200]}"
        path = ROOT / found.group(1)
        assert path.is_file(), f"{found.group(1)} is quoted {where} but does not exist"
        assert block == path.read_text(encoding="utf-8"), (
            f"{found.group(1)} differs from its copy {where}"
        )
