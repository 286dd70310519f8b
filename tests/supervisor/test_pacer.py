"""The asyncio path's pacing of requests per turn of the loop (``supervisor.server._aio.Pacer``)."""

from __future__ import annotations

import asyncio

from supervisor.server._aio import Pacer


class _Waiting:
    """What the pacer asks of a ``HandshakeProtocol``: take the request it kept."""

    def __init__(self, name: str, taken: list[str], open_: bool = True) -> None:
        self.name = name
        self.taken = taken
        self.open = open_

    def run_paced(self) -> bool:
        if self.open:
            self.taken.append(self.name)
        return self.open


def _one_turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.stop()
    loop.run_forever()  # stopped first: one turn of the loop, then back


def test_past_the_budget_requests_wait_and_are_taken_a_few_per_turn_in_order() -> None:
    """Two per turn: the first two now, the others two a turn in the order they came;
    one whose socket closed meanwhile takes no share of a turn."""
    loop = asyncio.new_event_loop()
    try:
        taken: list[str] = []
        pacer = Pacer(loop, 2)
        waiting = [_Waiting(name, taken, open_=name != "d") for name in "abcdef"]
        now = [pacer.take(w) for w in waiting]  # type: ignore[arg-type]
        assert now == [True, True, False, False, False, False]
        assert pacer.waiting == 4
        _one_turn(loop)
        assert taken == ["c", "e"]
        _one_turn(loop)
        assert (taken, pacer.waiting) == (["c", "e", "f"], 0)
        assert pacer.take(_Waiting("g", taken))  # type: ignore[arg-type]
    finally:
        loop.close()
