"""Plain HTTP on the server port: GET and HEAD, routes that take a body, other methods 405."""

from __future__ import annotations

import http.client
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from examples.chat import app
from tests.e2e.apps.api_app import app as api_app
from tests.helpers.raw import STREAM_ENDED, exchange_bytes, kept_alive
from tests.helpers.server import running_server

pytestmark = pytest.mark.anyio


def _request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=b"x=1" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def test_other_methods_are_refused_with_405(anyio_backend: Any) -> None:
    """POST (with or without a body) or DELETE gets 405 with Allow, on any path."""
    async with running_server(app) as server:
        port = server.ports[0][1]
        for method, path in (("POST", "/"), ("POST", "/healthz"), ("DELETE", "/healthz")):
            status, headers, _ = await anyio.to_thread.run_sync(_request, port, method, path)
            assert (method, path, status) == (method, path, 405)
            assert headers["Allow"] == "GET, HEAD"
        status, _, body = await anyio.to_thread.run_sync(_request, port, "DELETE", "/")
        assert body == b"DELETE is not supported: use GET\n"


async def test_head_answers_the_status_of_a_get_without_a_body(anyio_backend: Any) -> None:
    """HEAD gets the status GET would get (200, 426 for a WebSocket route, 404) and no body."""
    async with running_server(app) as server:
        port = server.ports[0][1]
        for path, expected in (("/", 200), ("/readyz", 200), ("/chat/lobby", 426), ("/x", 404)):
            status, _, body = await anyio.to_thread.run_sync(_request, port, "HEAD", path)
            assert (path, status, body) == (path, expected, b"")


async def _chunked_exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` as separate writes (each a checkpoint apart); return the answer."""
    answer = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        for chunk in chunks:
            await stream.send(chunk)
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(10):
            while not kept_alive(answer):
                try:
                    answer += await stream.receive()
                except STREAM_ENDED:
                    break
    return answer


async def test_a_post_route_reads_a_body_that_comes_in_pieces(anyio_backend: Any) -> None:
    """Head and body in several writes (both I/O paths): the handler gets the whole body;
    a body over the route's limit is 413 without being read."""
    async with running_server(api_app) as server:
        port = server.ports[0][1]
        head = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        answer = await _chunked_exchange(port, [head, b"\r\n01234", b"567", b"89"])
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"\r\n\r\nPOST 0123456789")
        answer = await exchange_bytes(port, b"POST /hook HTTP/1.1\r\nContent-Length: 65\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413 ")


async def test_the_server_api_on_both_io_paths(anyio_backend: Any) -> None:
    """The API answers a send (body in two writes) and refuses a wrong key, on both paths."""
    async with running_server(api_app, api_key="k") as server:
        port = server.ports[0][1]
        body = b'{"address": "user:nobody", "message": "hi"}'
        head = b"POST /api/send HTTP/1.1\r\nAuthorization: Bearer k\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        answer = await _chunked_exchange(port, [head + body[:5], body[5:]])
        assert answer.startswith(b"HTTP/1.1 200 ")
        expected = b'{"address":"user:nobody","reached":false,"local":0,"remote":false}\n'
        assert answer.endswith(expected)
        answer = await exchange_bytes(port, head.replace(b"Bearer k", b"Bearer x") + body)
        assert answer.startswith(b"HTTP/1.1 401 ")
