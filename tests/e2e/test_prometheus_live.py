"""A real Prometheus scrapes a real wsup server under a little load.

Then every expression of the dashboard and of the rules is evaluated through
Prometheus's HTTP API: dashboard panels and recording rules must return data;
alert expressions must evaluate, and every series they read must exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from websockets.sync.client import connect

from actors import Intensity
from supervisor import App, Handler, KeepaliveConfig
from tests.helpers.processes import free_port
from tests.helpers.server import running_server, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
NAMES = re.compile(r"\bwsup[_:][a-zA-Z0-9_:]+")


class Flaky(Handler):
    """Echoes; crashes on "boom" (restarts count in the metrics)."""

    async def on_message(self, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        await self.conn.send(message)


def _app() -> App:
    app = App()
    app.add_route("/echo", Flaky, intensity=Intensity(100, 1.0))
    return app


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _query(base: str, expr: str) -> Any:
    return _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def _dashboard_exprs() -> Iterator[str]:
    board = json.loads((ROOT / "dashboards" / "wsup.json").read_text())
    for panel in board["panels"]:
        for child in [panel, *panel.get("panels", [])]:
            for target in child.get("targets", []):
                yield target["expr"]


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((ROOT / "dashboards" / "rules.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _substitute(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "15s")
        .replace('=~"$job"', '=~".+"')
        .replace('=~"$instance"', '=~".+"')
    )


def _load(url: str) -> None:
    """A little of everything: echoes, a crash and restart, a rejected handshake."""
    for _ in range(3):
        with connect(url) as ws:
            for i in range(20):
                ws.send(f"m{i}")
                assert ws.recv(timeout=5) == f"m{i}"
            ws.send(b"\x00" * 100)
            ws.recv(timeout=5)
            ws.send("boom")
            ws.send("after")
            assert ws.recv(timeout=5) == "after"
    http = url.replace("ws://", "http://").replace("/echo", "/nope")
    with pytest.raises(urllib.error.HTTPError, match="404") as rejected:
        urllib.request.urlopen(http, timeout=5).close()
    rejected.value.close()  # the error holds the response and its socket


async def test_prometheus_scrapes_and_every_expression_returns_data(
    tmp_path: Path, anyio_backend: Any
) -> None:
    """Dashboard and recording-rule expressions return data from a live scrape; alerts evaluate."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed (make test installs it)"
    keepalive = KeepaliveConfig(ping_interval=0.3, ping_timeout=5)
    async with running_server(_app(), keepalive=keepalive) as server:
        host, port = server.ports[0]
        prom_port = free_port()
        shutil.copy(ROOT / "dashboards" / "rules.yml", tmp_path / "rules.yml")
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["rules.yml"],
                    "scrape_configs": [
                        {"job_name": "wsup", "static_configs": [{"targets": [f"{host}:{port}"]}]}
                    ],
                }
            )
        )
        base = f"http://127.0.0.1:{prom_port}"
        process = await anyio.open_process(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Load while Prometheus starts, then again after its first scrapes, so
            # rates over the last 15 s see increases.
            await anyio.to_thread.run_sync(_load, ws_url(server, "/echo"))
            scrapes = 'sum(count_over_time(up{job="wsup"}[1m]))'
            await _wait_for(base, scrapes, samples=3)
            await anyio.to_thread.run_sync(_load, ws_url(server, "/echo"))
            await _wait_for(base, scrapes, samples=8)
            results = await anyio.to_thread.run_sync(_evaluate_all, base)
        finally:
            process.terminate()
            with anyio.fail_after(10):
                await process.wait()
            await process.aclose()
    failures = [f"{kind} {expr!r}: {why}" for kind, expr, why in results if why]
    assert not failures, "\n".join(failures)
    assert len(results) > 40  # every panel and rule was looked at


async def _wait_for(base: str, expr: str, *, samples: int) -> None:
    """Poll Prometheus until ``expr`` has a value >= samples (bounded: 60 s)."""
    with anyio.fail_after(60):
        while True:
            try:
                data = await anyio.to_thread.run_sync(_query, base, expr)
                result = data["data"]["result"]
                if result and float(result[0]["value"][1]) >= samples:
                    return
            except OSError:
                pass  # not listening yet
            await anyio.sleep(0.5)


def _evaluate_all(base: str) -> list[tuple[str, str, str]]:
    results: list[tuple[str, str, str]] = []
    for expr in _dashboard_exprs():
        results.append(("panel", expr, _has_data(base, _substitute(expr))))
    for rule in _rules():
        if "record" in rule:
            results.append(("record", rule["expr"], _has_data(base, rule["expr"])))
        else:
            data = _query(base, rule["expr"])
            why = "" if data["status"] == "success" else json.dumps(data)
            for name in set(NAMES.findall(rule["expr"])):
                why = why or _has_data(base, name)
            results.append(("alert", rule["expr"], why))
    return results


def _has_data(base: str, expr: str) -> str:
    data = _query(base, expr)
    if data["status"] != "success":
        return f"query failed: {data}"
    if not data["data"]["result"]:
        return "no data"
    return ""
