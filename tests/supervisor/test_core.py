"""Tests for the Sans-I/O connection core: bytes and clock readings in, messages,
events and bytes out. No sockets, no event loop: a client's frames are built
with websockets' serializer, and what the core writes is parsed back with a
websockets ``ClientProtocol``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from supervisor.server._core import (
    ARM_CLOSE_TIMER,
    FAILED,
    RESCHEDULE,
    CloseRecorded,
    ConnectionCore,
    MessagesDropped,
    PongReceived,
)
from supervisor.server._keepalive import KeepaliveAction, KeepaliveConfig
from supervisor.server._outbound import (
    WRITE_BATCH,
    OutboundItem,
    OutboundVerdict,
    SlowConsumerPolicy,
    frame_header,
)
from tests.helpers import core_frames
from tests.helpers.core_frames import KEEPALIVE, Counters


def make_core(
    limit: int = 1 << 20,
    policy: SlowConsumerPolicy = SlowConsumerPolicy.BLOCK,
    *,
    max_fragments: int = 1024,
    deflate: bool = False,
    keepalive: KeepaliveConfig = KEEPALIVE,
) -> tuple[ConnectionCore, Counters]:
    return core_frames.make_core(
        ConnectionCore,
        limit=limit,
        policy=policy,
        max_fragments=max_fragments,
        deflate=deflate,
        keepalive=keepalive,
    )


def frame(opcode: Opcode, data: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame (masked) as it arrives on the wire."""
    return Frame(opcode, data, fin).serialize(mask=True)


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(Opcode.CLOSE, Close(code, reason).serialize())


class Client:
    """Parses what the core writes, as the client would."""

    def __init__(self, *, deflate: bool = False) -> None:
        self.protocol = ClientProtocol(parse_uri("ws://test/"), state=State.OPEN)
        if deflate:
            self.protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]

    def frames(self, chunks: list[bytes]) -> list[Frame]:
        data = b"".join(chunks)
        self.protocol.receive_data(data)
        if chunks and chunks[-1] == b"":
            self.protocol.receive_eof()
        return [e for e in self.protocol.events_received() if isinstance(e, Frame)]


def drain(core: ConnectionCore) -> list[bytes]:
    """Everything the core has to write now, batch after batch."""
    chunks: list[bytes] = []
    while True:
        batch = core.data_to_send()
        chunks.extend(batch)
        if not core.outbound or not batch:
            return chunks


# --- reading ---------------------------------------------------------------------------------


def test_messages_of_one_read_come_out_in_order_and_are_counted_per_read() -> None:
    core, counters = make_core()
    data = frame(Opcode.TEXT, "hé".encode()) + frame(Opcode.BINARY, b"\x00\x01")
    assert core.receive_data(data, 1.0) == ["hé", b"\x00\x01"]
    assert core.messages_in == 2
    assert core.bytes_in == len(data)
    assert counters.received_text.total == 0  # counted once the read is settled
    assert core.after_read(1.0) is False  # nothing to write
    assert (counters.received_text.total, counters.received_binary.total) == (1, 1)
    assert counters.received_bytes.total == len("hé".encode()) + 2
    assert core.events is None


def test_a_message_split_across_reads_and_fragments_is_assembled_once() -> None:
    core, _ = make_core()
    first = frame(Opcode.TEXT, b"ab", fin=False)
    assert core.receive_data(first[:3], 1.0) == []
    assert core.receive_data(first[3:], 1.0) == []
    assert core.partial == (2, 1)
    assert core.receive_data(frame(Opcode.CONT, b"cd", fin=False), 1.0) == []
    assert core.partial == (4, 2)
    assert core.receive_data(frame(Opcode.CONT, b"e"), 1.0) == ["abcde"]
    assert core.partial == (0, 0)
    assert core.messages_in == 1


def test_only_complete_frames_push_the_next_ping_back() -> None:
    """Bytes of a frame not yet complete are no sign of life; a complete one is."""
    core, _ = make_core()
    assert core.keepalive.ping_at == 10.0
    data = frame(Opcode.BINARY, b"x" * 100)
    core.receive_data(data[:50], 5.0)
    assert core.keepalive.ping_at == 10.0
    core.receive_data(data[50:], 7.0)
    assert core.keepalive.ping_at == 17.0


def test_fragments_trickled_with_pongs_between_them_meet_the_message_deadline() -> None:
    """A message in fragments, each one a sign of life, every ping answered in between:
    the deadline set by its first fragment still comes; a finished message clears it."""
    core, _ = make_core(keepalive=KeepaliveConfig(ping_interval=10, message_timeout=60))
    assert core.receive_data(frame(Opcode.TEXT, b"a", fin=False), 1.0) == []
    assert core.keepalive.message_by == 61.0
    pongs = 0
    for now in (13.0, 25.0, 37.0, 49.0):
        assert core.keepalive.due(now) is KeepaliveAction.PING
        core.ping(core.keepalive.ping_payload)
        drain(core)
        pong = frame(Opcode.PONG, core.keepalive.ping_payload)
        assert core.receive_data(pong + frame(Opcode.CONT, b"", fin=False), now) == []
        pongs += core.take_events().count(PongReceived(0.0))
    assert pongs == 4
    assert core.keepalive.message_by == 61.0
    assert core.keepalive.due(60.0) is not KeepaliveAction.MESSAGE_TIMEOUT
    assert core.keepalive.due(61.0) is KeepaliveAction.MESSAGE_TIMEOUT
    assert core.receive_data(frame(Opcode.CONT, b"z"), 61.0) == ["az"]
    assert core.keepalive.message_by is None


def test_the_bytes_of_an_unfinished_frame_start_the_message_deadline() -> None:
    """One frame trickled a byte at a time has message_timeout to end, from its first
    byte; with no earlier deadline the core asks to be looked at sooner."""
    quiet = KeepaliveConfig(ping_interval=None, message_timeout=30)
    core, _ = make_core(keepalive=quiet)
    data = frame(Opcode.BINARY, b"x" * 20)
    assert core.receive_data(data[:1], 2.0) == []
    assert core.take_events() == [RESCHEDULE]
    for index in range(1, len(data) - 1):
        core.receive_data(data[index : index + 1], 2.0 + index)
    assert core.take_events() == []
    assert core.keepalive.message_by == 32.0
    assert core.receive_data(data[-1:], 40.0) == [b"x" * 20]
    assert core.keepalive.message_by is None
    # Whole messages in one read leave nothing unfinished.
    core.receive_data(frame(Opcode.TEXT, b"a") + frame(Opcode.TEXT, b"b"), 41.0)
    assert core.keepalive.message_by is None


def test_a_message_pushes_the_idle_deadline_back_once_the_read_is_settled() -> None:
    core, _ = make_core()
    assert core.keepalive.idle_by == 60.0
    core.receive_data(frame(Opcode.PING, b"p"), 3.0)
    core.after_read(3.0)
    assert core.keepalive.idle_by == 60.0  # a ping is not a message
    core.receive_data(frame(Opcode.TEXT, b"m"), 4.0)
    core.after_read(4.0)
    assert core.keepalive.idle_by == 64.0


def test_more_fragments_than_max_fragments_fail_with_1009_and_the_rest_is_ignored() -> None:
    core, _ = make_core(max_fragments=3)
    data = frame(Opcode.BINARY, b"a", fin=False) + b"".join(
        frame(Opcode.CONT, b"", fin=False) for _ in range(5)
    )
    assert core.receive_data(data, 1.0) == []
    assert core.partial == (0, 0)
    assert core.after_read(1.0) is True
    frames = Client().frames(drain(core))
    assert frames[-1].opcode is Opcode.CLOSE
    close = Close.parse(frames[-1].data)
    assert close.code == 1009
    assert "more than 3 fragments" in close.reason
    assert core.close_info == (1009, close.reason, "server")


def test_invalid_utf8_fails_with_1007_after_the_messages_before_it() -> None:
    core, _ = make_core()
    data = frame(Opcode.TEXT, b"ok") + frame(Opcode.TEXT, b"\xff") + frame(Opcode.TEXT, b"no")
    assert core.receive_data(data, 1.0) == ["ok"]
    core.after_read(1.0)
    assert core.reason_label == "invalid_data"
    (close,) = [f for f in Client().frames(drain(core)) if f.opcode is Opcode.CLOSE]
    assert Close.parse(close.data).code == 1007
    assert core.finish()[3] == "invalid_data"


# --- pongs, pings, keepalive -------------------------------------------------------------------


def test_pongs_queue_ahead_of_messages_and_count_against_the_limit() -> None:
    core, _ = make_core(limit=10)
    assert core.offer(OutboundItem(b"12345678", text=False)) is OutboundVerdict.ACCEPT
    core.receive_data(frame(Opcode.PING, b"abc"), 1.0)
    assert core.after_read(1.0) is True
    assert core.outbound.control_bytes == 5  # a pong with 3 bytes of payload
    assert core.over_limit()  # 8 + 5 > 10: the driver stops reading
    frames = Client().frames(core.data_to_send())
    assert [(f.opcode, bytes(f.data)) for f in frames] == [
        (Opcode.PONG, b"abc"),
        (Opcode.BINARY, b"12345678"),
    ]
    assert not core.over_limit()


def test_pongs_past_the_limit_disconnect_a_slow_consumer() -> None:
    core, _ = make_core(limit=10, policy=SlowConsumerPolicy.DISCONNECT)
    assert core.offer(OutboundItem(b"123456789", text=False)) is OutboundVerdict.ACCEPT
    core.receive_data(frame(Opcode.PING, b"abc"), 1.0)
    assert core.after_read(1.0) is True
    events = core.take_events()
    assert events == [MessagesDropped("disconnect", 1), FAILED, ARM_CLOSE_TIMER]
    assert core.reason_label == "slow_consumer"
    frames = Client().frames(drain(core))
    assert [f.opcode for f in frames] == [Opcode.CLOSE]  # message and pong dropped
    assert Close.parse(frames[-1].data).code == 1013


def test_a_keepalive_ping_goes_ahead_of_messages_and_its_pong_reports_the_rtt() -> None:
    core, _ = make_core()
    core.offer(OutboundItem(b"m", text=True))
    assert core.keepalive.due(10.0).name == "PING"
    assert core.ping(core.keepalive.ping_payload) is True
    frames = Client().frames(core.data_to_send())
    assert [f.opcode for f in frames] == [Opcode.PING, Opcode.TEXT]
    core.receive_data(frame(Opcode.PONG, bytes(frames[0].data)), 10.25)
    assert core.take_events() == [PongReceived(0.25)]
    assert core.keepalive.ping_at == 20.25


def test_no_ping_once_the_connection_is_closing() -> None:
    core, _ = make_core()
    core.close(1000, "")
    drain(core)
    assert core.ping(b"x") is False


# --- sending -------------------------------------------------------------------------------


def test_queued_messages_are_framed_like_websockets_and_counted() -> None:
    core, counters = make_core()
    core.offer(OutboundItem("hé".encode(), text=True))
    core.offer(OutboundItem(b"\x01" * 300, text=False))
    assert core.wants_write()
    chunks = core.data_to_send()
    expected = Frame(Opcode.TEXT, "hé".encode()).serialize(mask=False) + Frame(
        Opcode.BINARY, b"\x01" * 300
    ).serialize(mask=False)
    assert b"".join(chunks) == expected
    assert core.messages_out == 2
    assert (counters.sent_text.total, counters.sent_binary.total) == (1, 1)
    assert counters.sent_bytes.total == 3 + 300
    assert not core.wants_write()


def test_a_batch_holds_about_write_batch_bytes() -> None:
    core, _ = make_core(limit=10 * WRITE_BATCH)
    for _ in range(4):
        core.offer(OutboundItem(bytes(WRITE_BATCH // 2), text=False))
    first = core.data_to_send()
    assert len(Client().frames(first)) == 2
    assert len(core.outbound) == 2
    assert core.wants_write()


def test_compressed_connections_frame_through_the_protocol() -> None:
    core, counters = make_core(deflate=True)
    core.offer(OutboundItem(b"a" * 1000, text=True))
    chunks = core.data_to_send()
    assert len(b"".join(chunks)) < 100
    (message,) = Client(deflate=True).frames(chunks)
    assert bytes(message.data) == b"a" * 1000
    assert counters.sent_bytes.total == 1000


def test_a_pre_encoded_frame_is_written_at_once_only_when_nothing_is_queued() -> None:
    core, counters = make_core()
    payload = b"fan-out"
    item = OutboundItem(frame_header(False, len(payload)) + payload, False, frame=True, size=7)
    assert core.send_now(item) == item.payload
    assert (core.messages_out, counters.sent_bytes.total) == (1, 7)
    core.offer(OutboundItem(b"queued", text=False))
    assert core.send_now(item) is None  # it would overtake the queued message


@pytest.mark.parametrize(
    ("policy", "verdict", "kept", "dropped"),
    [
        (SlowConsumerPolicy.BLOCK, OutboundVerdict.WAIT, [b"aaaaaa"], []),
        (
            SlowConsumerPolicy.DROP_NEWEST,
            OutboundVerdict.DROP_NEWEST,
            [b"aaaaaa"],
            [MessagesDropped("drop_newest", 1)],
        ),
        (
            SlowConsumerPolicy.DROP_OLDEST,
            OutboundVerdict.EVICT_OLDEST,
            [b"bbbbbb"],
            [MessagesDropped("drop_oldest", 1)],
        ),
    ],
)
def test_slow_consumer_policies(
    policy: SlowConsumerPolicy,
    verdict: OutboundVerdict,
    kept: list[bytes],
    dropped: list[MessagesDropped],
) -> None:
    core, _ = make_core(limit=10, policy=policy)
    assert core.offer(OutboundItem(b"aaaaaa", text=False)) is OutboundVerdict.ACCEPT
    assert core.offer(OutboundItem(b"bbbbbb", text=False)) is verdict
    assert core.take_events() == dropped
    assert [bytes(f.data) for f in Client().frames(drain(core))] == kept


def test_disconnect_drops_the_queue_and_puts_the_close_frame_next() -> None:
    core, _ = make_core(limit=10, policy=SlowConsumerPolicy.DISCONNECT)
    core.offer(OutboundItem(b"aaaaaa", text=False))
    assert core.offer(OutboundItem(b"bbbbbb", text=False)) is OutboundVerdict.DISCONNECT
    assert core.take_events() == [
        MessagesDropped("disconnect", 1),
        MessagesDropped("disconnect", 1),
        FAILED,
        ARM_CLOSE_TIMER,
    ]
    assert core.closing
    (close,) = Client().frames(drain(core))
    assert Close.parse(close.data) == Close(1013, "slow consumer")


# --- closing -------------------------------------------------------------------------------


def test_close_writes_what_is_queued_then_the_close_frame() -> None:
    core, _ = make_core()
    core.offer(OutboundItem(b"last", text=True))
    assert core.close(4000, "bye") is True
    assert core.close(1000, "") is False  # once
    assert core.close_info is None
    frames = Client().frames(drain(core))
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CLOSE]
    assert core.take_events() == [CloseRecorded(4000, "bye", "server"), ARM_CLOSE_TIMER]
    # The client's echo completes the handshake: the server ends the stream.
    core.receive_data(close_frame(4000, "bye"), 2.0)
    core.after_read(2.0)
    assert core.data_to_send() == [b""]
    assert core.finish() == (4000, "bye", "server", "other")


def test_a_close_from_the_client_is_recorded_after_the_messages_before_it() -> None:
    core, _ = make_core()
    data = frame(Opcode.TEXT, b"before") + close_frame(1000, "done")
    assert core.receive_data(data, 1.0) == ["before"]
    assert core.close_info is None  # the message is handed on first
    assert core.after_read(1.0) is True
    assert core.take_events() == [CloseRecorded(1000, "done", "client")]
    chunks = core.data_to_send()
    assert chunks[-1] == b""  # the echo, then the end of the stream
    (echo,) = Client().frames(chunks)
    assert Close.parse(echo.data) == Close(1000, "done")
    assert core.closing


def test_messages_queued_after_the_close_are_dropped_as_disconnect() -> None:
    core, counters = make_core()
    core.receive_data(close_frame(1001), 1.0)
    core.after_read(1.0)
    core.take_events()
    core.outbound.append(OutboundItem(b"late", text=True))
    core.data_to_send()
    assert core.take_events() == [MessagesDropped("disconnect", 1)]
    assert counters.sent_text.total == 0


def test_a_lost_socket_is_1006_or_the_close_that_never_got_out() -> None:
    core, _ = make_core()
    core.lost()
    assert core.close_info == (1006, "", "network")
    other, _ = make_core()
    other.fail(1011, "keepalive ping timeout", label="timeout")
    other.lost()
    assert other.close_info == (1011, "keepalive ping timeout", "server")
    assert other.finish() == (1011, "keepalive ping timeout", "server", "timeout")


def test_finish_drops_what_is_still_queued() -> None:
    core, _ = make_core()
    core.offer(OutboundItem(b"a", text=True))
    core.offer(OutboundItem(b"b", text=True))
    assert core.finish() == (1006, "", "network", "abnormal")
    assert core.take_events() == [
        CloseRecorded(1006, "", "network"),
        MessagesDropped("disconnect", 2),
    ]
    assert core.outbound.bytes == 0


def test_eof_from_the_peer_delivers_nothing_more_and_settles_the_close() -> None:
    core, _ = make_core()
    assert core.receive_eof(1.0) == []
    core.after_read(1.0)
    # Without a close frame the protocol fails the connection (1006 on its side).
    assert core.close_info is not None
    assert core.close_info[2] in ("client", "network")


# --- whole messages (a driver whose peer frames them: ASGI) ------------------------------------


def make_message_core(
    limit: int = 1 << 20, *, max_size: int = 16
) -> tuple[ConnectionCore, Counters]:
    """A core fed whole messages: its protocol is open and never parses a byte."""
    counters = Counters()
    core = ConnectionCore(
        ServerProtocol(state=State.OPEN),
        counters,
        keepalive=KEEPALIVE,
        now=0.0,
        outbound_limit=limit,
        slow_consumer=SlowConsumerPolicy.DROP_NEWEST,
        max_size=max_size,
    )
    return core, counters


def test_whole_messages_are_counted_per_read_and_max_size_fails_with_1009() -> None:
    core, counters = make_message_core(max_size=4)
    assert core.receive_message("hé", 3)
    assert core.receive_message(b"\x00", 1)
    assert not core.after_read(1.0)  # nothing due on the wire
    assert (counters.received_text.total, counters.received_binary.total) == (1, 1)
    assert (counters.received_bytes.total, core.messages_in, core.bytes_in) == (4, 2, 4)
    assert not core.receive_message(b"12345", 5)
    assert core.take_events() == [FAILED, ARM_CLOSE_TIMER]
    assert core.close_request == (1009, "message of 5 bytes is over max_size (4)")
    assert core.reason_label == "message_too_big"
    assert not core.receive_message("late", 4)  # closing: nothing more is handed on
    assert core.messages_in == 2


def test_whole_messages_go_out_one_at_a_time_then_the_close_once() -> None:
    core, counters = make_message_core()
    core.offer(OutboundItem(b"ab", True))
    core.offer(OutboundItem(b"\x01", False))
    core.close(4000, "done")
    assert core.close_due() is None  # messages first
    assert [i.payload for i in core.take_messages()] == [b"ab"]
    assert [i.payload for i in core.take_messages()] == [b"\x01"]
    assert core.take_messages() == []
    assert (counters.sent_text.total, counters.sent_binary.total) == (1, 1)
    assert (counters.sent_bytes.total, core.messages_out, core.bytes_out) == (3, 2, 3)
    assert core.close_due() == (4000, "done")
    assert core.close_due() is None  # given once
    assert core.close_info == (4000, "done", "server")
    assert core.take_events() == [CloseRecorded(4000, "done", "server"), ARM_CLOSE_TIMER]
    assert not core.protocol.writes  # the peer frames its own close
    core.peer_closed(4000, "done")  # the peer's answer: ours started it
    assert core.close_info == (4000, "done", "server")


@pytest.mark.parametrize(
    ("code", "closing", "expected"),
    [
        (4001, False, (4001, "bye", "client")),
        (1005, False, (1006, "", "network")),
        (1006, False, (1006, "", "network")),
        (1006, True, (1001, "drain", "server")),  # our close never got out
    ],
)
def test_the_peers_reported_end_names_who_closed(
    code: int, closing: bool, expected: tuple[int, str, str]
) -> None:
    core, _ = make_message_core()
    if closing:
        core.close(1001, "drain")
    core.peer_closed(code, "bye")
    assert core.close_info == expected
    assert core.take_events() == [CloseRecorded(*expected)]


# --- what the handshake left behind ------------------------------------------------------------

_LEFT_FRAMES = st.lists(
    st.sampled_from(
        [
            frame(Opcode.TEXT, b"hi"),
            frame(Opcode.BINARY, b"\x00" * 200),
            frame(Opcode.PING, b"p"),
            frame(Opcode.TEXT, b"a", fin=False),
            close_frame(1000, "bye"),
        ]
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(_LEFT_FRAMES, st.integers(0, 400))
def test_holding_no_input_means_reading_and_settling_do_nothing(
    frames: list[bytes], cut: int
) -> None:
    """What a driver skips when a new connection's core holds nothing (bytes past the
    request, fed to the protocol during the handshake): reading and settling would
    have returned no message, written nothing, reported nothing."""
    core, counters = make_core()
    left = b"".join(frames)[:cut]
    if left:
        core.protocol.receive_data(left)
    holds = core.holds_input()
    messages = core.receive_data(b"", 1.0)
    due = core.after_read(1.0)
    if not holds:
        assert messages == []
        assert due is False
        assert core.events is None
        assert core.read_pause == 0.0
        assert not core.over_limit()
        assert counters.received_text.total == counters.received_binary.total == 0
    if frames and cut >= len(frames[0]):
        assert holds  # a whole frame was parsed: there is something to read
