"""Tests for the reconnect-storm scenario (``python -m bench --scenarios storm``).

The end-to-end tests run the scenario at a tiny scale against real servers
(two instances each, real client processes): they prove the code path, not
how fast anything is. The harness is an asyncio program (subprocesses,
pipes), so they run it with ``asyncio.run`` as ``python -m bench`` does.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.uri import parse_uri

from bench import procfs, registry
from bench.__main__ import server_args
from bench.scenarios import FULL, QUICK, Context, Failed, Sample, catalogue, free_port, select
from bench.storm import (
    LAG_BOUNDS,
    STORM_METRICS,
    cumulative,
    measure_storm,
    parse_lag,
    probe_samples,
    quantile,
    scrape_lag,
)
from bench.storm_clients import (
    BASE,
    CAP,
    REASONS,
    Book,
    Client,
    backoff,
    refusal,
    retry_after,
)
from supervisor import metrics

# --- end to end ---------------------------------------------------------------------


def run_storm(server: str, tmp_path: Path, args: tuple[str, ...] = ()) -> Sample:
    """The storm with 50 clients over 2 processes against ``server``, unpinned."""
    (spec,) = registry.select([server])
    ctx = Context(spec, procfs.pinning(False), tmp_path, tag="storm", server_args=args)

    async def main() -> Sample:
        try:
            return await measure_storm(ctx, conns=50, processes=2, timeout=60, settle=0.2)
        finally:
            await ctx.children.stop()

    return asyncio.run(main())


def check_everybody_back(sample: Sample) -> None:
    """Every column is filled; nobody failed, was dropped early or came back twice."""
    assert set(sample.values) == {metric.key for metric in STORM_METRICS}, sample.notes
    assert all(sample.values[f"failed_{reason}"] == 0 for reason in REASONS), sample.values
    assert sample.values["reconnect_p50_s"] <= sample.values["reconnect_p99_s"]
    assert sample.values["peak_rss_mib"] > 0
    assert not math.isnan(sample.values["lag_p99_ms"])
    assert not [note for note in sample.notes if "not back" in note or "ended" in note]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args",
    [(), ("--drain-window", "0"), ("--max-handshakes", "4")],
    ids=["paced", "window-0", "handshakes-4"],
)
def test_every_client_comes_back_to_a_second_wsup(tmp_path: Path, args: tuple[str, ...]) -> None:
    """wsup drains, every client reconnects to the second instance, lag from /metrics."""
    sample = run_storm("wsup", tmp_path, args)
    check_everybody_back(sample)
    logs = sorted(path.name for path in tmp_path.iterdir())
    assert "storm-server.log" in logs
    assert "storm-server-1.log" in logs
    assert "storm-lag.txt" not in logs  # wsup reports its lag on /metrics


@pytest.mark.e2e
def test_clients_refused_with_retry_after_still_come_back(tmp_path: Path) -> None:
    """Past wsup's handshake rate, 503 with Retry-After: counted apart, and honoured."""
    sample = run_storm("wsup", tmp_path, ("--handshake-rate", "20/5"))
    assert sample.values["failed_503_retry_after"] > 0
    assert sample.values["failed_503"] == 0
    assert "back_s" in sample.values, sample.notes


@pytest.mark.e2e
def test_a_peer_measures_its_lag_with_the_probe(tmp_path: Path) -> None:
    """The websockets peer gets --lag-file on the second instance only; its samples count."""
    sample = run_storm("websockets", tmp_path)
    check_everybody_back(sample)
    assert (tmp_path / "storm-lag.txt").read_text().strip()


# --- the client: attempts against real sockets --------------------------------------


async def answer_once(response: bytes) -> tuple[asyncio.Server, int]:
    """A TCP server that answers every request with ``response`` and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("response", "reason", "wait"),
    [
        (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n",
         "503_retry_after", 2.0),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "503", None),
        (b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n", "other_status", None),
        (b"", "closed", None),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Accept: wrong\r\n\r\n", "other_error", None),
    ],
    ids=["503-retry-after", "503", "429", "closed", "bad-accept"],
)  # fmt: skip
def test_an_attempt_names_why_it_failed(response: bytes, reason: str, wait: float | None) -> None:
    """Each answer other than a valid 101 is one reason, with Retry-After kept."""

    async def main() -> None:
        server, port = await answer_once(response)
        async with server:
            uri = parse_uri(f"ws://127.0.0.1:{port}/echo")
            outcome = await Client(Book(1), uri, uri).attempt(uri)
        assert outcome.reason == reason
        assert outcome.retry_after == wait

    asyncio.run(main())


def test_nothing_listening_is_refused() -> None:
    """A port nobody listens on is ``refused``."""

    async def main() -> None:
        uri = parse_uri(f"ws://127.0.0.1:{free_port()}/echo")
        outcome = await Client(Book(1), uri, uri).attempt(uri)
        assert outcome.reason == "refused"

    asyncio.run(main())


def test_backoff_is_full_jitter_under_the_cap() -> None:
    """Attempt n waits between 0 and min(10, 0.5 x 2^n) seconds, spread over the range."""
    rng = random.Random(1)
    for attempt in range(8):
        limit = min(CAP, BASE * 2**attempt)
        waits = [backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= wait <= limit for wait in waits)
        assert min(waits) < limit / 4
        assert max(waits) > limit * 3 / 4


def response(status: int, **headers: str) -> Response:
    """A response with ``headers`` (underscores read as dashes)."""
    pairs = [(name.replace("_", "-"), value) for name, value in headers.items()]
    return Response(status, "", Headers(pairs))


def test_retry_after_in_seconds_or_as_a_date() -> None:
    """Both forms of RFC 9110 are read; anything else is no Retry-After."""
    assert retry_after(response(503, Retry_After="3")) == 3.0
    soon = datetime.now(UTC) + timedelta(seconds=30)
    wait = retry_after(response(503, Retry_After=format_datetime(soon, usegmt=True)))
    assert wait is not None
    assert 20 < wait <= 30
    assert retry_after(response(503, Retry_After="soon")) is None
    assert retry_after(response(503)) is None
    assert refusal(response(503, Retry_After="soon")).reason == "503"


# --- reading the lag ----------------------------------------------------------------


def test_lag_buckets_are_wsups() -> None:
    """The peers' samples are counted in the buckets of wsup's own histogram."""
    assert LAG_BOUNDS == metrics._EVENT_LOOP_LAG_BUCKETS


def test_quantile_interpolates_within_the_bucket() -> None:
    """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
    counts = cumulative([0.0005] * 98 + [0.2, 0.2])
    # Rank 99 of 100: the first of the two samples in (0.1, 0.25].
    assert quantile(0.99, counts) == pytest.approx(0.1 + 0.15 * 0.5)
    assert quantile(0.5, counts) == pytest.approx(0.001 * 50 / 98)
    assert quantile(0.99, cumulative([60.0] * 10)) == LAG_BOUNDS[-1]
    assert math.isnan(quantile(0.99, cumulative([])))


def test_a_scrape_with_other_buckets_is_refused() -> None:
    """Counts from a histogram with other buckets would be misread: the run fails instead."""
    text = "".join(
        f'wsup_event_loop_lag_seconds_bucket{{le="{bound}"}} {index}\n'
        for index, bound in enumerate([*LAG_BOUNDS, "+Inf"])
    )
    assert parse_lag(text) == [float(index) for index in range(len(LAG_BOUNDS) + 1)]
    with pytest.raises(Failed, match="buckets"):
        parse_lag(text.replace('le="0.001"', 'le="0.002"'))


def test_a_server_whose_metrics_do_not_answer_is_named() -> None:
    """No answer from /metrics is a failure saying so, not a bare socket error."""
    with pytest.raises(Failed, match=r"GET /metrics of the new instance failed 3 times"):
        scrape_lag(free_port())


def test_probe_samples_outside_the_window_do_not_count(tmp_path: Path) -> None:
    """Only the samples taken between SIGTERM and the last client back are read."""
    path = tmp_path / "lag.txt"
    path.write_text("10.0 0.5\n11.0 0.001\n12.0 0.002\n13.0 0.9\n")
    assert probe_samples(path, 10.5, 12.5) == [0.001, 0.002]


# --- the catalogue and the command line ---------------------------------------------


def test_storm_family_is_the_storm_and_its_variants() -> None:
    """``--scenarios storm`` selects every variant; the full one has 19,000 clients."""
    chosen = select(catalogue(FULL), ["storm"])
    assert [scenario.name for scenario in chosen] == [
        "storm",
        "storm-nowindow",
        "storm-handshakes256",
        "storm-rate1000",
    ]
    assert chosen[0].server_args is None
    assert chosen[1].server_args == {"wsup": ("--drain-window", "0")}
    assert chosen[3].server_args == {"wsup": ("--handshake-rate", "1000/2000")}
    assert "19,000 clients over 4 processes" in chosen[0].title
    assert f"{QUICK.storm_conns:,} clients" in select(catalogue(QUICK), ["storm"])[0].title


def test_server_args_are_split_like_a_shell() -> None:
    """``--server-args SERVER=ARGS`` per server; repeated, they add up."""
    known = ["wsup", "websockets"]
    parsed = server_args(["wsup=--drain-window 0", "wsup=--drain-batch-size '500'"], known)
    assert parsed == {"wsup": ("--drain-window", "0", "--drain-batch-size", "500")}
    with pytest.raises(ValueError, match="expected SERVER=ARGS"):
        server_args(["--drain-window 0"], known)
    with pytest.raises(ValueError, match="unknown server"):
        server_args(["nginx=-g x"], known)
