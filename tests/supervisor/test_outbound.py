"""Tests for the outbound buffer and its slow-consumer decision (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from actors import Record
from supervisor.server._outbound import (
    WRITE_BATCH,
    OutboundBuffer,
    OutboundItem,
    OutboundVerdict,
    SlowConsumerPolicy,
    decide_outbound,
    frame_header,
    wire_message,
)

policies = st.sampled_from(list(SlowConsumerPolicy))
# An operation on the buffer: offer a message of that many bytes, or let the writer take all.
operations = st.lists(
    st.one_of(st.integers(min_value=0, max_value=300), st.just("take")), max_size=200
)

_OVER_LIMIT = {
    SlowConsumerPolicy.BLOCK: OutboundVerdict.WAIT,
    SlowConsumerPolicy.DROP_OLDEST: OutboundVerdict.EVICT_OLDEST,
    SlowConsumerPolicy.DROP_NEWEST: OutboundVerdict.DROP_NEWEST,
    SlowConsumerPolicy.DISCONNECT: OutboundVerdict.DISCONNECT,
}


def _item(size: int, tag: int = 0) -> OutboundItem:
    """Return a binary message of ``size`` bytes whose first byte (if any) is ``tag``."""
    return OutboundItem(bytes([tag % 256]) + bytes(size - 1) if size else b"", text=False)


def _offer(buffer: OutboundBuffer, item: OutboundItem) -> OutboundVerdict:
    """Offer ``item`` the way the connection does: apply the verdict to the buffer."""
    verdict = buffer.verdict(len(item.payload))
    if verdict is OutboundVerdict.EVICT_OLDEST:
        buffer.evict_for(len(item.payload))
        buffer.append(item)
    elif verdict is OutboundVerdict.ACCEPT:
        buffer.append(item)
    return verdict


# --- decide_outbound -------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(SlowConsumerPolicy))
def test_a_message_that_fits_is_accepted_under_every_policy(policy: SlowConsumerPolicy) -> None:
    """A message that fits under the limit (exactly, too) is accepted whatever the policy."""
    assert decide_outbound(policy, 0, 10, 100) is OutboundVerdict.ACCEPT
    assert decide_outbound(policy, 60, 40, 100) is OutboundVerdict.ACCEPT
    assert decide_outbound(policy, 99, 0, 100) is OutboundVerdict.ACCEPT


@pytest.mark.parametrize("policy", list(SlowConsumerPolicy))
def test_an_oversize_message_into_an_empty_buffer_is_accepted(policy: SlowConsumerPolicy) -> None:
    """One message larger than the limit is accepted into an empty buffer (else never sent)."""
    assert decide_outbound(policy, 0, 1_000, 100) is OutboundVerdict.ACCEPT


@pytest.mark.parametrize(("policy", "verdict"), list(_OVER_LIMIT.items()))
def test_a_message_over_the_limit_meets_the_policy(
    policy: SlowConsumerPolicy, verdict: OutboundVerdict
) -> None:
    """One byte over the limit of a non-empty buffer gives the policy's verdict."""
    assert decide_outbound(policy, 60, 41, 100) is verdict
    assert decide_outbound(policy, 1, 1_000, 100) is verdict


@given(
    policy=policies,
    buffered=st.integers(min_value=0, max_value=10_000),
    size=st.integers(min_value=0, max_value=10_000),
    limit=st.integers(min_value=1, max_value=10_000),
)
def test_decide_outbound_accepts_exactly_what_fits(
    policy: SlowConsumerPolicy, buffered: int, size: int, limit: int
) -> None:
    """ACCEPT if and only if the buffer is empty or the message fits; else the policy's verdict."""
    verdict = decide_outbound(policy, buffered, size, limit)
    if buffered == 0 or buffered + size <= limit:
        assert verdict is OutboundVerdict.ACCEPT
    else:
        assert verdict is _OVER_LIMIT[policy]


# --- OutboundBuffer ---------------------------------------------------------------------


def test_limit_must_be_positive() -> None:
    """A buffer needs a limit of at least one byte."""
    with pytest.raises(ValueError, match=">= 1 byte"):
        OutboundBuffer(0, SlowConsumerPolicy.BLOCK)


@given(
    policy=policies,
    limit=st.integers(min_value=1, max_value=1_000),
    ops=operations,
)
def test_buffer_never_exceeds_its_limit_but_for_one_oversize_message(
    policy: SlowConsumerPolicy, limit: int, ops: list[int | str]
) -> None:
    """The buffer holds at most ``limit`` bytes, or a single message bigger than the limit."""
    buffer = OutboundBuffer(limit, policy)
    for tag, op in enumerate(ops):
        if op == "take":
            buffer.take_all()
        else:
            assert isinstance(op, int)
            _offer(buffer, _item(op, tag))
        assert buffer.bytes == sum(len(i.payload) for i in list(buffer._items))
        # Empty messages take no room: "one message" means one that is not empty.
        assert buffer.bytes <= limit or sum(1 for i in buffer._items if i.payload) == 1
        assert buffer.bytes >= 0


@given(limit=st.integers(min_value=1, max_value=500), sizes=st.lists(st.integers(1, 200)))
def test_drop_oldest_evicts_from_the_front_and_keeps_order(limit: int, sizes: list[int]) -> None:
    """drop_oldest drops the oldest messages first; the survivors are the newest, in order."""
    buffer = OutboundBuffer(limit, SlowConsumerPolicy.DROP_OLDEST)
    for tag, size in enumerate(sizes):
        _offer(buffer, OutboundItem(tag.to_bytes(4, "big") + bytes(size), text=False))
    kept = [int.from_bytes(i.payload[:4], "big") for i in buffer.take_all()]
    # The survivors are a contiguous run of the newest messages, oldest first.
    assert kept == list(range(len(sizes) - len(kept), len(sizes)))
    assert buffer.dropped == len(sizes) - len(kept)


def test_evict_for_drops_just_enough_oldest_messages() -> None:
    """evict_for stops as soon as the new message fits, and counts what it dropped."""
    buffer = OutboundBuffer(10, SlowConsumerPolicy.DROP_OLDEST)
    for tag in range(5):
        buffer.append(OutboundItem(bytes([tag, tag]), text=False))
    assert buffer.bytes == 10
    assert buffer.evict_for(3) == 2
    assert [i.payload[0] for i in buffer.take_all()] == [2, 3, 4]
    assert buffer.dropped == 2


def test_evict_for_empties_the_buffer_for_an_oversize_message() -> None:
    """A message bigger than the limit evicts everything, then goes into the empty buffer."""
    buffer = OutboundBuffer(10, SlowConsumerPolicy.DROP_OLDEST)
    buffer.append(OutboundItem(b"abc", text=True))
    buffer.append(OutboundItem(b"defg", text=True))
    assert _offer(buffer, OutboundItem(bytes(50), text=False)) is OutboundVerdict.EVICT_OLDEST
    assert len(buffer) == 1
    assert buffer.bytes == 50
    assert buffer.dropped == 2


def test_take_all_returns_everything_oldest_first_and_empties() -> None:
    """take_all hands the writer every message in order and leaves an empty buffer."""
    buffer = OutboundBuffer(100, SlowConsumerPolicy.BLOCK)
    items = [OutboundItem(b"one", text=True), OutboundItem(b"\x02", text=False)]
    for item in items:
        buffer.append(item)
    assert len(buffer) == 2
    assert buffer.bytes == 4
    assert buffer.take_all() == items
    assert len(buffer) == 0
    assert buffer.bytes == 0
    assert buffer.take_all() == []


def test_clear_discards_and_counts() -> None:
    """clear empties the buffer and says how many messages it discarded."""
    buffer = OutboundBuffer(100, SlowConsumerPolicy.DISCONNECT)
    for _ in range(3):
        buffer.append(OutboundItem(b"x", text=True))
    assert buffer.clear() == 3
    assert buffer.bytes == 0
    assert not buffer
    assert buffer.clear() == 0


def test_take_hands_out_a_batch_of_whole_messages() -> None:
    """take(budget) returns the oldest messages until they reach the budget; the rest stays."""
    buffer = OutboundBuffer(1000, SlowConsumerPolicy.BLOCK)
    for tag in range(10):
        buffer.append(_item(30, tag))
    batch = buffer.take(100)
    assert [i.payload[0] for i in batch] == [0, 1, 2, 3]  # 120 bytes: the 4th reaches 100
    assert (len(buffer), buffer.bytes) == (6, 180)
    assert buffer.take(0) == []
    assert [i.payload[0] for i in buffer.take(WRITE_BATCH)] == [4, 5, 6, 7, 8, 9]
    assert (len(buffer), buffer.bytes) == (0, 0)
    buffer.append(_item(500))
    assert len(buffer.take(100)) == 1  # one message bigger than the budget goes whole


def test_control_frames_come_out_in_whole_chunks_within_the_budget() -> None:
    """take_control(budget) returns the oldest chunks, whole, until they reach the budget."""
    buffer = OutboundBuffer(1000, SlowConsumerPolicy.DROP_OLDEST)
    for tag in range(5):
        buffer.append_control(bytes([0x8A, 2, tag, tag]))
    assert buffer.take_control(6) == bytes([0x8A, 2, 0, 0, 0x8A, 2, 1, 1])
    assert buffer.bytes == 12
    assert buffer.take_control(1) == bytes([0x8A, 2, 2, 2])  # at least one chunk
    assert buffer.take_control(WRITE_BATCH) == bytes([0x8A, 2, 3, 3, 0x8A, 2, 4, 4])
    assert (bool(buffer), buffer.bytes) == (False, 0)
    buffer.append_control(bytes(40))
    buffer.append_control(bytes(40))
    assert len(buffer.take_control(50)) == 80  # the last chunk crosses the budget
    assert (bool(buffer), buffer.bytes, buffer.control_bytes) == (False, 0, 0)


def test_control_frames_are_always_queued_and_count_against_the_limit() -> None:
    """Control frames are queued over the limit too; a message offered then meets the policy."""
    buffer = OutboundBuffer(10, SlowConsumerPolicy.DISCONNECT)
    buffer.append(_item(4))
    assert buffer.append_control(b"\x8a\x00") is OutboundVerdict.ACCEPT
    assert buffer.append_control(b"\x8a\x05hello") is OutboundVerdict.DISCONNECT
    assert (len(buffer), buffer.bytes) == (1, 13)  # queued although over the limit
    assert buffer.verdict(1) is OutboundVerdict.DISCONNECT
    assert buffer.take_control(WRITE_BATCH) == b"\x8a\x00\x8a\x05hello"
    assert buffer.take_control(WRITE_BATCH) == b""
    assert (len(buffer), buffer.bytes) == (1, 4)
    assert buffer.append_control(b"\x8a\x00") is OutboundVerdict.ACCEPT
    assert len(buffer.take_all()) == 1
    assert buffer.bytes == 2  # the control frames are still there
    assert buffer
    assert buffer.clear() == 0
    assert (bool(buffer), buffer.bytes) == (False, 0)


@given(
    policy=policies,
    limit=st.integers(min_value=1, max_value=1_000),
    ops=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=300),
            st.tuples(st.just("control"), st.integers(min_value=2, max_value=127)),
            st.sampled_from(["take", "take_control", "batch"]),
        ),
        max_size=100,
    ),
)
def test_bytes_are_what_the_buffer_holds_and_control_frames_are_never_dropped(
    policy: SlowConsumerPolicy, limit: int, ops: list[int | str | tuple[str, int]]
) -> None:
    """bytes is the queued payloads plus control frames; every control byte comes out once."""
    buffer = OutboundBuffer(limit, policy)
    control_in = control_out = 0
    for tag, op in enumerate(ops):
        if isinstance(op, tuple):
            buffer.append_control(bytes(op[1]))
            control_in += op[1]
        elif op == "take":
            buffer.take_all()
        elif op == "batch":
            buffer.take(64)
        elif op == "take_control":
            control_out += len(buffer.take_control(64))
        else:
            assert isinstance(op, int)
            _offer(buffer, _item(op, tag))
        control = control_in - control_out
        assert buffer.bytes == sum(len(i.payload) for i in list(buffer._items)) + control
        assert bool(buffer) == (len(buffer) > 0 or control > 0)


@pytest.mark.parametrize(
    "policy",
    [SlowConsumerPolicy.BLOCK, SlowConsumerPolicy.DROP_NEWEST, SlowConsumerPolicy.DISCONNECT],
)
def test_policies_other_than_drop_oldest_leave_the_buffer_alone(
    policy: SlowConsumerPolicy,
) -> None:
    """WAIT, DROP_NEWEST and DISCONNECT verdicts never change what is queued."""
    buffer = OutboundBuffer(4, policy)
    assert _offer(buffer, OutboundItem(b"abc", text=True)) is OutboundVerdict.ACCEPT
    assert _offer(buffer, OutboundItem(b"de", text=True)) is _OVER_LIMIT[policy]
    assert [i.payload for i in buffer.take_all()] == [b"abc"]
    assert buffer.dropped == 0


@given(text=st.booleans(), length=st.integers(min_value=0, max_value=70_000))
@example(text=False, length=125)
@example(text=False, length=126)
@example(text=True, length=0xFFFF)
@example(text=True, length=0x10000)
def test_frame_header_matches_websockets_serializer(text: bool, length: int) -> None:
    payload = bytes(length)
    opcode = Opcode.TEXT if text else Opcode.BINARY
    expected = Frame(opcode, payload).serialize(mask=False)
    assert frame_header(text, length) + payload == expected


def test_frame_header_covers_the_64_bit_length_form() -> None:
    # Beyond 0xFFFF the length takes 8 bytes; checked without a 4 GiB payload.
    header = frame_header(False, 2**32 + 5)
    assert header == bytes([0x82, 127]) + (2**32 + 5).to_bytes(8, "big")


# --- wire_message -----------------------------------------------------------------------


def test_wire_message_keeps_text_and_bytes_and_makes_the_rest_json() -> None:
    """str stays text, every bytes-like object becomes bytes, anything else JSON text."""
    assert wire_message("hé") == "hé"
    assert wire_message(b"\x00") == b"\x00"
    assert wire_message(bytearray(b"ab")) == b"ab"
    assert type(wire_message(bytearray(b"ab"))) is bytes
    assert wire_message(memoryview(b"cd")) == b"cd"
    assert wire_message({"n": 1}) == '{"n": 1}'
    assert wire_message([1, "x"]) == '[1, "x"]'
    assert wire_message(None) == "null"


def test_wire_message_forwards_a_records_message_without_its_position() -> None:
    """A message to an address with history goes out as its message alone."""
    assert wire_message(Record("room:a", "e", 3, "hi")) == "hi"
    assert wire_message(Record("room:a", "e", 4, bytearray(b"ab"))) == b"ab"
    assert wire_message(Record("room:a", "e", 5, {"n": 1})) == '{"n": 1}'


def test_wire_message_names_what_it_cannot_encode() -> None:
    with pytest.raises(TypeError, match="object"):
        wire_message(object())
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        wire_message(loop)
