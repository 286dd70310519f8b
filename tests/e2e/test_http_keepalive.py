"""HTTP/1.1 keep-alive for plain HTTP answers: several requests on one connection.

A real client (urllib3, one pooled connection) and raw sockets for the edges:
pipelined requests, ``Connection: close``, HTTP/1.0, the idle timeout, the bound
on requests per connection and an upgrade as the last request. Both I/O paths.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
import urllib3
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from supervisor import App, Handler, HTTPResponse, Request
from tests.e2e.apps.api_app import app as api_app
from tests.helpers.metrics import sample
from tests.helpers.raw import STREAM_ENDED, complete_response
from tests.helpers.server import running_server, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class Echo(Handler):
    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def keepalive_app() -> App:
    app = App()
    app.add_route("/echo", Echo)

    @app.http("/sync")
    def sync_page(request: Request) -> HTTPResponse:
        return HTTPResponse(f"sync {request.query_param('n')}")

    @app.http("/async")
    async def async_page(request: Request) -> HTTPResponse:
        await anyio.lowlevel.checkpoint()
        return HTTPResponse(f"async {request.query_param('n')}")

    @app.http("/hook", methods=("POST",), max_body=64)
    def hook(request: Request) -> HTTPResponse:
        return HTTPResponse(b"got " + request.body)

    return app


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answers(stream: anyio.abc.ByteStream, count: int) -> list[bytes]:
    """Read ``count`` whole answers (head and Content-Length body) from ``stream``."""
    buffer = b""
    answers: list[bytes] = []
    with anyio.fail_after(10):
        while len(answers) < count:
            while not complete_response(buffer):
                buffer += await stream.receive()
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answers.append(head + b"\r\n\r\n" + rest[:length])
            buffer = rest[length:]
    return answers


async def closed_by_server(stream: anyio.abc.ByteStream) -> bytes:
    """What the server still sends until it closes the connection."""
    rest = b""
    with anyio.fail_after(10):
        while True:
            try:
                rest += await stream.receive()
            except STREAM_ENDED:
                return rest


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_a_pooled_client_sends_many_requests_on_one_connection(anyio_backend: Any) -> None:
    """urllib3 with one pooled connection: the server API, a sync and an async HTTP
    route and /healthz, 20 requests, all on one TCP connection."""
    async with running_server(api_app, api_key="k") as server:
        port = server.ports[0][1]

        def client() -> list[tuple[int, bytes]]:
            pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, block=True)
            results = []
            for n in range(10):
                body = json.dumps({"address": "user:nobody", "message": f"m{n}"}).encode()
                sent = pool.request(
                    "POST",
                    "/api/send",
                    body=body,
                    headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
                )
                results.append((sent.status, sent.data))
                health = pool.request("GET", "/healthz")
                results.append((health.status, health.data))
            assert pool.num_connections == 1
            pool.close()
            return results

        results = await anyio.to_thread.run_sync(client)
        assert [status for status, _ in results] == [200] * 20
        assert results[1] == (200, b"ok\n")
        assert sample(server, "wsup_connections_accepted_total") == 1
        assert sample(server, "wsup_api_requests_total", endpoint="send", result="ok") == 10


async def test_sync_and_async_routes_answer_in_order_on_one_connection(
    anyio_backend: Any,
) -> None:
    """Requests one after the other, and pipelined in one write (a sync route, an async
    one, a POST with a body, /healthz): every answer, in order, on one connection."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1"))
            (first,) = await read_answers(stream, 1)
            assert status_and_body(first) == (200, b"sync 1")
            assert b"\r\nConnection: keep-alive\r\n" in first
            await stream.send(get("/async?n=2"))
            (second,) = await read_answers(stream, 1)
            assert status_and_body(second) == (200, b"async 2")
            post = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            await stream.send(get("/async?n=3") + post + get("/sync?n=4") + get("/healthz"))
            answers = await read_answers(stream, 4)
            assert [status_and_body(a) for a in answers] == [
                (200, b"async 3"),
                (200, b"got hello"),
                (200, b"sync 4"),
                (200, b"ok\n"),
            ]
        assert sample(server, "wsup_connections_accepted_total") == 1


@pytest.mark.parametrize(
    "request_bytes",
    [get("/sync?n=1", "Connection: close"), get("/sync?n=1", version="1.0")],
    ids=["connection-close", "http-1.0"],
)
async def test_the_client_may_ask_to_close(anyio_backend: Any, request_bytes: bytes) -> None:
    """``Connection: close``, or HTTP/1.0 without keep-alive: the answer says close, and
    the server closes (what the client pipelined behind it is not answered)."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(request_bytes + get("/sync?n=2"))
            (answer,) = await read_answers(stream, 1)
            assert b"\r\nConnection: close\r\n" in answer
            assert await closed_by_server(stream) == b""


async def test_http_1_0_may_ask_for_keep_alive(anyio_backend: Any) -> None:
    """HTTP/1.0 with ``Connection: keep-alive`` is kept alive."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1", "Connection: keep-alive", version="1.0") * 2)
            answers = await read_answers(stream, 2)
            assert [status_and_body(a)[1] for a in answers] == [b"sync 1"] * 2


async def test_an_idle_kept_alive_connection_is_closed_without_an_answer(
    anyio_backend: Any,
) -> None:
    """No next request within ``handshake_timeout``: the server closes, without a 408
    and without counting a failed handshake; half a request gets its 408."""
    async with running_server(keepalive_app(), handshake_timeout=0.3) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1"))
            await read_answers(stream, 1)
            assert await closed_by_server(stream) == b""
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1") + b"GET /sync HTTP/1.1\r\nHo")
            await read_answers(stream, 1)
            assert (await closed_by_server(stream)).startswith(b"HTTP/1.1 408 ")
        assert sample(server, "wsup_handshakes_total", result="failed") == 0
        assert sample(server, "wsup_handshakes_total", result="timeout") == 1


async def test_a_connection_serves_at_most_max_http_requests(anyio_backend: Any) -> None:
    """The answer to the ``max_http_requests``-th request says close, and the server
    closes."""
    async with running_server(keepalive_app(), max_http_requests=3) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1") * 4)
            answers = await read_answers(stream, 3)
            assert [b"Connection: close" in a for a in answers] == [False, False, True]
            assert await closed_by_server(stream) == b""


async def test_at_most_32_pipelined_requests_of_one_read_are_answered(
    anyio_backend: Any,
) -> None:
    """40 requests in one write: the first 32 are answered, the last of them with
    ``Connection: close``, then the server closes."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1") * 40)
            answers = await read_answers(stream, 32)
            assert [b"Connection: close" in a for a in answers] == [False] * 31 + [True]
            assert await closed_by_server(stream) == b""


async def test_refusals_that_leave_bytes_unread_close(anyio_backend: Any) -> None:
    """A 413 (the body is not read) and a 400 close the connection."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        for request in (
            b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
            b"GET /sync HTTP/1.1\r\nBad Header\r\n\r\n",
        ):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(request + get("/sync?n=2"))
                answer = await closed_by_server(stream)
                assert b"\r\nConnection: close\r\n" in answer
                assert answer.count(b"\r\nServer: ") == 1, answer  # one answer only


async def test_an_upgrade_may_be_the_last_request_of_a_kept_alive_connection(
    anyio_backend: Any,
) -> None:
    """Two plain requests, then an upgrade (with a frame in the same write) on the same
    connection: 101, and the frame is echoed."""
    async with running_server(keepalive_app()) as server:
        host, port = server.ports[0]
        client = ClientProtocol(parse_uri(ws_url(server, "/echo")))
        upgrade = client.connect()
        client.send_request(upgrade)
        upgrade_bytes = b"".join(client.data_to_send())
        frame = Frame(Opcode.TEXT, b"early").serialize(mask=True)  # before the 101
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(get("/sync?n=1") + get("/async?n=2"))
            answers = await read_answers(stream, 2)
            assert [status_and_body(a)[0] for a in answers] == [200, 200]
            await stream.send(upgrade_bytes + frame)
            events: list[Any] = []
            with anyio.fail_after(10):
                while not any(isinstance(e, Frame) for e in events):
                    client.receive_data(await stream.receive())
                    events += client.events_received()
            assert isinstance(events[0], Response)
            assert events[0].status_code == 101
            assert [e.data for e in events if isinstance(e, Frame) and e.opcode is Opcode.TEXT] == [
                b"early"
            ]
        assert sample(server, "wsup_handshakes_total", result="accepted") == 1
        assert sample(server, "wsup_connections_accepted_total") == 1
