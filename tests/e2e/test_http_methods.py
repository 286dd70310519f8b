"""Plain HTTP on the server port: GET and HEAD are answered, other methods get 405."""

from __future__ import annotations

import http.client
from typing import Any

import anyio
import pytest

from examples.chat import app
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
