"""Messages to addresses over real sockets: fan-out, slow members, services, threads, ask.

The clients are websockets' Sans-I/O ``ClientProtocol`` over anyio socket
streams, on the test's own event loop (asyncio with uvloop, and trio), so
hundreds of them are cheap and one of them can stop reading altogether. Each
member connection joins its group in ``on_connect`` and then sends ``joined``:
a client that has read ``joined`` is known to be in the group.

To show that a message did *not* reach a connection, a test sends a later
message to everyone: each connection's outbound buffer is FIFO, so a stray
message would have arrived before it.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from actors import ALL, Actor, AmbiguousAddress, AskTimeout, FakeClock, NoRecipient
from supervisor import App, Handler, Server, ServerConfig, SlowConsumerPolicy
from supervisor.metrics import Metrics
from tests.helpers.metrics import sample
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

GROUP = "room:fanout"
TIMEOUT = 20.0


# --- a client that reads only when asked -------------------------------------------------------


class ServerClosed(Exception):
    """The server closed the connection (its close code, or None without a close frame)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(code)
        self.code = code


class Client:
    """A WebSocket client on the test's event loop; it reads from its socket only in ``recv``.

    Pings are answered whenever it reads. A client that never calls ``recv``
    lets the kernel buffers fill up: the member that never reads.
    """

    def __init__(self, stream: anyio.abc.SocketStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.events: deque[Frame] = deque()
        self.extensions: list[str] = []

    @classmethod
    async def connect(
        cls, url: str, *, receive_buffer: int | None = None, deflate: bool = False
    ) -> Client:
        """Connect and complete the opening handshake.

        Args:
            url: the ``ws://`` URL.
            receive_buffer: ``SO_RCVBUF`` to set before connecting, to keep the
                kernel from buffering much for a client that does not read.
            deflate: offer permessage-deflate.
        """
        uri = parse_uri(url)
        if receive_buffer is None:
            stream = await anyio.connect_tcp(uri.host, uri.port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(TIMEOUT)
            await anyio.to_thread.run_sync(sock.connect, (uri.host, uri.port))
            stream = await anyio.abc.SocketStream.from_socket(sock)
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        protocol = ClientProtocol(uri, extensions=extensions, max_size=None)
        client = cls(stream, protocol)
        protocol.send_request(protocol.connect())
        await client.flush()
        while protocol.state is State.CONNECTING:
            await client._read()
        response, *frames = protocol.events_received()
        assert isinstance(response, Response), response
        assert response.status_code == 101, response
        client.extensions = response.headers.get_all("Sec-WebSocket-Extensions")
        client.events.extend(frame for frame in frames if isinstance(frame, Frame))
        return client

    async def flush(self) -> None:
        """Write whatever the protocol has queued (the request, pongs, frames, close)."""
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send(data)

    async def _read(self) -> None:
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            self.protocol.receive_eof()
        else:
            self.protocol.receive_data(data)

    async def recv(self) -> str | bytes:
        """Return the next message (``str`` for text, ``bytes`` for binary).

        Raises:
            ServerClosed: the connection ended first.
        """
        with anyio.fail_after(TIMEOUT):
            while True:
                while self.events:
                    frame = self.events.popleft()
                    if frame.opcode is Opcode.TEXT:
                        return bytes(frame.data).decode()
                    if frame.opcode is Opcode.BINARY:
                        return bytes(frame.data)
                if self.protocol.state is State.CLOSED or self.protocol.close_rcvd is not None:
                    close = self.protocol.close_rcvd
                    raise ServerClosed(close.code if close is not None else None)
                await self._read()
                await self.flush()
                self.events.extend(
                    e for e in self.protocol.events_received() if isinstance(e, Frame)
                )

    async def send(self, message: str | bytes) -> None:
        """Send one message."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self.flush()

    async def aclose(self) -> None:
        """Drop the TCP connection."""
        await self.stream.aclose()


@asynccontextmanager
async def clients(urls: list[str], **options: Any) -> AsyncIterator[list[Client]]:
    """Connect one client per URL, 50 handshakes at a time; drop them all on exit."""
    connected: list[Client | None] = [None] * len(urls)
    limiter = anyio.CapacityLimiter(50)

    async def open_one(index: int) -> None:
        async with limiter:
            connected[index] = await Client.connect(urls[index], **options)

    try:
        async with anyio.create_task_group() as tg:
            for index in range(len(urls)):
                tg.start_soon(open_one, index)
        ready = [client for client in connected if client is not None]
        yield ready
    finally:
        with anyio.CancelScope(shield=True):
            for client in connected:
                if client is not None:
                    await client.aclose()


async def recv_until(client: Client, last: str | bytes) -> list[str | bytes]:
    """Read messages up to and including ``last``."""
    messages = [await client.recv()]
    while messages[-1] != last:
        messages.append(await client.recv())
    return messages


# --- the app ------------------------------------------------------------------------------------


class Member(Handler):
    """Joins :data:`GROUP` (and ``user:NAME`` with ``?user=NAME``), then says ``joined``.

    It does not override ``on_receive``, so messages to its addresses take the
    encode-once fast path straight to the client.
    """

    async def on_connect(self) -> None:
        user = self.conn.request.query_param("user")
        if user is not None:
            self.context.register(f"user:{user}")
        self.context.join(GROUP)
        await self.conn.send("joined")


class Recorder(Actor):
    """A service actor that notes every message it gets; ``"seen"`` returns them."""

    def __init__(self, join_all: bool = False) -> None:
        self.join_all = join_all
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        if self.join_all:
            self.context.join(ALL)

    async def on_receive(self, message: Any) -> Any:
        if message == "seen":
            return list(self.seen)
        self.seen.append(message)
        return None


class Counter(Actor):
    """A service actor that owns a count: ``"incr"`` adds one and returns it."""

    def __init__(self) -> None:
        self.count = 0

    async def on_receive(self, message: Any) -> Any:
        if message == "incr":
            self.count += 1
        return self.count


class Counting(Handler):
    """Asks the ``counter`` service for a number for every client message, and sends it back."""

    async def on_message(self, message: str | bytes) -> None:
        number = await self.context.ask("counter", "incr")
        await self.conn.send(f"{message!s}={number}")


def make_app(**member_options: Any) -> App:
    """An app with the :class:`Member` route ``/member``, the counter and two recorders."""
    app = App(config=ServerConfig(compression=True))
    app.add_route("/member", Member, **member_options)
    app.add_route("/count", Counting)
    app.service(Counter, names=("counter",))
    app.service(Recorder, names=("recorder",))
    app.service(lambda: Recorder(join_all=True), names=("listener",))
    return app


async def joined(client: Client) -> Client:
    """Wait for the member's ``joined``; return the client."""
    assert await client.recv() == "joined"
    return client


# --- fan-out ------------------------------------------------------------------------------------


async def test_publish_reaches_500_members_exactly_once_with_their_types() -> None:
    """A publish to 500 members arrives once each; text, bytes and dict keep their kinds."""
    app = make_app()
    async with running_server(app) as server:
        url = ws_url(server, "/member")
        plain_urls = [url] * 250
        async with clients(plain_urls) as plain, clients(plain_urls, deflate=True) as deflated:
            members = [*plain, *deflated]
            assert all(c.extensions == [] for c in plain)
            assert all(c.extensions and "permessage-deflate" in c.extensions[0] for c in deflated)
            for client in members:
                await joined(client)
            assert len(server.runtime.members(GROUP)) == 500

            await app.publish(GROUP, "text stays text")
            await app.publish(GROUP, b"\x00bytes stay bytes\xff")
            await app.publish(GROUP, {"a dict": "is JSON text", "n": [1, 2]})
            await app.publish(GROUP, "end")

            expected: list[str | bytes] = [
                "text stays text",
                b"\x00bytes stay bytes\xff",
                json.dumps({"a dict": "is JSON text", "n": [1, 2]}),
                "end",
            ]
            for client in members:
                assert await recv_until(client, "end") == expected
    assert sample(server, "wsup_messages_sent_total", kind="text") >= 500 * 4
    assert sample(server, "wsup_messages_sent_total", kind="binary") == 500


@pytest.mark.parametrize("policy", [SlowConsumerPolicy.DROP_OLDEST, SlowConsumerPolicy.DROP_NEWEST])
async def test_a_member_that_never_reads_stays_within_its_outbound_limit(
    policy: SlowConsumerPolicy,
) -> None:
    """A silent member's buffer never exceeds its limit and drops; the others get everything."""
    limit = 256 * 1024
    size = 64 * 1024
    app = make_app(outbound_limit=limit, slow_consumer=policy)
    async with running_server(app) as server:
        url = ws_url(server, "/member")
        silent = await joined(await Client.connect(url, receive_buffer=4096))
        (silent_conn,) = server.connections
        try:
            async with clients([url] * 4) as readers:
                for reader in readers:
                    await joined(reader)
                got: list[list[int]] = [[] for _ in readers]
                progress = anyio.Event()

                async def read(index: int) -> None:
                    nonlocal progress
                    while True:
                        message = await readers[index].recv()
                        assert isinstance(message, bytes)
                        assert len(message) == size
                        got[index].append(int.from_bytes(message[:4], "big"))
                        progress.set()
                        progress = anyio.Event()

                before = sample(server, "wsup_messages_dropped_total", policy=str(policy))
                sent = 0
                async with anyio.create_task_group() as tg:
                    for index in range(len(readers)):
                        tg.start_soon(read, index)
                    # Publish in lockstep with the readers (so only the silent member
                    # falls behind) until the silent member has dropped a few dozen
                    # messages: its socket buffers are full by then, whatever their size.
                    while (
                        sample(server, "wsup_messages_dropped_total", policy=str(policy))
                        < before + 32
                    ):
                        assert sent < 2000, "the silent member never overflowed"
                        await app.publish(GROUP, sent.to_bytes(4, "big") + bytes(size - 4))
                        sent += 1
                        assert silent_conn.buffered_bytes <= limit
                        with anyio.fail_after(TIMEOUT):
                            while min(len(g) for g in got) < sent:
                                await progress.wait()
                        assert silent_conn.buffered_bytes <= limit
                    tg.cancel_scope.cancel()
                assert all(g == list(range(sent)) for g in got)
                assert silent_conn in server.connections
                assert silent_conn.buffered_bytes <= limit
        finally:
            # A peer that drops its socket lets the server's blocked write fail at once.
            await silent.aclose()


async def test_a_member_that_never_reads_is_closed_under_the_disconnect_policy() -> None:
    """Under ``disconnect`` the silent member is closed; the others get every message."""
    limit = 256 * 1024
    size = 64 * 1024
    app = make_app(outbound_limit=limit, slow_consumer=SlowConsumerPolicy.DISCONNECT)
    # The silent peer never reads the close frame either: close_timeout bounds the wait.
    async with running_server(app, close_timeout=0.5) as server:
        url = ws_url(server, "/member")
        silent = await joined(await Client.connect(url, receive_buffer=4096))
        (silent_conn,) = server.connections
        try:
            async with clients([url] * 4) as readers:
                for reader in readers:
                    await joined(reader)
                sent = 0
                got: list[list[int]] = [[] for _ in readers]

                async def publish_and_read() -> None:
                    nonlocal sent
                    await app.publish(GROUP, sent.to_bytes(4, "big") + bytes(size - 4))
                    sent += 1
                    for index, reader in enumerate(readers):
                        message = await reader.recv()
                        assert isinstance(message, bytes)
                        got[index].append(int.from_bytes(message[:4], "big"))
                    assert silent_conn.buffered_bytes <= limit

                while not sample(server, "wsup_messages_dropped_total", policy="disconnect"):
                    assert sent < 2000, "the silent member never overflowed"
                    await publish_and_read()
                with anyio.fail_after(TIMEOUT):
                    while silent_conn in server.connections:
                        await publish_and_read()
                for _ in range(3):
                    await publish_and_read()
                assert all(g == list(range(sent)) for g in got)
                assert len(server.runtime.members(GROUP)) == len(readers)
        finally:
            await silent.aclose()
    closed = sample(
        server,
        "wsup_connections_closed_total",
        reason="slow_consumer",
        initiator="server",
    ) + sample(
        server,
        "wsup_connections_closed_total",
        reason="slow_consumer",
        initiator="network",
    )
    assert closed == 1


async def test_broadcast_reaches_every_connection_and_only_services_that_joined_all() -> None:
    """``broadcast`` reaches every connection and a service in ``all``, not other services."""
    app = make_app()
    async with running_server(app) as server:
        url = ws_url(server, "/member")
        async with clients([url] * 3) as members, clients([ws_url(server, "/count")]) as other:
            for member in members:
                await joined(member)
            await app.broadcast("to everyone")
            for client in [*members, *other]:
                assert await client.recv() == "to everyone"
            assert await app.ask("recorder", "seen") == []
            assert await app.ask("listener", "seen") == ["to everyone"]


async def test_send_and_publish_from_a_task_outside_any_connection() -> None:
    """A plain task reaches one connection, a user's connections, and a group."""
    app = make_app()
    async with running_server(app) as server:
        url = ws_url(server, "/member")
        async with clients([f"{url}?user=ada", f"{url}?user=ada", f"{url}?user=bob"]) as users:
            ada1, ada2, bob = [await joined(client) for client in users]
            (bob_conn,) = [c for c in server.connections if c.request.query_param("user") == "bob"]

            async def notify() -> None:
                await app.send(bob_conn.address, "just bob")
                await app.send("user:ada", "both of ada's")
                await app.publish(GROUP, "everyone")

            async with anyio.create_task_group() as tg:
                tg.start_soon(notify)
            assert await recv_until(ada1, "everyone") == ["both of ada's", "everyone"]
            assert await recv_until(ada2, "everyone") == ["both of ada's", "everyone"]
            assert await recv_until(bob, "everyone") == ["just bob", "everyone"]


async def test_threadsafe_calls_from_a_plain_thread() -> None:
    """send/publish/broadcast/ask ``_threadsafe`` work from a ``threading.Thread``."""
    app = make_app()
    async with running_server(app) as server:
        url = ws_url(server, "/member")
        async with clients([f"{url}?user=ada", f"{url}?user=bob"]) as users:
            ada, bob = [await joined(client) for client in users]
            answers: list[Any] = []
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    app.send_threadsafe("user:ada", "from a thread")
                    app.publish_threadsafe(GROUP, {"to": "the group"})
                    answers.append(app.ask_threadsafe("counter", "incr"))
                    answers.append(app.ask_threadsafe("counter", "incr", timeout=5))
                    app.broadcast_threadsafe(b"all")
                except BaseException as exc:  # reported by the test
                    errors.append(exc)

            thread = threading.Thread(target=work)
            thread.start()
            await anyio.to_thread.run_sync(thread.join, TIMEOUT)
            assert not thread.is_alive()
            assert errors == []
            assert answers == [1, 2]
            group = json.dumps({"to": "the group"})
            assert await recv_until(ada, b"all") == ["from a thread", group, b"all"]
            assert await recv_until(bob, b"all") == [group, b"all"]
            assert server.loop_token is not None


@pytest.mark.parametrize(
    "backend",
    ["asyncio", "trio"],
)
def test_threadsafe_call_on_the_event_loop_thread_raises(backend: str) -> None:
    """Calling ``send_threadsafe`` from the server's own loop raises RuntimeError at once."""
    # In a child process: on failure the call hangs the loop for good. The timeout only
    # guards that hang; it is long because a busy machine starts a Python process slowly.
    script = textwrap.dedent(
        f"""
        import anyio, structlog
        from supervisor import App, Server, ServerConfig
        from supervisor.metrics import Metrics
        structlog.configure(logger_factory=structlog.ReturnLoggerFactory())

        async def main():
            app = App()
            server = Server(app, ServerConfig(hosts=("127.0.0.1",), port=0), metrics=Metrics())
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                try:
                    app.send_threadsafe("nobody", "hi")
                except RuntimeError:
                    print("RuntimeError")
                await server.shutdown()

        anyio.run(main, backend={backend!r})
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("send_threadsafe on the loop thread hung")
    assert (result.returncode, result.stdout) == (0, "RuntimeError\n"), result.stderr


# --- ordering: the forwarding fast path skips the mailbox ----------------------------------------


class Slow(Handler):
    """Answers each client message once the test sets ``app.state`` (an anyio.Event)."""

    async def on_message(self, message: str | bytes) -> None:
        await self.app.state.wait()
        await self.conn.send(f"reply to {message!s}")


class SlowInOrder(Slow):
    """The same, but it overrides ``on_receive``: messages from actors use the mailbox."""

    async def on_receive(self, message: Any) -> None:
        await self.conn.send(f"from an actor: {message}")


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (Slow, ["news", "reply to x"]),
        (SlowInOrder, ["reply to x", "from an actor: news"]),
    ],
    ids=["forwarding", "on_receive"],
)
async def test_messages_to_a_forwarding_connection_skip_its_mailbox(
    handler: type[Handler], expected: list[str]
) -> None:
    """A forwarding connection gets actor messages at once; an ``on_receive`` one in order."""
    app = App(state=anyio.Event())
    app.add_route("/slow", handler)
    async with running_server(app) as server, clients([ws_url(server, "/slow")]) as (client,):
        await client.send("x")
        (conn,) = server.connections
        await wait_until(lambda: conn.messages_in == 1)  # "x" is in the mailbox, or handled
        await app.send(conn.address, "news")
        first = await client.recv() if handler is Slow else None
        app.state.set()
        received = [first] if first is not None else []
        while len(received) < 2:
            received.append(await client.recv())
        assert received == expected


# --- service actors and ask ---------------------------------------------------------------------


async def test_a_service_actor_keeps_state_and_answers_asks_from_connections() -> None:
    """Connections ask the ``counter`` service; each number is handed out exactly once."""
    app = make_app()
    async with running_server(app) as server:
        url = ws_url(server, "/count")
        async with clients([url] * 3) as counting:
            for round_ in range(5):
                for index, client in enumerate(counting):
                    await client.send(f"c{index}r{round_}")
            replies = [[await client.recv() for _ in range(5)] for client in counting]
        numbers: list[int] = []
        for index, client_replies in enumerate(replies):
            tags = [str(reply).split("=")[0] for reply in client_replies]
            assert tags == [f"c{index}r{r}" for r in range(5)]
            mine = [int(str(reply).split("=")[1]) for reply in client_replies]
            assert mine == sorted(mine)
            numbers += mine
        assert sorted(numbers) == list(range(1, 16))
        assert await app.ask("counter", "get") == 15


class Stuck(Actor):
    """Holds each ``"hang"`` request until ``release`` is set; answers others at once."""

    def __init__(self, release: anyio.Event) -> None:
        self.release = release

    async def on_receive(self, message: Any) -> Any:
        if message == "hang":
            await self.release.wait()
            return "late"
        return f"pong {message}"


class Asker(Actor):
    """Asks ``stuck`` to hang with a 2-second timeout and reports what happened."""

    async def on_receive(self, message: Any) -> Any:
        try:
            return await self.context.ask("stuck", "hang", timeout=2.0)
        except AskTimeout as exc:
            return f"timed out after {exc.timeout:g} s"


async def test_ask_between_actors_times_out_on_the_injected_clock() -> None:
    """An actor's ``ask`` gives up after its timeout; the target then carries on."""
    release = anyio.Event()
    app = App()
    app.service(lambda: Stuck(release), names=("stuck",))
    app.service(Asker, names=("asker",))
    app.add_route("/member", Member)
    clock = FakeClock()
    config = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0)
    server = Server(app, config, metrics=Metrics(), clock=clock)
    outcome: list[Any] = []

    async def ask_the_asker() -> None:
        outcome.append(await app.ask("asker", "go", timeout=None))

    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        tg.start_soon(ask_the_asker)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.9)
        await anyio.wait_all_tasks_blocked()
        assert outcome == []
        clock.advance(0.1)
        await wait_until(lambda: bool(outcome))
        assert outcome == ["timed out after 2 s"]

        release.set()  # the late answer to the abandoned request goes nowhere
        assert await app.ask("stuck", "ping", timeout=None) == "pong ping"
        with pytest.raises(NoRecipient):
            await app.ask("nobody", "ping")
        async with clients([ws_url(server, "/member")] * 2) as members:
            for member in members:
                await joined(member)
            with pytest.raises(AmbiguousAddress):
                await app.ask(GROUP, "ping")
        await server.shutdown(drain_timeout=5)
