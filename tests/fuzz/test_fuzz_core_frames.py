"""Fuzz: the connection core's frame fast path against websockets' parser alone.

The core takes whole, plain messages without websockets' parser
(``ConnectionCore._take_frames``); every other byte goes to the parser. Any
frames (plain, fragmented, control, broken, compressed), cut into reads at any
byte, must give the same messages, events, bytes written and close as a core
that sends every byte through the parser (:mod:`tests.helpers.core_frames`).
No socket: ``make fuzz`` runs it for its share of the budget.
"""

from __future__ import annotations

from tests.helpers.core_frames import check_same, streams
from tests.helpers.fuzz import Fuzzer


def test_the_frame_fast_path_equals_the_parser(fuzz: Fuzzer) -> None:
    """Same result, read after read, for every stream of frames."""
    fuzz.run(streams(), check_same)
