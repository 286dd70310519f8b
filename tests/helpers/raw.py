"""Raw TCP for tests that must write exactly the bytes a client sends."""

from __future__ import annotations

import re

import anyio
import anyio.abc

#: What a stream raises once the server has closed the connection.
STREAM_ENDED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def complete_response(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response: a 101 head, or a head and its announced body."""
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    if head.startswith(b"HTTP/1.1 101 "):
        return True
    length = re.search(rb"\r\ncontent-length:[ \t]*([0-9]+)", head, re.IGNORECASE)
    return length is not None and len(body) >= int(length.group(1))


def kept_alive(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response after which the server keeps the
    connection open for another request (``Connection: keep-alive``)."""
    head = answer.partition(b"\r\n\r\n")[0]
    return b"\r\nConnection: keep-alive\r\n" in head + b"\r\n" and complete_response(answer)


async def exchange_bytes(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` and return everything the server answers until it closes the socket
    (or, when it keeps the connection alive, the whole first answer)."""
    answer = b""
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(data)
        with anyio.fail_after(10):
            while not kept_alive(answer):
                try:
                    answer += await stream.receive()
                except STREAM_ENDED:
                    break
    return answer


async def read_head(stream: anyio.abc.ByteStream) -> bytes:
    """Read until the end of an HTTP response head; return all bytes read so far."""
    buffer = b""
    with anyio.fail_after(10):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
    return buffer
