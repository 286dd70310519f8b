"""Tests for the keepalive state machine: pings, pongs, timeouts (pure, time passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import KeepaliveConfig
from supervisor.server._keepalive import Keepalive, KeepaliveAction, KeepaliveQueue, wake_time

NOTHING = KeepaliveAction.NOTHING
PING = KeepaliveAction.PING


def test_config_rejects_non_positive_durations() -> None:
    """Intervals and timeouts must be positive (None disables ping and idle)."""
    with pytest.raises(ValueError, match="ping_interval"):
        KeepaliveConfig(ping_interval=0)
    with pytest.raises(ValueError, match="ping_timeout"):
        KeepaliveConfig(ping_timeout=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        KeepaliveConfig(idle_timeout=-1)
    with pytest.raises(ValueError, match="message_timeout"):
        KeepaliveConfig(message_timeout=0)
    assert KeepaliveConfig(ping_interval=None, idle_timeout=None).ping_interval is None


def test_ping_is_due_after_the_interval() -> None:
    """Nothing is due before ping_interval; at it, a PING is due and recorded as sent."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5), now=100.0)
    assert ka.next_deadline() == 110.0
    assert ka.due(109.9) is NOTHING
    assert ka.due(110.0) is PING
    assert ka.ping_sent_at == 110.0
    assert ka.ping_payload != b""
    assert ka.pong_by == 115.0
    assert ka.next_deadline() == 115.0
    # A PING is due once: while it is outstanding, nothing new is due before pong_by.
    assert ka.due(112.0) is NOTHING


def test_pong_gives_the_round_trip_time_and_schedules_the_next_ping() -> None:
    """The matching pong returns the RTT, clears the outstanding ping and re-arms the ping."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5), now=0.0)
    assert ka.due(10.0) is PING
    assert ka.on_pong(ka.ping_payload, 10.25) == pytest.approx(0.25)
    assert ka.pong_by is None
    assert ka.ping_at == pytest.approx(20.25)
    assert ka.due(16.0) is NOTHING
    assert ka.due(20.25) is PING


def test_a_pong_that_does_not_match_is_ignored() -> None:
    """An unsolicited pong or one with another payload answers nothing."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5), now=0.0)
    assert ka.on_pong(b"", 1.0) is None  # no ping outstanding
    assert ka.due(10.0) is PING
    assert ka.on_pong(b"not ours", 11.0) is None
    assert ka.pong_by == 15.0
    assert ka.due(15.0) is KeepaliveAction.PONG_TIMEOUT


def test_each_ping_has_a_fresh_payload() -> None:
    """Consecutive pings carry different payloads, so a late pong cannot answer a newer ping."""
    ka = Keepalive(KeepaliveConfig(ping_interval=1, ping_timeout=1), now=0.0)
    assert ka.due(1.0) is PING
    first = ka.ping_payload
    assert ka.on_pong(first, 1.5) == pytest.approx(0.5)
    assert ka.due(2.5) is PING
    assert ka.ping_payload != first
    assert ka.on_pong(first, 2.6) is None


def test_pong_timeout_is_due_when_no_pong_comes() -> None:
    """Without a pong, PONG_TIMEOUT is due at ping_sent + ping_timeout, and stays due."""
    ka = Keepalive(KeepaliveConfig(ping_interval=2, ping_timeout=3), now=0.0)
    assert ka.due(2.0) is PING
    assert ka.due(4.99) is NOTHING
    assert ka.due(5.0) is KeepaliveAction.PONG_TIMEOUT
    assert ka.due(50.0) is KeepaliveAction.PONG_TIMEOUT


def test_a_frame_from_the_peer_pushes_the_ping_back() -> None:
    """Any complete frame proves the peer alive: the next ping moves to now + interval."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5), now=0.0)
    ka.on_frame(8.0)
    assert ka.ping_at == 18.0
    assert ka.due(10.0) is NOTHING
    assert ka.next_deadline() == 18.0
    assert ka.due(18.0) is PING


def test_a_frame_does_not_answer_an_outstanding_ping() -> None:
    """A frame while a ping is outstanding neither clears it nor moves its timeout."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5), now=0.0)
    assert ka.due(10.0) is PING
    ka.on_frame(12.0)
    assert ka.pong_by == 15.0
    assert ka.due(15.0) is KeepaliveAction.PONG_TIMEOUT


def test_idle_timeout_closes_a_connection_without_messages() -> None:
    """IDLE_TIMEOUT is due idle_timeout after the last message, whatever pings do."""
    ka = Keepalive(KeepaliveConfig(ping_interval=1, ping_timeout=100, idle_timeout=5), now=0.0)
    assert ka.due(1.0) is PING
    assert ka.on_pong(ka.ping_payload, 1.1) is not None
    ka.on_frame(3.0)  # a ping or pong is a frame, not a message: it does not count
    ka.on_message(4.0)
    assert ka.idle_by == 9.0
    assert ka.due(8.9) is PING
    assert ka.due(9.0) is KeepaliveAction.IDLE_TIMEOUT


def test_idle_timeout_wins_over_an_outstanding_ping() -> None:
    """When both are due, the idle timeout is reported."""
    ka = Keepalive(KeepaliveConfig(ping_interval=1, ping_timeout=10, idle_timeout=2), now=0.0)
    assert ka.due(1.0) is PING
    assert ka.due(2.0) is KeepaliveAction.IDLE_TIMEOUT


def test_a_message_left_unfinished_is_due_at_its_deadline_however_alive_the_peer() -> None:
    """The message deadline starts once, is not moved by frames or pongs, and is off
    once nothing is unfinished."""
    ka = Keepalive(KeepaliveConfig(ping_interval=10, ping_timeout=5, message_timeout=30), 0.0)
    assert ka.message_by is None
    assert ka.on_unfinished(2.0) is False  # the ping at 10 comes first: no need to look sooner
    assert ka.message_by == 32.0
    for now in range(3, 32):
        ka.on_frame(float(now))  # every fragment is a sign of life...
        assert ka.on_unfinished(float(now)) is False  # ...and the deadline stays put
        assert ka.due(float(now)) is NOTHING
    assert ka.due(32.0) is KeepaliveAction.MESSAGE_TIMEOUT
    ka.on_finished()
    assert ka.message_by is None
    assert ka.due(33.0) is NOTHING


def test_an_unfinished_message_earlier_than_every_other_deadline_asks_to_look_sooner() -> None:
    """When the message deadline comes before the one the server waits for, say so."""
    quiet = Keepalive(KeepaliveConfig(ping_interval=None, message_timeout=5), 0.0)
    assert quiet.next_deadline() is None
    assert quiet.on_unfinished(1.0) is True
    assert quiet.next_deadline() == 6.0
    ka = Keepalive(KeepaliveConfig(ping_interval=60, message_timeout=5), 0.0)
    assert ka.on_unfinished(1.0) is True
    assert ka.next_deadline() == 6.0
    off = Keepalive(KeepaliveConfig(message_timeout=None), 0.0)
    assert off.on_unfinished(1.0) is False
    assert off.message_by is None


def test_disabled_keepalive_has_no_deadline() -> None:
    """With neither pings nor idle timeout, nothing is ever due."""
    ka = Keepalive(KeepaliveConfig(ping_interval=None, idle_timeout=None), now=0.0)
    assert ka.next_deadline() is None
    assert ka.due(1e9) is NOTHING
    ka.on_frame(5.0)
    ka.on_message(5.0)
    assert ka.next_deadline() is None


def test_idle_only_keepalive_never_pings() -> None:
    """ping_interval=None with an idle timeout: only the idle deadline exists."""
    ka = Keepalive(KeepaliveConfig(ping_interval=None, idle_timeout=3), now=0.0)
    assert ka.next_deadline() == 3.0
    assert ka.due(2.0) is NOTHING
    assert ka.due(3.0) is KeepaliveAction.IDLE_TIMEOUT


@given(
    interval=st.floats(min_value=0.01, max_value=100),
    timeout=st.floats(min_value=0.01, max_value=100),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=50), st.sampled_from(["frame", "pong", "due"])),
        max_size=50,
    ),
)
def test_nothing_is_due_before_the_next_deadline(
    interval: float, timeout: float, steps: list[tuple[float, str]]
) -> None:
    """due() never acts before next_deadline(), and a PING is never sent twice without a pong."""
    ka = Keepalive(KeepaliveConfig(ping_interval=interval, ping_timeout=timeout), now=0.0)
    now = 0.0
    for gap, event in steps:
        now += gap
        deadline = ka.next_deadline()
        assert deadline is not None
        outstanding = ka.ping_sent_at is not None
        if event == "frame":
            ka.on_frame(now)
        elif event == "pong":
            ka.on_pong(ka.ping_payload, now)
        else:
            action = ka.due(now)
            if now < deadline:
                assert action is NOTHING
            if action is PING:
                assert not outstanding
            if action is KeepaliveAction.PONG_TIMEOUT:
                assert outstanding


def test_slack_is_a_twentieth_of_the_shortest_period_at_most_a_quarter_second() -> None:
    assert KeepaliveConfig().slack == 0.25  # 20 s ping interval and timeout
    assert KeepaliveConfig(ping_interval=1.0, ping_timeout=2.0).slack == pytest.approx(0.05)
    assert KeepaliveConfig(ping_interval=None, idle_timeout=0.2).slack == pytest.approx(0.01)
    assert KeepaliveConfig(ping_interval=60, ping_timeout=60, idle_timeout=600).slack == 0.25


@given(
    deadline=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    slack=st.sampled_from([0.25, 0.05, 0.01, 0.001]),
)
def test_wake_time_is_never_early_and_at_most_one_slack_late(deadline: float, slack: float) -> None:
    wake = wake_time(deadline, slack)
    assert deadline <= wake <= deadline + slack * (1 + 1e-9)


@given(
    slot=st.integers(min_value=0, max_value=10**6),
    offsets=st.lists(st.floats(min_value=0.001, max_value=0.999), min_size=2, max_size=20),
)
def test_deadlines_in_one_slot_share_a_wake_up(slot: int, offsets: list[float]) -> None:
    slack = 0.25
    wakes = {wake_time((slot + offset) * slack, slack) for offset in offsets}
    assert len(wakes) == 1


# -- the server's queue of keepalive deadlines ------------------------------------------------

# An operation on KeepaliveQueue: (what, key, time); times only move forward, as the
# clock does, but a first deadline may come out of order (a clock moved by hand).
_QUEUE_OPS = st.lists(
    st.tuples(
        st.sampled_from(["opened", "schedule", "forget", "pop"]),
        st.integers(0, 5),
        st.floats(0, 50, allow_nan=False),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(_QUEUE_OPS)
def test_queue_keeps_each_keys_earliest_deadline(ops: list[tuple[str, int, float]]) -> None:
    """Against a dict of each key's one live deadline: ``pop_due`` returns exactly the
    keys due, a moved deadline counts only when earlier, ``earliest`` is never later
    than the earliest live deadline, and a forgotten key never comes back."""
    queue: KeepaliveQueue[int] = KeepaliveQueue()
    model: dict[int, float] = {}
    now = 0.0
    for what, key, value in ops:
        if what == "opened":
            if key in model:
                continue  # a connection opens once
            queue.opened(key, now + value)
            model[key] = now + value
        elif what == "schedule":
            deadline = now + value
            moved = queue.schedule(key, deadline)
            assert moved == (key not in model or deadline < model[key])
            if moved:
                model[key] = deadline
        elif what == "forget":
            queue.forget(key)
            model.pop(key, None)
        else:
            now += value
            due = queue.pop_due(now)
            assert sorted(due) == sorted(k for k, d in model.items() if d <= now)
            for k in due:
                del model[k]
        assert len(queue) == len(model)
        earliest = queue.earliest()
        if model:
            assert earliest is not None
            assert earliest[0] <= min(model.values())


def test_first_deadlines_in_order_cost_no_heap_entry() -> None:
    """Connections that open and close before their first deadline leave nothing
    behind; they come due in the order they opened."""
    queue: KeepaliveQueue[int] = KeepaliveQueue()
    for key in range(1000):
        queue.opened(key, 20.0 + key * 0.001)
    for key in range(0, 1000, 2):
        queue.forget(key)
    assert not queue._heap
    assert queue.earliest() == (20.001, 1)
    assert queue.pop_due(20.01) == [1, 3, 5, 7, 9]
    assert len(queue) == 495
