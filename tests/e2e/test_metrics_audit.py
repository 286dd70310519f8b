"""Each metric means what the catalogue in docs/operations.md says, on a known exchange.

One client sends two text messages and one binary message to an echo route,
reads the echoes and closes; another is refused by a hook. Every connection
metric is then read and held against its documented meaning. Runs on both I/O
paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from supervisor import App, Handler, Reject, Request
from supervisor.metrics import METRIC_DOCS
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


class _Echo(Handler):
    """Echoes every message."""

    async def on_message(self, message: str | bytes) -> None:
        await self.conn.send(message)


def _members_only(request: Request) -> Reject | None:
    """Refuses ``?guest``."""
    return Reject(403) if "guest" in request.query else None


def _exchange(url: str) -> list[str | bytes]:
    with connect(url, proxy=None, open_timeout=10) as ws:
        ws.send("hello")  # 5 bytes
        ws.send("wsup!")  # 5 bytes
        ws.send(b"\x00\x01\x02")  # 3 bytes
        return [ws.recv(timeout=10) for _ in range(3)]


def _refused(url: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        connect(url, proxy=None, open_timeout=10)
    return info.value.response.status_code


async def test_connection_metrics_mean_what_the_catalogue_says() -> None:
    """Messages and payload bytes each way, handshake and lifetime histograms, close
    reasons, live gauges and the in-process backplane read as documented."""
    app = App()
    app.add_route("/echo", _Echo, hook=_members_only)
    async with running_server(app) as server:
        assert await in_thread(_exchange, ws_url(server, "/echo")) == [
            "hello",
            "wsup!",
            b"\x00\x01\x02",
        ]
        assert await in_thread(_refused, ws_url(server, "/echo?guest")) == 403
        await eventually(lambda: not server.connections)

        def value(name: str, **labels: str) -> float:
            return sample(server, name, **labels)

        # "WebSocket data messages received from peers, by type" (and sent).
        assert value("wsup_messages_received_total", kind="text") == 2
        assert value("wsup_messages_received_total", kind="binary") == 1
        assert value("wsup_messages_sent_total", kind="text") == 2
        assert value("wsup_messages_sent_total", kind="binary") == 1
        # "Payload bytes of data messages": 5 + 5 + 3, no framing, no mask.
        assert value("wsup_received_bytes_total") == 13
        assert value("wsup_sent_bytes_total") == 13
        # Both were TCP connections; one upgrade was accepted, one refused.
        assert value("wsup_connections_accepted_total") == 2
        assert value("wsup_handshakes_total", result="accepted") == 1
        assert value("wsup_handshakes_total", result="rejected") == 1
        # Handshake time is observed for accepted handshakes only (documented so).
        assert value("wsup_handshake_duration_seconds_count") == 1
        # "Lifetime of WebSocket connections, open to closed": one closed connection.
        assert value("wsup_connection_duration_seconds_count") == 1
        assert value("wsup_connections_closed_total", reason="normal", initiator="client") == 1
        # Gauges are back to zero once the connection is gone.
        for state in ("handshaking", "open", "detached", "draining", "closing"):
            assert value("wsup_connections", state=state) == 0
        assert value("wsup_actors", kind="connection") == 0
        assert value("wsup_outbound_buffer_bytes") == 0
        # One processing time per message the connection actor handled.
        assert value("wsup_message_processing_seconds_count") >= 3
        # The in-process backplane is always up and carries nothing between nodes.
        assert value("wsup_backplane_up") == 1
        for direction in ("sent", "received", "failed"):
            assert value("wsup_backplane_messages_total", direction=direction) == 0


def test_the_catalogue_states_what_the_audit_pinned() -> None:
    """The catalogue says handshake time covers accepted handshakes and that the
    in-process backplane counts no backplane messages."""
    assert "accepted" in METRIC_DOCS["wsup_handshake_duration_seconds"]
    assert "in-process" in METRIC_DOCS["wsup_backplane_messages_total"]


def test_the_dashboard_compares_opened_with_closed_websocket_connections() -> None:
    """The churn panel puts accepted handshakes (not every TCP accept) beside closes."""
    board = json.loads((ROOT / "dashboards" / "wsup.json").read_text(encoding="utf-8"))
    panels = [p for row in board["panels"] for p in [row, *row.get("panels", [])]]
    churn = next(p for p in panels if p["title"] == "Connections opened and closed")
    exprs = [target["expr"] for target in churn["targets"]]
    assert 'wsup_handshakes_total{result="accepted"' in exprs[0]
    assert "wsup_connections_closed_total" in exprs[1]
    assert not any("wsup_connections_accepted_total" in expr for expr in exprs)
