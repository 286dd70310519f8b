"""A real Prometheus scrapes a real wsup server under a little load.

Then every expression of the dashboard and of the rules is evaluated through
Prometheus's HTTP API: dashboard panels and recording rules must return data;
alert expressions must evaluate, and every series they read must exist.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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
SCRAPE = "500ms"
"""Prometheus's scrape and rule-evaluation interval: the test waits for a number of
scrapes, so its length is a multiple of this."""


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


@dataclass
class Scraper:
    """A Prometheus that scrapes ``127.0.0.1:port``, a port held until a test serves it."""

    base: str
    """Prometheus's own URL."""
    held: socket.socket
    """Bound, never listening: the kernel gives its port to nothing else (scrapes are
    refused) until the test closes it and its server listens there."""


@pytest.fixture(scope="module")
def scrapers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scraper]]:
    """One Prometheus per backend, both started before the first test.

    Prometheus scrapes a static target only from its first discovery sync, 5 s
    after it starts: the second test finds it scraping already. Each has its own
    storage, so no test sees another's series.
    """
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed (make test installs it)"
    started: dict[str, tuple[Scraper, subprocess.Popen[bytes]]] = {}
    try:
        for backend in ("asyncio", "trio"):
            held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.bind(("127.0.0.1", 0))
            target = f"127.0.0.1:{held.getsockname()[1]}"
            directory = tmp_path_factory.mktemp(f"prometheus-{backend}")
            shutil.copy(ROOT / "dashboards" / "rules.yml", directory / "rules.yml")
            config = {
                "global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
                "rule_files": ["rules.yml"],
                "scrape_configs": [{"job_name": "wsup", "static_configs": [{"targets": [target]}]}],
            }
            (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
            prom_port = free_port()
            process = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            started[backend] = Scraper(f"http://127.0.0.1:{prom_port}", held), process
        yield {backend: scraper for backend, (scraper, _) in started.items()}
    finally:
        for scraper, process in started.values():
            scraper.held.close()
            process.terminate()
            process.wait(10)


async def test_prometheus_scrapes_and_every_expression_returns_data(
    scrapers: dict[str, Scraper], anyio_backend: Any
) -> None:
    """Dashboard and recording-rule expressions return data from a live scrape; alerts evaluate."""
    scraper = scrapers[anyio_backend[0]]
    port = scraper.held.getsockname()[1]
    scraper.held.close()
    keepalive = KeepaliveConfig(ping_interval=0.3, ping_timeout=5)
    async with running_server(_app(), keepalive=keepalive, port=port) as server:
        # Load at once, then again after three scrapes, so rates over the last 15 s
        # see increases. Only the scrapes that reached this server count (those of
        # the port while it was held were refused: up is 0).
        await anyio.to_thread.run_sync(_load, ws_url(server, "/echo"))
        scrapes = 'sum(sum_over_time(up{job="wsup"}[1m]))'
        await _wait_for(scraper.base, scrapes, samples=3)
        await anyio.to_thread.run_sync(_load, ws_url(server, "/echo"))
        await _wait_for(scraper.base, scrapes, samples=8)
        results = await anyio.to_thread.run_sync(_evaluate_all, scraper.base)
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
            await anyio.sleep(0.1)


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
