"""Per-connection inbound rates, on a real socket and the server's injected clock.

The clock is a FakeClock: a client over its rate stays paused until the test
moves time on, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from actors import FakeClock
from examples.echo import Echo
from supervisor import App, InboundPolicy, Rate, RouteOptions
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def limited_app(**options: object) -> App:
    """An echo app whose /echo route limits what each client sends."""
    app = App()
    app.add_route("/echo", Echo, **options)
    return app


async def test_over_the_message_rate_reading_pauses_until_the_rate_allows_more() -> None:
    """Under ``delay``, a client past its burst is not read from until tokens come back;
    then it is served as before, and nothing it sent is lost."""
    clock = FakeClock()
    app = limited_app(inbound_rate=Rate(5, burst=5))
    async with running_server(app, clock=clock) as server:
        url = ws_url(server, "/echo")
        client = contextlib.ExitStack()
        ws = await in_thread(lambda: client.enter_context(connect(url)))
        try:

            def round_trips(count: int) -> list[str | bytes]:
                answers = []
                for n in range(count):
                    ws.send(f"m{n}")
                    answers.append(ws.recv(timeout=5))
                return answers

            # The burst, then one more read puts the client one token in debt.
            assert await in_thread(round_trips, 6) == [f"m{n}" for n in range(6)]
            await eventually(
                lambda: sample(server, "wsup_limited_total", limit="inbound_delay") >= 1
            )
            (conn,) = server.connections
            await eventually(lambda: conn.statistics().reading_paused)

            def unanswered() -> bool:
                ws.send("late")
                try:
                    ws.recv(timeout=0.3)
                except TimeoutError:
                    return True
                return False

            assert await in_thread(unanswered)  # read only once time moves on
            clock.advance(1.0)
            assert await in_thread(lambda: ws.recv(timeout=5)) == "late"
            await eventually(lambda: not conn.statistics().reading_paused)
            assert conn in server.connections  # still open
        finally:
            await in_thread(client.close)


async def test_over_the_byte_rate_under_close_the_connection_ends_with_1008() -> None:
    """Under ``close``, going past the byte rate closes with 1008 and is counted."""
    app = limited_app(inbound_byte_rate=Rate(1000, burst=1000), inbound_policy=InboundPolicy.CLOSE)
    async with running_server(app, clock=FakeClock()) as server:
        url = ws_url(server, "/echo")

        def flood() -> tuple[int, str]:
            with connect(url) as ws:
                ws.send("x" * 900)
                assert ws.recv(timeout=5) == "x" * 900
                ws.send("y" * 200)  # 1,100 bytes against a burst of 1,000
                with pytest.raises(ConnectionClosedError) as info:
                    ws.recv(timeout=5)  # nothing is echoed: the close comes instead
                assert info.value.rcvd is not None
                return info.value.rcvd.code, info.value.rcvd.reason

        assert await in_thread(flood) == (1008, "inbound rate exceeded")
        assert sample(server, "wsup_limited_total", limit="inbound_close") == 1
        await eventually(
            lambda: (
                sample(server, "wsup_connections_closed_total", reason="policy", initiator="server")
                == 1
            )
        )


def test_route_options_refuse_a_rate_that_is_not_a_rate() -> None:
    """A plain number where a Rate belongs is refused when the route is declared."""
    with pytest.raises(TypeError, match="inbound_rate must be a Rate"):
        RouteOptions(Echo, inbound_rate=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'sometimes' is not a valid InboundPolicy"):
        RouteOptions(Echo, inbound_policy="sometimes")  # type: ignore[arg-type]
