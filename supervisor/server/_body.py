"""Requests with a body: parsing their head and collecting the body, bounded.

Theory of operation: websockets' ``ServerProtocol`` parses handshake requests,
which have no body, and refuses any request that announces one. For the targets
that take a body (the server API, ``@app.http`` routes declared with other
methods) the ``RequestReader`` of ``_handshake`` keeps the bytes of the request
head while it arrives; when the parser refuses it for its body,
:func:`parse_head` parses the same bytes with websockets' own header parser,
the decision says how much body the target accepts (``Handshake.body_plan``),
and the reader feeds what arrives into a :class:`BodyReader` until
``Content-Length`` bytes are there, under the handshake timeout of either
driver. Only ``Content-Length`` bodies are read: a chunked body gets 411
(Length Required) with a message saying so.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from websockets.http11 import MAX_LINE_LENGTH, Request, parse_headers
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

__all__ = ["BodyReader", "Head", "parse_head", "wants_body"]


def wants_body(protocol: ServerProtocol) -> bool:
    """Whether websockets refused the request only because it announces a body."""
    error = protocol.handshake_exc
    cause = error.__cause__ if error is not None else None
    if isinstance(cause, NotImplementedError):  # Transfer-Encoding
        return True
    return isinstance(cause, ValueError) and "unsupported request body" in str(cause)


@dataclass(frozen=True, slots=True)
class Head:
    """The head of a request that announces a body.

    Attributes:
        request: the method, target and headers.
        length: the ``Content-Length`` (``None`` for a chunked body).
        rest: the bytes received after the head (the start of the body).
        problem: why the body cannot be read (two different lengths), or empty.
    """

    request: Request
    length: int | None
    rest: bytes
    problem: str = ""


def _request(reader: StreamReader) -> Generator[None, None, Request]:
    line = yield from reader.read_line(MAX_LINE_LENGTH, ValueError)
    method, target, version = bytes(line).rstrip(b"\r\n").split(b" ", 2)
    headers = yield from parse_headers(reader.read_line)
    return Request(target.decode("ascii"), headers, method.decode("ascii"), version.decode())


def parse_head(data: bytes) -> Head | None:
    """Parse the head of ``data`` (a request websockets refused for its body).

    Returns:
        The head, or ``None`` if ``data`` does not hold a whole valid head
        (then the request is simply a bad request).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    reader = StreamReader()
    reader.feed_data(data[: end + 4])
    reader.feed_eof()
    parser = _request(reader)
    try:
        next(parser)
    except StopIteration as done:
        request: Request = done.value
    except Exception:  # the same checks websockets made: it got this far
        return None
    else:
        return None  # it wanted more than the whole head
    rest = data[end + 4 :]
    if "Transfer-Encoding" in request.headers:
        return Head(request, None, rest)
    lengths = set(request.headers.get_all("Content-Length"))
    if len(lengths) != 1:
        return Head(request, None, rest, "conflicting Content-Length headers")
    (raw,) = lengths
    if not raw.isdigit() or not raw.isascii():
        return Head(request, None, rest, f"invalid Content-Length {raw[:20]!r}")
    return Head(request, int(raw), rest)


@dataclass(slots=True)
class BodyReader:
    """Collects ``length`` bytes of body from what the socket delivers.

    Attributes:
        length: how many bytes the body holds.
        body: what was collected so far (never more than ``length``).
    """

    length: int
    body: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes | bytearray) -> bool:
        """Add ``data``; return True once the body is complete (bytes past it are dropped)."""
        self.body += data[: self.length - len(self.body)]
        return len(self.body) >= self.length
