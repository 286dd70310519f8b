"""What a failed accept() means, how long accepting pauses, and how often it is logged.

The last tests drive the server's accept loop (trio, and TLS on asyncio) with a
listener that fails as told, on the fake clock.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
import structlog
from anyio.abc import SocketListener
from hypothesis import given
from hypothesis import strategies as st

from actors import FakeClock
from supervisor import App, Server, ServerConfig
from supervisor.metrics import Metrics
from supervisor.server._accept import (
    AcceptFailure,
    AcceptThrottle,
    classify_accept_error,
    descriptor_usage,
)
from supervisor.server._aio import TURN_REQUESTS, Deadlines, Pacer, _Acceptor
from tests.helpers.metrics import sample


def wrapped(error: OSError) -> anyio.BrokenResourceError:
    """What anyio's trio backend raises for ``error`` from accept()."""
    try:
        raise anyio.BrokenResourceError from error
    except anyio.BrokenResourceError as exc:
        return exc


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (errno.EMFILE, "emfile"),
        (errno.ENFILE, "enfile"),
        (errno.ENOBUFS, "enobufs"),
        (errno.ENOMEM, "enomem"),
    ],
)
def test_running_out_of_resources_pauses_accepting(code: int, label: str) -> None:
    """EMFILE, ENFILE, ENOBUFS and ENOMEM, bare or wrapped by anyio, mean "pause and retry"."""
    error = OSError(code, "out of it")
    assert classify_accept_error(error) == (AcceptFailure.RESOURCES, label)
    assert classify_accept_error(wrapped(error)) == (AcceptFailure.RESOURCES, label)


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN])
def test_a_broken_pending_connection_is_skipped(code: int) -> None:
    """Errors of one pending connection (aborted, network errors, firewall) skip to the next."""
    error = OSError(code, "that one")
    assert classify_accept_error(error) == (AcceptFailure.CONNECTION, None)
    assert classify_accept_error(wrapped(error)) == (AcceptFailure.CONNECTION, None)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EBADF, "bad file descriptor"),
        OSError(errno.EINVAL, "not listening"),
        anyio.BrokenResourceError(),
        RuntimeError("not an OS error at all"),
    ],
    ids=["EBADF", "EINVAL", "bare-broken", "runtime"],
)
def test_anything_else_is_a_broken_listener(exc: BaseException) -> None:
    """Other errors mean the listener itself is broken: the server must raise them."""
    assert classify_accept_error(exc) == (AcceptFailure.LISTENER, None)


def test_the_pause_doubles_up_to_the_maximum_and_resets_after_an_accept() -> None:
    """Pauses grow 0.1, 0.2, 0.4, 0.8, 1.0, 1.0 s; an accepted connection starts them over."""
    throttle = AcceptThrottle(first_delay=0.1, max_delay=1.0)
    delays = [throttle.failed(float(i)).delay for i in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    throttle.accepted()
    assert throttle.failed(10.0).delay == pytest.approx(0.1)


def test_the_first_failure_is_logged_then_one_per_interval_with_the_suppressed_count() -> None:
    """A failure every 0.5 s is logged at 0 s, then at 10 s saying 19 were not logged."""
    throttle = AcceptThrottle(log_interval=10.0)
    verdicts = [throttle.failed(i * 0.5) for i in range(21)]
    logged = [(i * 0.5, v.suppressed) for i, v in enumerate(verdicts) if v.log]
    assert logged == [(0.0, 0), (10.0, 19)]


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300))
def test_never_more_than_one_line_per_interval(gaps: list[float]) -> None:
    """However failures are spaced, two logged lines are at least log_interval apart."""
    throttle = AcceptThrottle(log_interval=2.0)
    now, last, suppressed = 0.0, None, 0
    for gap in gaps:
        now += gap
        verdict = throttle.failed(now)
        if verdict.log:
            assert last is None or now - last >= 2.0
            assert verdict.suppressed == suppressed
            last, suppressed = now, 0
        else:
            suppressed += 1
        assert 0 < verdict.delay <= 1.0


def test_bad_delays_are_refused() -> None:
    """A first pause of zero, or above the maximum, is a configuration error."""
    with pytest.raises(ValueError, match="first_delay"):
        AcceptThrottle(first_delay=0.0)
    with pytest.raises(ValueError, match="first_delay"):
        AcceptThrottle(first_delay=2.0, max_delay=1.0)


def test_descriptor_usage_counts_this_process() -> None:
    """descriptor_usage() sees a new socket as one more open descriptor, under the soft limit."""
    before = descriptor_usage()
    if before is None:
        pytest.skip("this kernel does not count open descriptors cheaply (Linux < 6.2)")
    with socket.socket():
        during = descriptor_usage()
    assert during is not None
    assert during[0] == before[0] + 1
    assert during[1] == before[1]
    assert 0 < during[0] <= during[1]


class ScriptedListener:
    """A listener whose accept() raises the given errors in turn, then says it was closed."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def accept(self) -> Any:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        raise anyio.ClosedResourceError


def fake_clock_server() -> tuple[Server, FakeClock]:
    """A server that is not serving, on a fake clock, with its own metrics."""
    clock = FakeClock()
    return Server(App(), ServerConfig(port=0), metrics=Metrics(), clock=clock), clock


@pytest.mark.anyio
async def test_the_accept_loop_pauses_when_descriptors_run_out_then_accepts_again() -> None:
    """EMFILE (bare or wrapped) and ENFILE pause, are counted and logged once; ECONNABORTED not."""
    server, clock = fake_clock_server()
    listener = ScriptedListener(
        OSError(errno.EMFILE, "Too many open files"),
        wrapped(OSError(errno.EMFILE, "Too many open files")),
        OSError(errno.ECONNABORTED, "Software caused connection abort"),
        OSError(errno.ENFILE, "Too many open files in system"),
    )
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            server._tg = tg  # what serve() sets before it starts the accept loops
            tg.start_soon(server._accept_loop, cast(SocketListener, listener), False)
            await clock.run_until_idle()
    assert listener.calls == 5  # each failure was followed by another accept()
    assert clock.now() == pytest.approx(0.1 + 0.2 + 0.4)  # no pause for ECONNABORTED
    assert sample(server, "wsup_accept_failures_total", error="emfile") == 2
    assert sample(server, "wsup_accept_failures_total", error="enfile") == 1
    failed = [line for line in logs if line["event"] == "server.accept_failed"]
    assert len(failed) == 1  # the other two fell within the log interval
    assert failed[0]["errno"] == "EMFILE"
    assert failed[0]["log_level"] == "error"
    assert failed[0]["retry_in"] == pytest.approx(0.1)


@pytest.mark.anyio
async def test_any_other_accept_error_stops_the_accept_loop() -> None:
    """A listener failing otherwise (EBADF here) is not retried: the error propagates."""
    server, _ = fake_clock_server()
    listener = ScriptedListener(OSError(errno.EBADF, "Bad file descriptor"))
    async with anyio.create_task_group() as tg:
        server._tg = tg
        with pytest.raises(OSError, match="Bad file descriptor"):
            await server._accept_loop(cast(SocketListener, listener), False)
    assert listener.calls == 1
    assert sample(server, "wsup_accept_failures_total", error="emfile") == 0


# -- the asyncio path's acceptor (``_aio._Acceptor``) ------------------------------------------

_EMPTY_ACCEPTS: list[int] = []


class _CountingListener(socket.socket):
    """A listening socket that counts the accept() calls that found no connection."""

    def _accept(self) -> Any:
        try:
            return super()._accept()  # type: ignore[misc]
        except BlockingIOError:
            _EMPTY_ACCEPTS.append(1)
            raise


async def _accepting(batches: list[int]) -> tuple[int, list[int]]:
    """Connect ``batches[i]`` clients, then wake the acceptor once, for each i; return
    how many it accepted in all and the empty accept() calls after each wake-up."""
    server = Server(App(), ServerConfig(port=0), metrics=Metrics())
    listener = _CountingListener()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    acceptor = _Acceptor(
        server,
        server.handshake_gate,
        listener,
        False,
        loop.create_future(),
        Pacer(loop, TURN_REQUESTS),
        Deadlines(loop, 10.0),
    )
    clients: list[socket.socket] = []
    empty: list[int] = []
    try:
        for count in batches:
            for _ in range(count):
                clients.append(socket.create_connection(listener.getsockname()))
            await asyncio.sleep(0.01)  # the kernel completes the connections
            _EMPTY_ACCEPTS.clear()
            acceptor._accept()  # what the loop's reader callback does
            empty.append(len(_EMPTY_ACCEPTS))
        await asyncio.sleep(0)  # connection_made
        return server.admission.handshaking, empty
    finally:
        for protocol in list(server.handshake_gate.unowned):
            protocol.abort()
        for client in clients:
            client.close()
        acceptor.close()
        await asyncio.sleep(0)


def test_connections_one_at_a_time_cost_no_empty_accept() -> None:
    """Each wake-up accepts the connection that caused it and asks poll(), not a
    failing accept(), whether another waits; a burst is accepted whole and ends with
    one empty accept(); then one at a time again."""
    accepted, empty = asyncio.run(_accepting([1, 1, 1, 5, 1, 1, 1]))
    assert accepted == 11
    # The burst: poll() says more, accept() until the backlog is empty. The wake-up
    # after it still tries a second accept() (bursts come in runs); then none.
    assert empty == [0, 0, 0, 1, 1, 0, 0]


@pytest.mark.anyio
async def test_a_server_stopped_right_after_it_started_stops_cleanly() -> None:
    """A shutdown before the accept tasks first ran: their listeners are closed already,
    and serving them is skipped (a duplicate of a closed socket raised EBADF)."""
    for _ in range(20):
        server = Server(App(), ServerConfig(hosts=("127.0.0.1",), port=0), metrics=Metrics())
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            # No checkpoint between the start and the shutdown.
            await server.shutdown(drain_timeout=5)
        assert server.failure is None
