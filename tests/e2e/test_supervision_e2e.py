"""End to end: a crashing handler is restarted on the same socket until its intensity runs out."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from actors import Backoff, Intensity
from supervisor import App, Handler
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


class CrashEveryThird(Handler):
    """Echoes messages, but raises on every third one (counted across restarts)."""

    def __init__(self, counter: itertools.count[int], starts: list[int]) -> None:
        self.counter = counter
        self.starts = starts

    async def on_connect(self) -> None:
        self.starts.append(self.context.restarts)

    async def on_message(self, message: str | bytes) -> None:
        if next(self.counter) % 3 == 2:
            raise RuntimeError(f"cannot handle {message!r}")
        await self.conn.send(message)


def make_app(starts: list[int], **route: Any) -> App:
    """An app with the crashing handler on /crashy."""
    app = App()
    app.add_route(
        "/crashy",
        CrashEveryThird,
        kwargs={"counter": itertools.count(), "starts": starts},
        **route,
    )
    return app


async def test_a_crash_loses_one_message_and_the_connection_stays_open() -> None:
    """Messages 1, 2 are echoed, 3 crashes the handler and is lost, 4, 5 are echoed by the
    restarted handler on the same connection, and so on while the intensity allows."""
    starts: list[int] = []
    app = make_app(starts, intensity=Intensity(max_restarts=10, within=60.0))
    async with running_server(app) as server:

        def talk() -> list[str | bytes]:
            replies: list[str | bytes] = []
            with connect(ws_url(server, "/crashy"), proxy=None) as ws:
                for n in range(1, 10):
                    ws.send(str(n))
                    if n % 3:
                        replies.append(ws.recv(timeout=5))
                # Still open and answering after three crashes.
                ws.send("10")
                replies.append(ws.recv(timeout=5))
            return replies

        replies = await anyio.to_thread.run_sync(talk)
        assert replies == ["1", "2", "4", "5", "7", "8", "10"]
        assert starts == [0, 1, 2, 3]  # on_connect ran again after each restart
        assert sample(server, "wsup_actor_crashes_total", kind="connection") == 3
        assert sample(server, "wsup_actor_restarts_total", kind="connection") == 3
        assert sample(server, "wsup_dead_letters_total", reason="failed") == 3
        await eventually(lambda: not server.connections)
        assert (
            sample(server, "wsup_connections_closed_total", reason="normal", initiator="client")
            == 1
        )


async def test_past_the_intensity_the_connection_closes_with_1011() -> None:
    """With two restarts allowed, the third crash stops the actor and closes with 1011."""
    starts: list[int] = []
    app = make_app(
        starts,
        intensity=Intensity(max_restarts=2, within=60.0),
        backoff=Backoff(minimum=0.0, maximum=0.0),
    )
    async with running_server(app) as server:

        def talk() -> tuple[list[str | bytes], int, str]:
            replies: list[str | bytes] = []
            with connect(ws_url(server, "/crashy"), proxy=None) as ws:
                # All at once: the crashes happen while later messages wait in the mailbox.
                for n in range(1, 10):
                    ws.send(str(n))
                while True:
                    try:
                        replies.append(ws.recv(timeout=5))
                    except ConnectionClosed as closed:
                        close = closed.rcvd
                        break
            assert close is not None
            return replies, close.code, close.reason

        replies, code, reason = await anyio.to_thread.run_sync(talk)
        assert replies == ["1", "2", "4", "5", "7", "8"]
        assert (code, reason) == (1011, "internal error")
        assert starts == [0, 1, 2]
        await eventually(
            lambda: (
                not server.connections
                and server.runtime.statistics().actors.get("connection", 0) == 0
            )
        )
        assert sample(server, "wsup_actor_crashes_total", kind="connection") == 3
        assert sample(server, "wsup_actor_restarts_total", kind="connection") == 2
        assert (
            sample(
                server, "wsup_connections_closed_total", reason="internal_error", initiator="server"
            )
            == 1
        )


async def test_a_crash_in_on_connect_past_the_intensity_closes_with_1011() -> None:
    """A handler whose on_connect always raises is restarted, then the connection gets 1011."""
    attempts: list[int] = []

    class Broken(Handler):
        async def on_connect(self) -> None:
            attempts.append(self.context.restarts)
            raise RuntimeError("no database")

    app = App()
    app.add_route("/broken", Broken, intensity=Intensity(max_restarts=1, within=60.0))
    async with running_server(app) as server:

        def talk() -> int:
            with (
                connect(ws_url(server, "/broken"), proxy=None) as ws,
                pytest.raises(ConnectionClosed) as info,
            ):
                ws.recv(timeout=5)
            assert info.value.rcvd is not None
            return info.value.rcvd.code

        assert await anyio.to_thread.run_sync(talk) == 1011
        assert attempts == [0, 1]
        await eventually(lambda: not server.connections)


async def test_other_connections_are_not_affected_by_a_crashing_one() -> None:
    """One connection exhausting its intensity does not disturb another on the same route."""
    starts: list[int] = []
    app = make_app(starts, intensity=Intensity(max_restarts=0, within=60.0))
    async with running_server(app) as server:
        url = ws_url(server, "/crashy")

        def talk() -> tuple[list[str | bytes], int]:
            with connect(url, proxy=None) as calm, connect(url, proxy=None) as doomed:
                calm.send("a")  # counter 0
                first = calm.recv(timeout=5)
                calm.send("b")  # counter 1
                second = calm.recv(timeout=5)
                doomed.send("c")  # counter 2: crash, no restart allowed
                with pytest.raises(ConnectionClosed) as info:
                    doomed.recv(timeout=5)
                calm.send("d")  # counter 3
                third = calm.recv(timeout=5)
            assert info.value.rcvd is not None
            return [first, second, third], info.value.rcvd.code

        assert await anyio.to_thread.run_sync(talk) == (["a", "b", "d"], 1011)


async def test_what_was_sent_before_the_fatal_crash_still_arrives() -> None:
    """Messages a handler queued just before its last crash are flushed before the 1011."""

    class LastWords(Handler):
        async def on_message(self, message: str | bytes) -> None:
            self.conn.send_nowait(f"last words {message!r}")
            raise RuntimeError("gone")

    app = App()
    app.add_route("/last", LastWords, intensity=Intensity(max_restarts=0, within=60.0))
    async with running_server(app) as server:

        def talk() -> list[tuple[str | bytes, int]]:
            # Several rounds: the writer and the supervisor race differently each time.
            results = []
            for n in range(10):
                with connect(ws_url(server, "/last"), proxy=None) as ws:
                    ws.send(str(n))
                    words = ws.recv(timeout=5)
                    with pytest.raises(ConnectionClosed) as info:
                        ws.recv(timeout=5)
                assert info.value.rcvd is not None
                results.append((words, info.value.rcvd.code))
            return results

        results = await anyio.to_thread.run_sync(talk)
        assert results == [(f"last words '{n}'", 1011) for n in range(10)]
