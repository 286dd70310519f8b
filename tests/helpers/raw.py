"""Raw TCP for tests that must write exactly the bytes a client sends."""

from __future__ import annotations

import anyio
import anyio.abc

#: What a stream raises once the server has closed the connection.
STREAM_ENDED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def exchange_bytes(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` and return everything the server answers until it closes the socket."""
    answer = b""
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(data)
        with anyio.fail_after(10):
            while True:
                try:
                    answer += await stream.receive()
                except STREAM_ENDED:
                    return answer


async def read_head(stream: anyio.abc.ByteStream) -> bytes:
    """Read until the end of an HTTP response head; return all bytes read so far."""
    buffer = b""
    with anyio.fail_after(10):
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive()
    return buffer
