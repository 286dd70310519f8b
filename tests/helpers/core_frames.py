"""Streams of client frames for the connection core, and the check that its frame
fast path (``ConnectionCore._take_frames``) gives what websockets' parser gives.

A :class:`Stream` is what a client sends on one connection, cut into reads at
any byte: plain messages (the fast path's case) mixed with everything else
(fragments, pings, pongs, closes, invalid UTF-8, frames over the size limit,
64-bit and non-minimal lengths, RSV bits, unmasked frames, unknown opcodes,
compressed frames when permessage-deflate is on), then maybe EOF.
:func:`check_same` feeds it to a core that takes whole frames itself where it
can and to one that sends every byte through websockets' protocol, and
requires the same observations after every read: messages, events, bytes to
write (the echoes, pongs, close frames), close bookkeeping, counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from supervisor.server._core import ConnectionCore
from supervisor.server._keepalive import KeepaliveConfig
from supervisor.server._outbound import OutboundItem, SlowConsumerPolicy
from tests.helpers.fuzz import RawFrame, close_payload

KEEPALIVE = KeepaliveConfig(ping_interval=10.0, ping_timeout=5.0, idle_timeout=60.0)
#: websockets' ``max_size``: one limit, or one per message and per frame.
_MAX_SIZES: list[int | tuple[int, int]] = [1 << 20, 300, (300, 100)]
_INVALID_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"ok\xe2\x82"]


class ProtocolOnlyCore(ConnectionCore):
    """The reference: every byte goes through websockets' protocol."""

    __slots__ = ()

    def _take_frames(self, data: bytes, messages: list[str | bytes]) -> int:
        return 0


@dataclass
class Count:
    total: int = 0

    def inc(self, amount: int = 1) -> None:
        self.total += amount


@dataclass
class Counters:
    received_text: Count = field(default_factory=Count)
    received_binary: Count = field(default_factory=Count)
    received_bytes: Count = field(default_factory=Count)
    sent_text: Count = field(default_factory=Count)
    sent_binary: Count = field(default_factory=Count)
    sent_bytes: Count = field(default_factory=Count)


@dataclass(frozen=True)
class Stream:
    """What a client sends on one connection, and the server's settings."""

    reads: tuple[bytes, ...]
    eof: bool
    deflate: bool
    max_size: int | tuple[int, int]
    max_fragments: int


def make_core(
    cls: type[ConnectionCore],
    *,
    limit: int = 1 << 20,
    policy: SlowConsumerPolicy = SlowConsumerPolicy.BLOCK,
    deflate: bool = False,
    max_size: int | tuple[int, int] = 1 << 20,
    max_fragments: int = 1024,
    keepalive: KeepaliveConfig = KEEPALIVE,
) -> tuple[ConnectionCore, Counters]:
    """A core past its handshake, as the server makes it."""
    protocol = ServerProtocol(state=State.OPEN, max_size=max_size)
    if deflate:
        protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
    counters = Counters()
    core = cls(
        protocol,
        counters,
        keepalive=keepalive,
        now=0.0,
        outbound_limit=limit,
        slow_consumer=policy,
        slow_consumer_code=1013,
        max_fragments=max_fragments,
    )
    return core, counters


def _text() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=40).map(str.encode),
        st.builds(
            lambda a, bad: a.encode() + bad, st.text(max_size=8), st.sampled_from(_INVALID_UTF8)
        ),
    )


_PLAIN = st.one_of(
    st.builds(lambda p: RawFrame(Opcode.BINARY.value, p), st.binary(max_size=140)),
    st.builds(lambda p: RawFrame(Opcode.TEXT.value, p), _text()),
    # Around the limits (100 and 300 bytes) and the 7-bit length's end.
    st.builds(
        lambda n: RawFrame(Opcode.BINARY.value, b"z" * n),
        st.sampled_from([99, 100, 101, 125, 126, 299, 300, 301]),
    ),
)
_CONTROL = st.one_of(
    st.builds(lambda p: RawFrame(Opcode.PING.value, p), st.binary(max_size=20)),
    st.builds(lambda p: RawFrame(Opcode.PONG.value, p), st.binary(max_size=20)),
    st.builds(
        lambda code, reason: RawFrame(Opcode.CLOSE.value, close_payload(code, reason)),
        st.sampled_from([1000, 1001, 1005, 1011, 4000, 999]),
        st.sampled_from([b"bye", b"", b"\xff", "ça".encode()]),
    ),
    # No code at all (a 1005), or a payload too short to hold one.
    st.builds(lambda p: RawFrame(Opcode.CLOSE.value, p), st.sampled_from([b"", b"\x03"])),
)


@st.composite
def _fragments(draw: st.DrawFn) -> list[RawFrame]:
    """A message in several frames, maybe a control frame between, maybe unfinished."""
    opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
    count = draw(st.integers(1, 4))
    frames = []
    for i in range(count):
        payload = draw(_text() if opcode is Opcode.TEXT else st.binary(max_size=60))
        first = opcode if i == 0 else Opcode.CONT
        frames.append(RawFrame(first.value, payload, fin=i == count - 1))
        if draw(st.integers(0, 4)) == 0:
            frames.append(draw(_CONTROL))
    if draw(st.integers(0, 5)) == 0:
        frames.pop()
    return frames


@st.composite
def _broken(draw: st.DrawFn) -> RawFrame:
    """A plain message with one field changed: RSV bits, mask, length form, opcode."""
    raw: RawFrame = draw(_PLAIN)
    change = draw(st.sampled_from(["rsv", "mask", "16", "64", "opcode", "declared"]))
    if change == "rsv":
        return RawFrame(raw.opcode, raw.payload, rsv=draw(st.integers(1, 7)))
    if change == "mask":
        return RawFrame(raw.opcode, raw.payload, masked=False)
    if change in ("16", "64"):
        return RawFrame(raw.opcode, raw.payload, length_form=change)
    if change == "opcode":
        return RawFrame(draw(st.integers(0, 15)), raw.payload)
    return RawFrame(raw.opcode, raw.payload, declared=draw(st.integers(0, 70_000)))


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """Frames of every kind, plain messages the most, cut into reads anywhere (often
    within a frame's header, where websockets' parser waits with nothing buffered)."""
    deflate = draw(st.integers(0, 3)) == 0
    client = PerMessageDeflate(False, False, 15, 15)
    chunks: list[bytes] = []
    for kind in draw(st.lists(st.integers(0, 15), min_size=1, max_size=12)):
        key = draw(st.binary(min_size=4, max_size=4))
        if kind <= 8:
            chunks.append(draw(_PLAIN).encode(key))
        elif kind == 9:
            chunks.extend(raw.encode(key) for raw in draw(_fragments()))
        elif kind <= 11:
            chunks.append(draw(_CONTROL).encode(key))
        elif kind <= 13:
            chunks.append(draw(_broken()).encode(key))
        elif kind == 14 and deflate:
            # Compressed, as a client that negotiated permessage-deflate sends it.
            message = Frame(Opcode.BINARY, draw(st.binary(max_size=100)))
            chunks.append(message.serialize(mask=True, extensions=[client]))
        else:
            chunks.append(draw(st.binary(min_size=1, max_size=12)))  # noise
    data = b"".join(chunks)
    starts = [sum(map(len, chunks[:i])) for i in range(len(chunks))] or [0]
    near = st.builds(
        lambda start, offset: min(start + offset, len(data)),
        st.sampled_from(starts),
        st.sampled_from([0, 0, 0, 0, 1, 2, 4, 6, 8]),
    )
    cuts = sorted(draw(st.lists(st.one_of(near, near, st.integers(0, len(data))), max_size=5)))
    reads = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    return Stream(
        reads=reads,
        eof=draw(st.booleans()),
        deflate=deflate,
        max_size=draw(st.sampled_from(_MAX_SIZES)),
        max_fragments=draw(st.sampled_from([1024, 3])),
    )


def _observe(
    core: ConnectionCore, counters: Counters, now: float, messages: list[str | bytes]
) -> Any:
    """After a read of ``core``: everything the driver and the connection would see."""
    for message in messages:
        if not core.closing:  # the echo, as the example server does
            payload = message.encode() if isinstance(message, str) else message
            core.offer(OutboundItem(payload, isinstance(message, str)))
    settled = core.after_read(now)
    events = core.take_events()
    written: list[bytes] = []
    while True:
        batch = core.data_to_send()
        written.extend(batch)
        if not core.outbound or not batch:
            break
    return (
        [(type(m).__name__, m) for m in messages],
        settled,
        events,
        core.take_events(),
        b"".join(written),
        written[-1:] == [b""],
        core.protocol.state,
        core.close_info,
        core.reason_label,
        core.partial,
        core.read_pause,
        core.keepalive.next_deadline(),
        (core.messages_in, core.messages_out, core.bytes_in, core.bytes_out),
        [count.total for count in vars(counters).values()],
    )


def run(cls: type[ConnectionCore], stream: Stream) -> list[Any]:
    """What ``cls`` makes of ``stream``, read by read."""
    core, counters = make_core(
        cls, deflate=stream.deflate, max_size=stream.max_size, max_fragments=stream.max_fragments
    )
    seen = []
    for index, data in enumerate(stream.reads):
        now = float(index)
        seen.append(_observe(core, counters, now, core.receive_data(data, now)))
    if stream.eof:
        end = float(len(stream.reads))
        seen.append(_observe(core, counters, end, core.receive_eof(end)))
    return seen


def check_same(stream: Stream) -> None:
    """The core with its fast path sees and writes what websockets' parser alone gives."""
    fast, reference = run(ConnectionCore, stream), run(ProtocolOnlyCore, stream)
    for index, (got, expected) in enumerate(zip(fast, reference, strict=True)):
        assert got == expected, (index, stream)
