"""Fuzz: arbitrary frame sequences after a valid handshake, checked against websockets.

Each example opens a connection to the echo route and writes a sequence of
frames (data, fragmented, control, close; any opcode, RSV bits, mask, length
encoding, payload, invalid UTF-8, any close code), then one text message as a
marker. websockets' own Sans-I/O server reads the same bytes as the reference
and says which messages a correct server receives, which pongs it sends, and
whether and how it fails the connection. The wsup server must then:

* echo exactly a prefix of those messages, in order, and all of them plus the
  marker when the reference sees nothing wrong (unless it closed for one of its
  own limits: 1008 or 1009);
* pong a prefix of the reference's pongs;
* when it closes, close with a legitimate code: the reference's, or 1007
  (UTF-8 checked as it arrives), 1008 or 1009 (wsup's limits); never 1011;
* send only valid frames, log no error, and go on serving other clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from tests.helpers.fuzz import (
    Fuzzer,
    RawFrame,
    Received,
    Served,
    ServeFactory,
    close_payload,
    join_head,
    open_parser,
    read_frames,
    read_response,
    send_quietly,
    upgrade_lines,
)

pytestmark = pytest.mark.e2e

#: Small limits, so that the fuzz reaches them with small payloads.
MAX_SIZE = 2048
MAX_FRAGMENTS = 12
MARKER = b"fuzz: end of sequence"
#: What a close frame may carry besides the reference's own code.
LIMITS = {1008, 1009}

_VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
_INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
_INVALID_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xe2\x82"]


def _text_payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=60).map(str.encode),
        st.builds(
            lambda a, bad, b: a.encode() + bad + b.encode(),
            st.text(max_size=10),
            st.sampled_from(_INVALID_UTF8),
            st.text(max_size=10),
        ),
    )


_DATA = st.one_of(
    st.builds(lambda p: [RawFrame(Opcode.TEXT.value, p)], _text_payloads()),
    st.builds(lambda p: [RawFrame(Opcode.BINARY.value, p)], st.binary(max_size=200)),
    st.builds(
        lambda n: [RawFrame(Opcode.BINARY.value, b"x" * n)],
        st.integers(MAX_SIZE - 2, MAX_SIZE + 2),
    ),
)


@st.composite
def _fragmented(draw: st.DrawFn) -> list[RawFrame]:
    """One message in several frames, control frames maybe in between, maybe unfinished."""
    text = draw(st.booleans())
    payload = draw(_text_payloads() if text else st.binary(max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=1, max_size=16)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames = []
    for i, piece in enumerate(pieces):
        opcode = (Opcode.TEXT if text else Opcode.BINARY) if i == 0 else Opcode.CONT
        frames.append(RawFrame(opcode.value, piece, fin=i == len(pieces) - 1))
        if draw(st.integers(0, 5)) == 0:
            frames.append(RawFrame(Opcode.PING.value, draw(st.binary(max_size=20))))
    if draw(st.integers(0, 6)) == 0:
        frames.pop()  # never finished
    return frames


_CONTROL = st.one_of(
    st.builds(lambda p: [RawFrame(Opcode.PING.value, p)], st.binary(max_size=130)),
    st.builds(lambda p: [RawFrame(Opcode.PONG.value, p)], st.binary(max_size=130)),
    st.builds(
        lambda code, reason: [RawFrame(Opcode.CLOSE.value, close_payload(code, reason))],
        st.sampled_from(_VALID_CODES + _INVALID_CODES),
        st.one_of(st.text(max_size=20).map(str.encode), st.sampled_from(_INVALID_UTF8)),
    ),
    st.sampled_from([[RawFrame(Opcode.CLOSE.value, b"")], [RawFrame(Opcode.CLOSE.value, b"\x03")]]),
)


@st.composite
def _mutated(draw: st.DrawFn, frames: list[RawFrame]) -> list[RawFrame]:
    """Break one field of some frames: opcode, FIN, RSV bits, mask, length encoding."""
    result = []
    for raw in frames:
        if draw(st.integers(0, 7)) == 0:
            field = draw(st.sampled_from(["opcode", "fin", "rsv", "mask", "length"]))
            options: dict[str, dict[str, Any]] = {
                "opcode": {"opcode": draw(st.integers(0, 15))},
                "fin": {"fin": not raw.fin},
                "rsv": {"rsv": draw(st.integers(1, 7))},
                "mask": {"masked": False},
                "length": {"length_form": draw(st.sampled_from(["16", "64"]))},
            }
            raw = dataclasses.replace(raw, **options[field])
        result.append(raw)
    return result


@dataclass(frozen=True)
class Sequence:
    """The bytes of one example: frames, then maybe a frame header announcing far too much."""

    data: bytes
    frames: tuple[RawFrame, ...]


@st.composite
def sequences(draw: st.DrawFn) -> Sequence:
    """A few messages and control frames, some broken, then maybe an oversized header."""
    groups = draw(st.lists(st.one_of(_DATA, _DATA, _fragmented(), _CONTROL), max_size=8))
    frames = draw(_mutated([raw for group in groups for raw in group]))
    if draw(st.integers(0, 10)) == 0:
        declared = draw(st.sampled_from([MAX_SIZE + 1, 1 << 32, (1 << 63) - 1]))
        frames.append(RawFrame(Opcode.BINARY.value, declared=declared, length_form="64"))
    data = b"".join(raw.encode(os.urandom(4)) for raw in frames)
    return Sequence(data, tuple(frames))


@dataclass
class Expected:
    """What websockets' server does with the same bytes.

    Attributes:
        messages: the messages it receives (up to the first invalid one).
        pongs: the pongs it sends.
        codes: the close codes a correct server may send (none: it stays open).
        failed: whether the bytes break the protocol (then closing without a
            close frame is allowed too).
    """

    messages: list[tuple[Opcode, bytes]]
    pongs: list[bytes]
    codes: frozenset[int]
    failed: bool


def _reference(data: bytes) -> Expected:
    """Feed ``data`` to websockets' Sans-I/O server; what it receives and answers.

    websockets leaves UTF-8 checks of text messages to its I/O layer; they are
    done here on each assembled message, as RFC 6455 §8.1 asks (1007). A server
    that checks them after its parser has read on may instead answer what comes
    next in the same bytes (a close frame, a protocol error): both are allowed.
    """
    protocol = ServerProtocol(state=State.OPEN, max_size=MAX_SIZE)
    protocol.receive_data(data)
    messages: list[tuple[Opcode, bytes]] = []
    parts: list[bytes] = []
    opcode: Opcode | None = None
    invalid_text = False
    for event in protocol.events_received():
        assert isinstance(event, Frame)
        if invalid_text or event.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            continue
        opcode = event.opcode if event.opcode is not Opcode.CONT else opcode
        parts.append(bytes(event.data))
        if event.fin:
            assert opcode is not None
            kind, message = opcode, b"".join(parts)
            parts, opcode = [], None
            if kind is Opcode.TEXT and not _is_utf8(message):
                invalid_text = True
                continue
            messages.append((kind, message))
    close = protocol.close_sent
    codes = {close.code} if close is not None else set()
    if invalid_text:
        codes.add(1007)
    return Expected(
        messages,
        _pongs(protocol),
        frozenset(codes),
        invalid_text or protocol.parser_exc is not None,
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _pongs(protocol: ServerProtocol) -> list[bytes]:
    """The pongs among what ``protocol`` wrote."""
    reader = open_parser("127.0.0.1", 1)
    reader.receive_data(b"".join(protocol.data_to_send()))
    return [
        bytes(e.data)
        for e in reader.events_received()
        if isinstance(e, Frame) and e.opcode is Opcode.PONG
    ]


def _exchange(served: Served, data: bytes) -> Received:
    """Open a connection, write ``data``, read until the marker's echo or the end."""
    with socket.create_connection(served.address, timeout=15) as sock:
        sock.sendall(join_head(upgrade_lines("/echo")))
        answer, end = read_response(sock)
        assert end == "complete", answer[:200]
        assert answer.startswith(b"HTTP/1.1 101 "), answer[:200]
        # Read what was already sent after the head before writing: the 101 came first.
        first = answer.partition(b"\r\n\r\n")[2]
        send_quietly(sock, data)
        return read_frames(
            sock,
            open_parser(*served.address),
            first,
            until=lambda got: bool(got.messages) and got.messages[-1] == (Opcode.TEXT, MARKER),
        )


def _check(served: Served, sequence: Sequence) -> None:
    data = sequence.data + RawFrame(Opcode.TEXT.value, MARKER).encode(os.urandom(4))
    expected = _reference(data)
    got = _exchange(served, data)
    assert got.messages == expected.messages[: len(got.messages)], (got, expected)
    assert got.pongs == expected.pongs[: len(got.pongs)], (got, expected)
    if got.end == "message":  # the marker came back: nothing may be missing
        assert not expected.codes, (got, expected)
        assert got.messages == expected.messages, (got, expected)
        assert got.pongs == expected.pongs, (got, expected)
        return
    if not expected.codes:
        # The reference found nothing wrong: only one of wsup's own limits may close.
        assert got.close is not None, (got, expected)
        assert got.close.code in LIMITS, (got, expected)
        return
    if got.end == "close":
        assert got.close is not None
        assert got.close.code in expected.codes | LIMITS, (got, expected)
    else:
        # No close frame: only after a protocol error, when closing at once is allowed
        # (RFC 6455 §7.1.7), or when the client itself closed first.
        assert expected.failed or expected.codes, (got, expected)


def test_frame_sequences_are_echoed_or_closed_with_a_legitimate_code(
    serve: ServeFactory, fuzz: Fuzzer
) -> None:
    """Arbitrary frames: the reference's messages echoed, or a legitimate close; never 1011."""
    with serve(max_size=MAX_SIZE, max_fragments=MAX_FRAGMENTS) as served:

        def check(sequence: Sequence) -> None:
            _check(served, sequence)
            served.assert_quiet()
            served.assert_healthy()

        fuzz.run(sequences(), check)


@st.composite
def cut_short(draw: st.DrawFn) -> bytes:
    """The bytes of a frame sequence cut at any point (the client then leaves)."""
    data = draw(sequences()).data + RawFrame(Opcode.BINARY.value, b"y" * 300).encode(b"abcd")
    return data[: draw(st.integers(0, len(data) - 1))]


def test_a_client_leaving_mid_frame_is_cleaned_up(serve: ServeFactory, fuzz: Fuzzer) -> None:
    """Frames cut at any byte, then EOF: the server lets go of the connection, no error logged."""
    with serve(max_size=MAX_SIZE, max_fragments=MAX_FRAGMENTS) as served:

        def check(data: bytes) -> None:
            with socket.create_connection(served.address, timeout=15) as sock:
                sock.sendall(join_head(upgrade_lines("/echo")))
                answer, end = read_response(sock)
                assert end == "complete", answer[:200]
                assert answer.startswith(b"HTTP/1.1 101 "), answer[:200]
                if send_quietly(sock, data):
                    with contextlib.suppress(OSError):  # already reset by the server
                        sock.shutdown(socket.SHUT_WR)
                got = read_frames(
                    sock, open_parser(*served.address), answer.partition(b"\r\n\r\n")[2]
                )
            expected = _reference(data)
            assert got.end in ("close", "eof", "reset"), got
            assert got.messages == expected.messages[: len(got.messages)], (got, expected)
            if got.close is not None:
                # A close frame the client wrote (it may say 1011) is echoed; a
                # frame cut short is no reason for a close frame of the server's own.
                assert got.close.code in expected.codes | LIMITS, (got, expected)
            served.assert_quiet()
            served.assert_healthy()

        fuzz.run(cut_short(), check)
        served.assert_all_closed()
