"""The hardening page (docs/hardening.md): its example is the file, and it serves."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from actors import FakeClock
from examples.hardening import admission, limited_chat
from supervisor import InboundPolicy, Rate, RouteOptions
from tests.helpers.clients import http_get
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

PAGE = Path(__file__).resolve().parents[1] / "docs" / "hardening.md"
_FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)
_HEADER = re.compile(r"# (examples/hardening/(\w+)\.py)\n")


def test_the_page_quotes_its_example_verbatim() -> None:
    assert_blocks_are_files(_FENCE.findall(PAGE.read_text()), _HEADER, "on the hardening page")


@pytest.mark.anyio
async def test_the_example_serves_with_the_limits_it_declares() -> None:
    """The route carries the rates the page shows, and a client within them is served."""
    app = limited_chat.app
    found = app.router.match("/room")
    assert found is not None
    options = found.target
    assert isinstance(options, RouteOptions)
    assert options.inbound_rate == Rate(20, burst=40)
    assert options.inbound_byte_rate == Rate(64 * 1024)
    assert options.inbound_policy is InboundPolicy.DELAY
    assert (app.config.ops_port_only, app.config.server_header) == (True, "name")
    async with running_server(app, metrics_port=0) as server:
        url = ws_url(server, "/room")
        # The operational endpoints are on the metrics port only.
        assert (await in_thread(http_get, server.ports[0][1], "/healthz"))[0] == 404
        assert await in_thread(http_get, server.metrics_ports[0][1], "/healthz") == (200, "ok\n")

        def within_the_rates() -> list[str | bytes]:
            with connect(url) as ws:
                for n in range(10):
                    ws.send(f"hello {n}")
                return [ws.recv(timeout=5) for _ in range(10)]

        assert await in_thread(within_the_rates) == [f"hello {n}" for n in range(10)]


@pytest.mark.anyio
async def test_the_admission_example_refuses_a_client_over_its_rate() -> None:
    """The admission example's per-address rate (5 a second, bursts of 20) admits 20
    upgrades from one address at once and answers the 21st 503 with Retry-After;
    its other settings are the ones the page shows."""
    config = admission.app.config
    assert (config.max_handshakes, config.max_connections_per_address) == (256, 100)
    assert config.handshake_rate_per_address == Rate(5, burst=20)
    async with running_server(admission.app, clock=FakeClock()) as server:
        url = ws_url(server, "/echo")

        def twenty_then_one_more() -> InvalidStatus:
            with contextlib.ExitStack() as held:
                for _ in range(20):
                    held.enter_context(connect(url, open_timeout=10))
                with pytest.raises(InvalidStatus) as refused:
                    connect(url, open_timeout=10)
                return refused.value

        refused = await in_thread(twenty_then_one_more)
    assert refused.response.status_code == 503
    assert int(refused.response.headers["Retry-After"]) in (1, 2)
    assert refused.response.body == b"too many new connections from this address\n"
