"""The books of a relay's window, with no I/O: ``RelayWindow`` on the relay node,
``CreditLedger`` on the home node (see ``supervisor/server/_relay.py``, step 5).

The model: the relay forwards numbered messages while its window allows, and
asks when it is full; the home side queues what arrives, hands it on one at a
time, and gives the credit its ledger says; each way is in order, and may lose
any message. Whatever happens, the home side never holds more than the window,
and once nothing is lost any more, one question is enough to go on.
"""

from __future__ import annotations

from collections import deque

from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor.server._relay import CreditLedger, RelayWindow, window_for

OPS = ("send", "ask", "to_home", "to_relay", "take")


class Model:
    """A relay and its home side, joined by two lossy, ordered channels."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.relay = RelayWindow(size)
        self.ledger = CreditLedger(size)
        self.to_home: deque[tuple[str, int]] = deque()
        self.to_relay: deque[int] = deque()
        self.inbox: deque[int] = deque()
        self.holding: int | None = None  # left the inbox, not taken by the mailbox yet
        self.taken: list[int] = []

    def step(self, op: str, lost: bool) -> None:
        relay, ledger = self.relay, self.ledger
        if op == "send" and not relay.full():
            self.to_home.append(("in", relay.next()))
        elif op == "ask" and relay.full():
            self.to_home.append(("want", relay.sent))
        elif op == "to_home" and self.to_home:
            kind, number = self.to_home.popleft()
            if lost:
                return
            if kind == "in":
                assert len(self.inbox) < 2 * self.size, "a conforming relay overran"
                self.inbox.append(number)
            else:
                idle = not self.inbox and self.holding is None
                self.to_relay.append(ledger.asked(number, idle))
        elif op == "to_relay" and self.to_relay:
            number = self.to_relay.popleft()
            if not lost:
                relay.credit(number)
        elif op == "take":
            if self.holding is None and self.inbox:
                self.holding = self.inbox.popleft()
            elif self.holding is not None:
                number, self.holding = self.holding, None
                self.taken.append(number)
                credit = ledger.took(number, not self.inbox)
                if credit is not None:
                    self.to_relay.append(credit)

    def waiting_here(self) -> int:
        return len(self.inbox) + (self.holding is not None)

    def settle(self) -> None:
        """Deliver and take everything, losing nothing."""
        while self.to_home or self.to_relay or self.inbox or self.holding is not None:
            for op in ("to_home", "to_relay", "take"):
                self.step(op, False)


#: A relay that asks while its messages still wait on the home side: the answer
#: must not count them as taken (the relay would send a window more).
ASKED_WHILE_WAITING = [
    (op, 1) for op in ("send", "send", "ask", "to_home", "to_home", "to_home", "to_relay", "send")
] + [("to_home", 1)] * 2


@settings(max_examples=500)
@given(
    size=st.integers(1, 8),
    ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 5)), max_size=400),
)
@example(size=2, ops=ASKED_WHILE_WAITING)
def test_the_home_side_never_holds_more_than_the_window_and_one_question_unblocks(
    size: int, ops: list[tuple[str, int]]
) -> None:
    """Over any interleaving and any losses, the home side holds at most the window,
    takes in order, and once nothing is lost a full relay needs one question."""
    model = Model(size)
    for op, chance in ops:
        model.step(op, chance == 0)  # about one message in six is lost
        assert model.waiting_here() <= size
        assert 0 <= model.relay.sent - model.relay.acked <= size
    assert model.taken == sorted(set(model.taken))
    model.settle()
    if model.relay.full():
        model.step("ask", False)
        model.settle()
    assert not model.relay.full()


@given(size=st.integers(1, 8), count=st.integers(0, 200))
def test_without_losses_credit_keeps_a_relay_going_with_no_question(size: int, count: int) -> None:
    """A home side that takes everything gives credit often enough that a relay
    never waits long: after it settles, a relay that sent anything is not full."""
    model = Model(size)
    for _ in range(count):
        if model.relay.full():
            model.settle()
        assert not model.relay.full()
        model.step("send", False)
    model.settle()
    assert not model.relay.full()
    assert model.taken == list(range(1, count + 1))


def test_credit_is_a_number_not_an_increment() -> None:
    """A credit that comes late or twice changes nothing; one beyond what was sent
    counts up to what was sent only."""
    window = RelayWindow(4)
    for _ in range(4):
        window.next()
    assert window.full()
    assert window.credit(2)
    assert not window.credit(2)
    assert not window.credit(1)
    assert window.credit(9)
    assert window.acked == 4


def test_the_window_follows_the_mailbox_up_to_64() -> None:
    """The window is the route's mailbox capacity, at least 1 and at most 64."""
    assert [window_for(c) for c in (1, 4, 64, 256, 10_000)] == [1, 4, 64, 64, 64]
