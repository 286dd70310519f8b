"""Handler steps that begin in the read callback (asyncio, plain TCP).

When a connection's actor is idle and its mailbox empty, the step for a new
message from the client runs in the transport's read callback itself
(``Cell.step_inline``); a step that suspends, or arrives while the actor is
busy, goes through the mailbox and the actor's task. These tests pin every
switch between the two paths; on trio (no callbacks) the same behaviour comes
from the mailbox alone, and ``inline_steps`` stays 0.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
import sniffio
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from examples.echo import app as echo_app
from supervisor import App, Connection, Handler, Server, SlowConsumerPolicy
from tests.e2e.test_bad_input import RawClient, raw_client
from tests.helpers.metrics import sample
from tests.helpers.server import running_server
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.anyio


def frames_of(*messages: str) -> bytes:
    """The masked frames a client sends for these text messages, as one write."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN)
    for message in messages:
        client.send_text(message.encode())
    return b"".join(client.data_to_send())


async def echo_of(client: RawClient, message: str) -> str:
    """Send one message and return the next message the server sends back."""
    await client.send(frames_of(message))
    return bytes((await client.next_frame()).data).decode()


def only_connection(server: Server) -> Connection:
    (conn,) = server.connections
    assert isinstance(conn, Connection)
    return conn


async def warm_up(client: RawClient, server: Server) -> Connection:
    """One round trip: the actor's task has started and (asyncio) waits for the next message."""
    assert await echo_of(client, "warm-up") == "warm-up"
    conn = only_connection(server)
    cell = conn.cell
    assert cell is not None
    if sniffio.current_async_library() == "asyncio":
        await eventually(lambda: cell._parked is not None)
    return conn


def expect_inline(backend: str, steps: int) -> bool:
    """Inline steps happen on asyncio (callbacks) only."""
    return steps > 0 if backend == "asyncio" else steps == 0


async def test_request_response_steps_run_in_the_read_callback(anyio_backend_name: str) -> None:
    """One message in flight at a time: every step after the first runs inline on asyncio."""
    async with running_server(echo_app) as server, raw_client(server, "/echo") as client:
        await echo_of(client, "first")  # starts the actor's task
        for n in range(5):
            assert await echo_of(client, f"m{n}") == f"m{n}"
        steps = only_connection(server).statistics().inline_steps
        if anyio_backend_name == "asyncio":
            assert steps >= 4  # the actor may still be on its way to waiting after "first"
        else:
            assert steps == 0
        assert sample(server, "wsup_messages_received_total", kind="text") == 6
        assert sample(server, "wsup_messages_sent_total", kind="text") == 6


class Recorder(Handler):
    """Logs where each step starts and ends; ``suspend`` makes the step suspend once."""

    log: list[str]

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_message(self, message: str | bytes) -> None:
        assert isinstance(message, str)
        self.log.append(f"start {message}")
        if message.startswith("suspend"):
            await anyio.lowlevel.checkpoint()  # suspends: the rest runs in the actor's task
        self.log.append(f"end {message}")
        await self.conn.send(message)


async def test_a_step_that_suspends_mid_read_keeps_one_message_at_a_time_in_order(
    anyio_backend_name: str,
) -> None:
    """Three messages in one read, the second suspends: each step ends before the next starts."""
    log: list[str] = []
    app = App()
    app.route("/rec", kwargs={"log": log})(Recorder)
    async with running_server(app) as server, raw_client(server, "/rec") as client:
        conn = await warm_up(client, server)
        log.clear()
        before = conn.statistics().inline_steps
        await client.send(frames_of("a", "suspend-b", "c"))
        echoed = [bytes((await client.next_frame()).data).decode() for _ in range(3)]
        assert echoed == ["a", "suspend-b", "c"]
        assert log == ["start a", "end a", "start suspend-b", "end suspend-b", "start c", "end c"]
        # "a" and "suspend-b" begin inline; "c" arrives while the actor is busy: mailbox.
        assert expect_inline(anyio_backend_name, conn.statistics().inline_steps - before)
        assert await echo_of(client, "after") == "after"


class Fragile(Handler):
    """Echoes, but raises on ``boom``."""

    async def on_message(self, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        await self.conn.send(message)


@pytest.mark.parametrize("suspend_first", [False, True], ids=["at-once", "after-suspending"])
async def test_a_crash_in_an_inline_step_restarts_the_handler_on_the_same_socket(
    anyio_backend_name: str, suspend_first: bool
) -> None:
    """The message that crashed is a dead letter; the next one reaches a new behaviour."""

    class Crashing(Fragile):
        async def on_message(self, message: str | bytes) -> None:
            if suspend_first:
                await anyio.lowlevel.checkpoint()
            await super().on_message(message)

    app = App()
    app.route("/fragile")(Crashing)
    async with running_server(app) as server, raw_client(server, "/fragile") as client:
        conn = await warm_up(client, server)
        before = conn.statistics().inline_steps
        await client.send(frames_of("boom"))
        assert conn.cell is not None
        cell = conn.cell
        await eventually(lambda: cell.restarts == 1)
        assert await echo_of(client, "still here") == "still here"
        assert only_connection(server) is conn
        assert sample(server, "wsup_dead_letters_total", reason="failed") == 1
        assert sample(server, "wsup_actor_crashes_total", kind="connection") == 1
        assert expect_inline(anyio_backend_name, conn.statistics().inline_steps - before)


BURST = 128  # messages of 64 KiB: more than the kernel's socket buffers hold


class Burst(Handler):
    """On ``go``, sends ``BURST`` messages of 64 KiB, then ``done``."""

    async def on_message(self, message: str | bytes) -> None:
        if message == "go":
            for n in range(BURST):
                await self.conn.send(f"{n:03d}" + "x" * (64 * 1024))
            await self.conn.send("done")
        else:
            await self.conn.send(message)


async def test_an_inline_step_that_meets_a_full_outbound_buffer_waits_in_the_task(
    anyio_backend_name: str,
) -> None:
    """Under ``block``, a step whose send must wait is finished by the task, nothing lost."""
    app = App()
    app.add_route("/burst", Burst, outbound_limit=64 * 1024, slow_consumer=SlowConsumerPolicy.BLOCK)
    async with (
        running_server(app) as server,
        raw_client(server, "/burst", receive_buffer=4096) as client,
    ):
        conn = await warm_up(client, server)
        before = conn.statistics().inline_steps
        await client.send(frames_of("go"))
        # The client reads nothing yet: the step waits for room in the buffer.
        await eventually(lambda: conn.statistics().buffered_bytes > 0)
        received = [bytes((await client.next_frame()).data) for _ in range(BURST + 1)]
        assert [m[:3] for m in received[:BURST]] == [b"%03d" % n for n in range(BURST)]
        assert received[BURST] == b"done"
        assert await echo_of(client, "and then") == "and then"
        assert expect_inline(anyio_backend_name, conn.statistics().inline_steps - before)
        assert sample(server, "wsup_messages_dropped_total", policy="block_timeout") == 0


class Gated(Handler):
    """``hold`` waits for the test's gate; messages from other actors are answered too."""

    entered: anyio.Event
    gate: anyio.Event

    def __init__(self, entered: anyio.Event, gate: anyio.Event) -> None:
        self.entered = entered
        self.gate = gate

    async def on_message(self, message: str | bytes) -> None:
        if message == "hold":
            self.entered.set()
            await self.gate.wait()
            await self.conn.send("held")
        else:
            await self.conn.send(message)

    async def on_receive(self, message: object) -> None:
        # Not the default: the message goes through the mailbox, not straight out.
        await self.conn.send(f"from an actor: {message}")


async def test_a_message_from_another_actor_during_an_inline_step_waits_for_it(
    anyio_backend_name: str,
) -> None:
    """An actor's message that arrives while a step is suspended is handled after that step."""
    entered, gate = anyio.Event(), anyio.Event()
    app = App()
    app.route("/gated", kwargs={"entered": entered, "gate": gate})(Gated)
    async with running_server(app) as server, raw_client(server, "/gated") as client:
        conn = await warm_up(client, server)
        before = conn.statistics().inline_steps
        await client.send(frames_of("hold"))
        await entered.wait()
        delivery = await server.runtime.send(conn.address, "hello")
        assert delivery.local == 1
        gate.set()
        first = bytes((await client.next_frame()).data).decode()
        second = bytes((await client.next_frame()).data).decode()
        assert (first, second) == ("held", "from an actor: hello")
        assert expect_inline(anyio_backend_name, conn.statistics().inline_steps - before)
