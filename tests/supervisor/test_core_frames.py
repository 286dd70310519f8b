"""The core's frame fast path: whole, plain messages taken without websockets'
parser, everything else left to it, with the same result for every input."""

from __future__ import annotations

from hypothesis import given, settings
from websockets.frames import Opcode

from supervisor.server._core import ConnectionCore
from tests.helpers.core_frames import ProtocolOnlyCore, Stream, check_same, make_core, streams
from tests.helpers.fuzz import RawFrame


@settings(max_examples=200, deadline=None)
@given(streams())
def test_the_fast_path_gives_what_the_protocol_gives(stream: Stream) -> None:
    """Any frames cut into any reads, compression on or off: the same messages,
    events, bytes written and close, read after read."""
    check_same(stream)


def binary(payload: bytes, key: bytes = b"abcd") -> bytes:
    return RawFrame(Opcode.BINARY.value, payload).encode(key)


def test_plain_messages_skip_the_parser_and_the_rest_goes_to_it() -> None:
    core, counters = make_core(ConnectionCore)
    assert core._parser_idle
    ping = RawFrame(Opcode.PING.value, b"p").encode(b"wxyz")
    data = binary(b"one") + RawFrame(Opcode.TEXT.value, "twö".encode()).encode(b"\x00\xff\x10\x01")
    data += binary(b"x" * 300) + ping + binary(b"four")
    probe, _ = make_core(ConnectionCore)
    assert probe._take_frames(data, []) == len(data) - len(ping) - len(binary(b"four"))
    assert core.receive_data(data, 1.0) == [b"one", "twö", b"x" * 300, b"four"]
    assert counters.received_text.total == 0  # counted once the read is settled
    assert core.after_read(1.0)  # the pong
    assert (counters.received_text.total, counters.received_binary.total) == (1, 3)
    assert core.messages_in == 4
    assert core.bytes_in == len(data)


def test_only_a_frame_start_takes_the_fast_path() -> None:
    """websockets' parser waits for a frame's first byte between frames: the core
    sees that (a change in websockets that hid it would turn the fast path off,
    and fail this test)."""
    core, _ = make_core(ConnectionCore)
    frame = binary(b"payload")
    for cut in (1, 2, 6, len(frame) - 1):
        assert core.receive_data(frame[:cut], 0.0) == []
        assert not core._parser_idle
        assert core.receive_data(frame[cut:], 0.0) == [b"payload"]
        assert core._parser_idle
    assert core._take_frames(frame, []) == len(frame)
    core.receive_data(RawFrame(Opcode.BINARY.value, b"a", fin=False).encode(b"abcd"), 0.0)
    assert core._parser_idle
    assert core._take_frames(frame, []) == 0  # a fragmented message is under way


def test_compression_and_the_end_of_the_stream_turn_the_fast_path_off() -> None:
    deflated, _ = make_core(ConnectionCore, deflate=True)
    assert deflated._take_frames(binary(b"x"), []) == 0
    ended, _ = make_core(ConnectionCore)
    ended.receive_eof(0.0)
    assert not ended._parser_idle
    reference, _ = make_core(ProtocolOnlyCore)
    assert reference.receive_data(binary(b"same"), 0.0) == [b"same"]


def test_a_message_over_the_limit_fails_as_the_protocol_says() -> None:
    core, _ = make_core(ConnectionCore, max_size=100)
    assert core.receive_data(binary(b"a" * 100) + binary(b"b" * 101), 0.0) == [b"a" * 100]
    core.after_read(0.0)
    assert core.close_info == (1009, "frame with 101 bytes exceeds limit of 100 bytes", "server")


def close(payload: bytes, key: bytes = b"wxyz") -> bytes:
    return RawFrame(Opcode.CLOSE.value, payload).encode(key)


def test_a_close_that_ends_the_read_skips_the_parser() -> None:
    """The usual end of a connection: its close frame goes to the protocol as a frame,
    with the same echo, end of stream and close as through the parser."""
    data = binary(b"last") + close(b"\x03\xe8bye")
    probe, _ = make_core(ConnectionCore)
    assert probe._take_frames(data, []) == len(data)
    core, _ = make_core(ConnectionCore)
    assert core.receive_data(data, 1.0) == [b"last"]
    assert core.after_read(1.0)  # the echo of the close, then the end of the stream
    assert core.close_info == (1000, "bye", "client")
    assert core.data_to_send()[-1] == b""
    check_same(Stream(reads=(data,), eof=True, deflate=False, max_size=1 << 20, max_fragments=3))


def test_a_close_the_protocol_must_judge_goes_to_its_parser() -> None:
    """Bytes after the close, an invalid code or reason, a payload of one byte: the
    parser's way (and its close code)."""
    for data in (
        close(b"\x03\xe8") + binary(b"after"),
        close(b"\x03\xe7"),  # 999
        close(b"\x03\xe8\xff"),  # a reason that is not UTF-8
        close(b"\x03"),
    ):
        probe, _ = make_core(ConnectionCore)
        assert probe._take_frames(data, []) == 0
        check_same(
            Stream(reads=(data,), eof=False, deflate=False, max_size=1 << 20, max_fragments=3)
        )
