"""Admission control on real sockets: past a limit decided at accept time the next
connections wait in the listen backlog; past one decided on the request, the client
gets 503 with ``Retry-After``. Each is counted in ``wsup_limited_total`` and logged
at a bounded rate.

The server's clock is a FakeClock: rates refill and log lines come back only
when the test moves time on, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import structlog

from actors import FakeClock
from examples.echo import Echo
from supervisor import Accept, App, Rate, Reject, Request, Server
from tests.helpers.metrics import sample
from tests.helpers.raw import exchange_bytes, read_head
from tests.helpers.server import running_server
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_request(*headers: str) -> bytes:
    lines = [
        "GET /echo HTTP/1.1",
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, the headers (lower-case names) and the body so far of an answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


@contextlib.asynccontextmanager
async def upgraded(server: Server, *headers: str) -> AsyncIterator[anyio.abc.SocketStream]:
    """A raw WebSocket connection that got its 101, held open until the block ends."""
    async with await anyio.connect_tcp("127.0.0.1", server.ports[0][1]) as stream:
        await stream.send(upgrade_request(*headers))
        status, _, _ = parse_head(await read_head(stream))
        assert status == 101
        yield stream


async def refused(server: Server, request: bytes | None = None) -> tuple[dict[str, str], bytes]:
    """Send ``request`` (an upgrade by default); assert a 503 with a sensible Retry-After."""
    answer = await exchange_bytes(server.ports[0][1], request or upgrade_request())
    status, headers, body = parse_head(answer)
    assert status == 503, answer
    assert 1 <= int(headers["retry-after"]) <= 4, headers
    return headers, body


def echo_app() -> App:
    app = App()
    app.add_route("/echo", Echo)
    return app


def limited_lines(
    logs: list[MutableMapping[str, Any]], limit: str
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "server.limited" and e["limit"] == limit]


async def test_past_max_handshakes_the_next_connections_wait_in_the_backlog() -> None:
    """With one handshake in progress (a socket that sent nothing), the server stops
    accepting: the next client's connection waits in the listen backlog, unanswered,
    while the pause is counted and logged once; when the silent socket goes away,
    the waiting client is accepted and upgraded. The metrics port is never paused."""
    with structlog.testing.capture_logs() as logs:
        async with running_server(echo_app(), max_handshakes=1, metrics_port=0) as server:
            port = server.ports[0][1]
            async with await anyio.connect_tcp("127.0.0.1", port) as silent:
                await eventually(lambda: server.admission.handshaking == 1)
                async with await anyio.connect_tcp("127.0.0.1", port) as waiting:
                    await waiting.send(upgrade_request())
                    await eventually(
                        lambda: sample(server, "wsup_limited_total", limit="max_handshakes") >= 1
                    )
                    assert sample(server, "wsup_connections_accepted_total") == 1
                    metrics_port = server.metrics_ports[0][1]
                    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                    assert (await exchange_bytes(metrics_port, healthz)).startswith(b"HTTP/1.1 200")
                    await silent.aclose()
                    status, _, _ = parse_head(await read_head(waiting))
                    assert status == 101
            assert sample(server, "wsup_connections_accepted_total") == 2
    (line, *_) = limited_lines(logs, "max_handshakes")
    assert (line["log_level"], line["handshaking"], line["suppressed"]) == ("warning", 1, 0)


async def test_past_the_accept_rate_accepting_pauses_until_it_refills() -> None:
    """Past ``accept_rate`` the next connection waits in the backlog until the
    server's clock says a token is back; then it is accepted and upgraded."""
    clock = FakeClock()
    app = echo_app()
    with structlog.testing.capture_logs() as logs:
        async with (
            running_server(app, clock=clock, accept_rate=Rate(1, burst=1)) as server,
            upgraded(server),
            await anyio.connect_tcp("127.0.0.1", server.ports[0][1]) as waiting,
        ):
            await waiting.send(upgrade_request())
            await eventually(lambda: sample(server, "wsup_limited_total", limit="accept_rate") >= 1)
            assert sample(server, "wsup_connections_accepted_total") == 1
            # The pause sleeps on the server's clock until the next token, 1 s on.
            await eventually(lambda: (clock.next_deadline() or math.inf) <= 1.0)
            clock.advance(1.0)
            status, _, _ = parse_head(await read_head(waiting))
            assert status == 101
    (line,) = limited_lines(logs, "accept_rate")
    assert line["retry_in"] == 1.0


async def test_the_handshake_rate_refuses_upgrades_but_not_probes() -> None:
    """Past ``handshake_rate`` each upgrade gets 503 and is counted, but one line is
    logged per 10 s, the next one saying how many it left out; ``/healthz`` still
    answers 200, and once the rate refills an upgrade goes through."""
    clock = FakeClock()
    with structlog.testing.capture_logs() as logs:
        async with (
            running_server(echo_app(), clock=clock, handshake_rate=Rate(1)) as server,
            upgraded(server),
        ):
            for _ in range(3):
                _, body = await refused(server)
                assert body == b"too many new connections\n"
            healthz = await exchange_bytes(
                server.ports[0][1], b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert healthz.startswith(b"HTTP/1.1 200")
            assert sample(server, "wsup_limited_total", limit="handshake_rate") == 3
            assert sample(server, "wsup_handshakes_total", result="rejected") == 3
            assert len(limited_lines(logs, "handshake_rate")) == 1
            clock.advance(10.0)
            async with upgraded(server):  # the rate refilled
                pass
            await refused(server)  # and went again: the next line, 10 s on
    lines = limited_lines(logs, "handshake_rate")
    assert [(line["suppressed"], line["path"]) for line in lines] == [(0, "/echo"), (2, "/echo")]


async def test_the_per_address_rate_follows_the_forwarded_address() -> None:
    """Behind a trusted proxy each forwarded client has its own bucket; one over its
    rate is refused while another, through the same proxy, is admitted."""
    clock = FakeClock()
    async with running_server(
        echo_app(),
        clock=clock,
        handshake_rate_per_address=Rate(1),
        trusted_proxies=("127.0.0.1/32",),
    ) as server:
        async with upgraded(server, "X-Forwarded-For: 203.0.113.7"):
            _, body = await refused(server, upgrade_request("X-Forwarded-For: 203.0.113.7"))
            assert body == b"too many new connections from this address\n"
            async with upgraded(server, "X-Forwarded-For: 203.0.113.8"):
                pass
        assert sample(server, "wsup_limited_total", limit="handshake_rate_per_address") == 1


async def test_the_per_address_cap_releases_when_a_connection_closes() -> None:
    """At ``max_connections_per_address`` open, the next upgrade from that address gets
    503; once one of them closes, there is room again."""
    with structlog.testing.capture_logs() as logs:
        async with running_server(echo_app(), max_connections_per_address=2) as server:
            async with upgraded(server):
                async with upgraded(server):
                    _, body = await refused(server)
                    assert body == b"too many connections from this address\n"
                    assert server.admission.open_from("127.0.0.1") == 2
                await eventually(lambda: server.admission.open_from("127.0.0.1") == 1)
                async with upgraded(server):
                    pass
            await eventually(lambda: server.admission.open_from("127.0.0.1") == 0)
            assert sample(server, "wsup_limited_total", limit="max_connections_per_address") == 1
    (line,) = limited_lines(logs, "max_connections_per_address")
    assert (line["client"], line["path"]) == ("127.0.0.1", "/echo")


async def test_upgrades_whose_hooks_await_cannot_pass_the_per_address_cap_together() -> None:
    """The per-address slot is taken when the request is admitted, before the hooks
    run: of three concurrent upgrades from one address whose hook awaits, under a
    cap of one, one is upgraded and two get 503 (not three upgraded past the cap)."""
    entered = 0
    go = anyio.Event()
    done = anyio.Event()
    statuses: list[int] = []

    async def hold(request: Request) -> None:
        nonlocal entered
        entered += 1
        await go.wait()

    app = echo_app()
    app.handshake(hold)
    async with running_server(app, max_connections_per_address=1) as server:

        async def client() -> None:
            async with await anyio.connect_tcp("127.0.0.1", server.ports[0][1]) as stream:
                await stream.send(upgrade_request())
                status, _, _ = parse_head(await read_head(stream))
                statuses.append(status)
                if status == 101:
                    await done.wait()

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client)
            await eventually(lambda: entered + statuses.count(503) == 3)
            go.set()
            await eventually(lambda: len(statuses) == 3)
            assert sorted(statuses) == [101, 503, 503]
            assert server.admission.open_from("127.0.0.1") == 1
            done.set()
        await eventually(lambda: server.admission.open_from("127.0.0.1") == 0)
        assert sample(server, "wsup_limited_total", limit="max_connections_per_address") == 2


async def _reject_later(request: Request) -> Reject:
    await anyio.lowlevel.checkpoint()
    return Reject(403, "no")


async def _raise_later(request: Request) -> None:
    await anyio.lowlevel.checkpoint()
    raise RuntimeError("hook failed")


async def _choose_unoffered_later(request: Request) -> Accept:
    await anyio.lowlevel.checkpoint()
    return Accept(subprotocol="not-offered")


_GOOD_ORIGIN = "Origin: https://ok.example"


@pytest.mark.parametrize(
    ("hook", "config", "request_bytes", "status"),
    [
        (_reject_later, {}, upgrade_request(), 403),
        (_raise_later, {}, upgrade_request(), 500),
        (_choose_unoffered_later, {}, upgrade_request(), 500),
        (
            None,
            {"origins": ["https://ok.example"]},
            upgrade_request("Origin: https://elsewhere.example"),
            403,
        ),
        (None, {}, upgrade_request().replace(b"Version: 13", b"Version: 8"), 400),
    ],
    ids=["hook-rejects", "hook-raises", "bad-subprotocol", "origin", "bad-version"],
)
async def test_an_upgrade_answered_otherwise_than_101_gives_its_slot_back(
    hook: Any, config: dict[str, Any], request_bytes: bytes, status: int
) -> None:
    """Every answer after admission but the 101 frees the per-address slot the request
    held: the next upgrade from the address, under a cap of one, gets in."""
    app = echo_app()
    if hook is not None:
        app.handshake(hook)
    async with running_server(app, max_connections_per_address=1, **config) as server:
        answer = await exchange_bytes(server.ports[0][1], request_bytes)
        assert parse_head(answer)[0] == status, answer
        await eventually(lambda: server.admission.open_from("127.0.0.1") == 0)
        app.hooks.clear()
        async with upgraded(server, _GOOD_ORIGIN):
            assert server.admission.open_from("127.0.0.1") == 1


async def test_a_client_gone_while_its_hook_awaits_gives_its_slot_back() -> None:
    """A client that closes while its hook awaits leaves no slot held once the hook is
    done (the 101 cannot be sent)."""
    go = anyio.Event()
    entered = anyio.Event()

    async def hold(request: Request) -> None:
        entered.set()
        await go.wait()

    app = echo_app()
    app.handshake(hold)
    async with running_server(app, max_connections_per_address=1) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.ports[0][1]) as stream:
            await stream.send(upgrade_request())
            await entered.wait()
            assert server.admission.open_from("127.0.0.1") == 1
        go.set()
        await eventually(lambda: server.admission.open_from("127.0.0.1") == 0)
        app.hooks.clear()
        async with upgraded(server):
            pass


async def test_readyz_is_503_while_the_loop_lags() -> None:
    """With ``readiness_loop_lag``, a lag measured over the last second makes ``/readyz``
    answer 503 with ``Retry-After``; without it, the same lag leaves it ready."""
    for threshold, status in ((0.1, 503), (None, 200)):
        async with running_server(echo_app(), readiness_loop_lag=threshold) as server:
            watchdog = server._watchdog
            assert watchdog is not None
            watchdog._record(0.5, time.monotonic())  # what a half-second stall leaves
            answer = await exchange_bytes(
                server.ports[0][1], b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            got, headers, body = parse_head(answer)
            assert got == status, answer
            if status == 503:
                assert headers["retry-after"] == "1"
                assert body == b"event loop lagging: 0.500 s, over 0.1 s\n"


async def test_at_capacity_the_503_and_readyz_say_when_to_retry() -> None:
    """At ``max_connections`` the upgrade's 503 and ``/readyz``'s carry ``Retry-After``."""
    async with running_server(echo_app(), max_connections=1) as server, upgraded(server):
        _, body = await refused(server)
        assert body == b"too many connections\n"
        headers, body = await refused(server, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert headers["retry-after"] == "1"
        assert body.startswith(b"at capacity")
        assert sample(server, "wsup_limited_total", limit="max_connections") == 1
