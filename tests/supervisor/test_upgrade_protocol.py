"""``ProtocolFactory`` makes the protocol websockets' constructor makes, and shares nothing
more between sockets than the constructor does."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from supervisor.server._core import _parser_waits
from supervisor.server._handshake import ProtocolFactory, UpgradeProtocol

LOGGER = logging.getLogger("websockets.server")
DEFLATE = [ServerPerMessageDeflateFactory(server_max_window_bits=12)]

OPTIONS: list[dict[str, Any]] = [
    {},
    {"max_size": 1 << 20, "extensions": None, "logger": LOGGER},
    {"max_size": (1 << 16, 1 << 12), "extensions": DEFLATE, "logger": LOGGER},
    {"max_size": None, "subprotocols": ["chat"], "origins": [None]},
]


def _state(protocol: ServerProtocol) -> dict[str, Any]:
    protocol.id  # noqa: B018  # made when first read: read it, so that both hold it
    return dict(vars(protocol))


@pytest.mark.parametrize("options", OPTIONS)
def test_same_attributes_and_values_as_the_constructor(options: dict[str, Any]) -> None:
    """Every attribute the constructor sets is there, equal to the constructor's (the
    id and the parser are the socket's own; the parser waits for a first frame)."""
    made = _state(ProtocolFactory(**options)())
    built = _state(UpgradeProtocol(**options))
    assert made.keys() == built.keys()
    for name, value in built.items():
        other = made[name]
        assert type(other) is type(value), name
        if name == "id":
            assert other != value
            assert other.version == 4
        elif name == "parser":
            assert other.gi_code is value.gi_code
        elif name == "reader":
            assert (other.buffer, other.eof) == (value.buffer, value.eof)
        else:
            assert other == value, name


@pytest.mark.parametrize("options", OPTIONS)
def test_shares_what_the_constructor_shares(options: dict[str, Any]) -> None:
    """Two sockets' protocols share an attribute's object only where two protocols of
    the constructor do (the options): no buffer, list or parser of one reaches another."""
    factory = ProtocolFactory(**options)
    first, second = _state(factory()), _state(factory())
    built_first, built_second = (
        _state(UpgradeProtocol(**options)),
        _state(UpgradeProtocol(**options)),
    )
    shared = {name for name in first if first[name] is second[name]}
    shared_built = {name for name in built_first if built_first[name] is built_second[name]}
    assert shared == shared_built
    assert "id" not in shared


def test_id_is_made_once_per_protocol() -> None:
    """The id, made at first read, stays the same; each protocol has its own."""
    factory = ProtocolFactory()
    protocol = factory()
    assert "id" not in vars(protocol)
    first = protocol.id
    assert isinstance(first, uuid.UUID)
    assert protocol.id is first
    assert factory().id != first


def test_made_protocol_carries_a_connection() -> None:
    """A protocol of the factory waits for a frame at the start (the core's fast path
    sees it so), takes the 101, reads frames and closes like the constructor's."""
    protocol = ProtocolFactory(max_size=1 << 20, logger=LOGGER)()
    assert _parser_waits(protocol)
    protocol.state = State.OPEN
    client = ClientProtocol(parse_uri("ws://test/"), state=State.OPEN)
    client.send_text(b"hello")
    client.send_close(1000, "bye")
    protocol.receive_data(b"".join(client.data_to_send()))
    frames = [event for event in protocol.events_received() if isinstance(event, Frame)]
    assert [(frame.opcode, frame.data) for frame in frames] == [
        (Opcode.TEXT, b"hello"),
        (Opcode.CLOSE, frames[1].data),
    ]
    assert protocol.state is State.CLOSING
    assert protocol.close_rcvd is not None
    assert protocol.close_rcvd.code == 1000
