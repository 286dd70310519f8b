"""Resumable connections end to end: real sockets, real clients, both backends.

The server serves ``tests/e2e/apps/resume_app.py`` in this process. Clients
are ``websockets`` sync clients in worker threads; a client that "drops"
resets its TCP connection (SO_LINGER 0), as a phone changing cell would, so
the server sees no close frame.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

import anyio
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from actors import FakeClock
from examples.extending.two_nodes import Hub, HubBackplane
from supervisor import ConnectionState, KeepaliveConfig, Server, SlowConsumerPolicy
from tests.e2e.apps.resume_app import GRACE, Returning, make_app
from tests.helpers.metrics import sample
from tests.helpers.raw import STREAM_ENDED, read_head
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

TIMEOUT = 20.0
"""Seconds a client waits for one message (a deadlock guard, not a measurement)."""


class Client:
    """A blocking client of one room; for worker threads."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(
            url, open_timeout=TIMEOUT, ping_interval=None
        ).__enter__()
        self.hello: dict[str, Any] = json.loads(self.ws.recv(TIMEOUT))
        assert self.hello["type"] == "wsup.resume", self.hello

    @property
    def token(self) -> str:
        token: str = self.hello["token"]
        return token

    def recv(self) -> str | bytes:
        return self.ws.recv(TIMEOUT)

    def ask(self, text: str) -> dict[str, Any]:
        """Send ``text``; return the echo, which must be the next message."""
        self.ws.send(text)
        answer: dict[str, Any] = json.loads(self.ws.recv(TIMEOUT))
        return answer

    def drop(self) -> None:
        """Reset the TCP connection: no close frame, as when a network goes away."""
        self.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.close_socket()
        self.ws.recv_events_thread.join(TIMEOUT)

    def close(self) -> None:
        self.ws.close()

    def ended(self) -> bool:
        """Wait until the server ends the connection; whether it sent no close frame."""
        try:
            while True:
                self.ws.recv(TIMEOUT)
        except ConnectionClosed as exc:
            return exc.rcvd is None


def detached(server: Server) -> float:
    return sample(server, "wsup_connections", state="detached")


def resumes(server: Server, result: str) -> float:
    return sample(server, "wsup_resumes_total", result=result)


async def connect_and_drop(server: Server, url: str) -> tuple[Client, str]:
    """Connect, exchange a message, drop without a close frame; wait until detached."""
    client = await in_thread(Client, url)
    answer = await in_thread(client.ask, "one")
    assert answer["seen"] == 1
    await in_thread(client.drop)
    await eventually(lambda: detached(server) == 1)
    # The grace window's task was started with the detach: let it reach its sleep, so
    # that a fake clock stepped from here counts the whole window.
    await anyio.wait_all_tasks_blocked()
    address: str = answer["conn"]
    return client, address


async def test_a_dropped_connection_resumes_with_what_it_missed_in_order_once() -> None:
    """A client that drops comes back with its token: the same actor (its state, its
    group), first the messages published while it was away, in order, then live ones."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        assert first.hello == {
            "type": "wsup.resume",
            "token": first.token,
            "grace": GRACE,
            "resumed": False,
        }
        assert len(server.connections) == 1
        for n in range(5):
            await server.app.publish("room:lobby", f"m{n}")
        again = await in_thread(Client, f"{url}&resume={first.token}")
        assert again.hello == {
            "type": "wsup.resume",
            "token": first.token,
            "grace": GRACE,
            "resumed": True,
        }
        assert [await in_thread(again.recv) for _ in range(5)] == [f"m{n}" for n in range(5)]
        # Nothing twice: the next message is the answer to this one, from the same actor.
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await server.app.publish("room:lobby", "live")
        assert await in_thread(again.recv) == "live"
        assert detached(server) == 0
        assert sample(server, "wsup_connections", state="open") == 1
        assert resumes(server, "resumed") == 1
        abnormal = {"reason": "abnormal", "initiator": "network"}
        assert sample(server, "wsup_connections_closed_total", **abnormal) == 0
        assert server.app.state["closed"] == []
        await in_thread(again.close)
        await wait_until(lambda: bool(server.app.state["closed"]))
        assert server.app.state["closed"] == [(address, 1000, "")]


async def test_a_detached_connection_ends_after_its_grace_window() -> None:
    """Nobody comes back: after ``grace`` seconds (a fake clock) the actor ends with
    its own reason, and the token is refused from then on."""
    clock = FakeClock()
    async with running_server(make_app(), clock=clock) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        await server.app.publish("room:lobby", "never read")
        await clock.step(GRACE - 1)
        assert detached(server) == 1
        assert server.app.state["closed"] == []
        await clock.step(1)
        await wait_until(lambda: bool(server.app.state["closed"]))
        assert server.app.state["closed"] == [(address, 1006, "resume window expired")]
        assert detached(server) == 0
        assert not server.connections
        expired = {"reason": "resume_expired", "initiator": "network"}
        assert sample(server, "wsup_connections_closed_total", **expired) == 1
        assert resumes(server, "expired") == 1
        late = await in_thread(Client, f"{url}&resume={first.token}")
        assert late.hello["resumed"] is False
        assert late.hello["refused"] == "unknown"
        assert late.token != first.token
        answer = await in_thread(late.ask, "again")
        assert answer["seen"] == 1
        assert answer["conn"] != address
        await in_thread(late.close)


async def test_a_wrong_token_gets_a_new_connection_that_says_why() -> None:
    """An unknown token, and a token another node issued: a new connection, told so."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        for token, why in (("nonsense", "unknown"), ("abcdefgh.other-node", "other_node")):
            client = await in_thread(Client, f"{url}&resume={token}")
            assert client.hello["resumed"] is False
            assert client.hello["refused"] == why
            assert (await in_thread(client.ask, "x"))["seen"] == 1
            await in_thread(client.close)
            assert resumes(server, why) == 1
        # A route without resume: no announcement, the parameter means nothing.
        assert resumes(server, "resumed") == 0


async def test_a_token_with_another_identity_or_path_is_refused() -> None:
    """The token is bound to what the hook accepted (the user) and to the path: bob
    cannot take ada's connection, nor ada from another room; ada still can."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        for other in ("/room/lobby?user=bob", "/room/other?user=ada"):
            thief = await in_thread(Client, f"{ws_url(server, other)}&resume={first.token}")
            assert thief.hello["resumed"] is False
            assert thief.hello["refused"] == "mismatch"
            assert (await in_thread(thief.ask, "x"))["conn"] != address
            await in_thread(thief.close)
        assert resumes(server, "mismatch") == 2
        assert detached(server) == 1
        again = await in_thread(Client, f"{url}&resume={first.token}")
        assert again.hello["resumed"] is True
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.close)


async def test_a_clean_close_is_not_resumable() -> None:
    """A close frame from the client ends the actor as always."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        client = await in_thread(Client, url)
        address = (await in_thread(client.ask, "one"))["conn"]
        await in_thread(client.close)
        await wait_until(lambda: bool(server.app.state["closed"]))
        assert server.app.state["closed"] == [(address, 1000, "")]
        assert detached(server) == 0
        late = await in_thread(Client, f"{url}&resume={client.token}")
        assert late.hello["refused"] == "unknown"
        await in_thread(late.close)


async def test_what_waits_for_a_detached_client_is_bounded_by_the_outbound_limit() -> None:
    """While detached, messages queue under the route's outbound limit and policy:
    ``drop_oldest`` keeps the newest that fit, and the client gets those."""
    async with running_server(make_app(outbound_limit=64)) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        for n in range(20):
            await server.app.publish("room:lobby", f"message {n:6d}")  # 16 bytes
        assert sample(server, "wsup_messages_dropped_total", policy="drop_oldest") == 16
        again = await in_thread(Client, f"{url}&resume={first.token}")
        assert again.hello["resumed"] is True
        kept = [await in_thread(again.recv) for _ in range(4)]
        assert kept == [f"message {n:6d}" for n in range(16, 20)]
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.close)


async def test_a_detached_slow_consumer_under_disconnect_ends() -> None:
    """Under ``disconnect``, a detached connection whose buffer overflows ends (slow
    consumer), and its token is refused from then on."""
    app = make_app(outbound_limit=64, slow_consumer=SlowConsumerPolicy.DISCONNECT)
    async with running_server(app) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        for n in range(5):
            await server.app.publish("room:lobby", f"message {n:6d}")
        await wait_until(lambda: bool(server.app.state["closed"]))
        assert server.app.state["closed"] == [(address, 1013, "slow consumer")]
        slow = {"reason": "slow_consumer", "initiator": "server"}
        assert sample(server, "wsup_connections_closed_total", **slow) == 1
        assert detached(server) == 0
        late = await in_thread(Client, f"{url}&resume={first.token}")
        assert late.hello["refused"] == "unknown"
        await in_thread(late.close)


async def test_a_drain_ends_detached_connections_like_open_ones() -> None:
    """Shutdown drains a detached connection: its actor finishes and it closes with 1001."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        _, address = await connect_and_drop(server, url)
        await server.shutdown(drain_timeout=5)
        assert server.app.state["closed"] == [(address, 1001, "server shutting down")]
        going_away = {"reason": "going_away", "initiator": "server"}
        assert sample(server, "wsup_connections_closed_total", **going_away) == 1
        assert detached(server) == 0
        assert not server.connections


async def test_a_client_back_before_the_server_saw_it_leave_takes_its_connection_over() -> None:
    """The old socket still looks open (no FIN, no RST yet): a resume drops it and
    re-attaches the actor to the new one."""
    async with running_server(make_app()) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        old = await in_thread(Client, url)
        address = (await in_thread(old.ask, "one"))["conn"]
        new = await in_thread(Client, f"{url}&resume={old.token}")
        assert new.hello["resumed"] is True
        assert await in_thread(old.ended)  # dropped without a close frame
        assert await in_thread(new.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        assert server.app.state["closed"] == []
        assert len(server.connections) == 1
        await in_thread(new.close)


async def test_a_token_of_a_node_that_shares_no_backplane_is_refused() -> None:
    """Two nodes that share no backplane cannot relay (``test_resume_relay.py`` has
    those that do): the client back on the other node gets a new connection there,
    told ``other_node``; back on its own node it resumes."""
    async with running_server(make_app()) as a, running_server(make_app()) as b:
        path = "/room/lobby?user=ada"
        first, address = await connect_and_drop(a, ws_url(a, path))
        assert b.relays is None
        elsewhere = await in_thread(Client, f"{ws_url(b, path)}&resume={first.token}")
        assert elsewhere.hello["resumed"] is False
        assert elsewhere.hello["refused"] == "other_node"
        assert resumes(b, "other_node") == 1
        await in_thread(elsewhere.close)
        await a.app.publish("room:lobby", "while away")
        again = await in_thread(Client, f"{ws_url(a, path)}&resume={first.token}")
        assert again.hello["resumed"] is True
        assert await in_thread(again.recv) == "while away"
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.close)


async def test_a_client_that_stops_answering_pings_detaches_and_can_resume() -> None:
    """A client whose pongs never come (a raw socket that only reads) is dropped without
    a close frame and detached, not closed with 1011; it resumes with its token."""
    keepalive = KeepaliveConfig(ping_interval=0.2, ping_timeout=0.2)
    async with running_server(make_app(), keepalive=keepalive) as server:
        host, port = server.ports[0]
        key = base64.b64encode(os.urandom(16)).decode()
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(
                f"GET /room/lobby?user=ada HTTP/1.1\r\nHost: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            # A client protocol that only parses: its pongs are never sent.
            client = ClientProtocol(parse_uri(f"ws://{host}:{port}/"), state=State.OPEN)
            head, _, rest = (await read_head(stream)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            client.receive_data(rest)
            frames: list[Frame] = []
            with anyio.fail_after(TIMEOUT):
                while client.close_rcvd is None and not client.eof_sent:
                    frames.extend(client.events_received())  # type: ignore[arg-type]
                    try:
                        client.receive_data(await stream.receive())
                    except STREAM_ENDED:
                        client.receive_eof()
        assert [frame.opcode for frame in frames] == [Opcode.TEXT, Opcode.PING]
        assert client.close_rcvd is None  # dropped, not closed with 1011
        hello = json.loads(bytes(frames[0].data))
        (conn,) = server.connections
        assert conn.state is ConnectionState.DETACHED
        again = await in_thread(
            Client, ws_url(server, f"/room/lobby?user=ada&resume={hello['token']}")
        )
        assert again.hello["resumed"] is True
        assert await in_thread(again.ask, "one") == {"echo": "one", "seen": 1, "conn": conn.address}
        timeout = {"reason": "timeout", "initiator": "server"}
        assert sample(server, "wsup_connections_closed_total", **timeout) == 0
        await in_thread(again.close)


async def test_on_resume_runs_after_what_waited_and_before_live_traffic() -> None:
    """``on_resume`` runs when the client comes back (``on_connect`` does not run
    again): what it sends follows what waited, with the actor's state."""
    async with running_server(make_app(Returning)) as server:
        url = ws_url(server, "/room/lobby?user=ada")
        first, address = await connect_and_drop(server, url)
        await server.app.publish("room:lobby", "waited")
        again = await in_thread(Client, f"{url}&resume={first.token}")
        assert await in_thread(again.recv) == "waited"
        assert json.loads(await in_thread(again.recv)) == {"welcome_back": 1}
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        await in_thread(again.close)


async def test_two_nodes_on_a_backplane_of_their_own_relay_a_resume() -> None:
    """Any backplane that carries messages between nodes relays a resume, not only
    Redis: two nodes in one process on the hub of ``docs/extending.md``."""
    hub = Hub()
    async with (
        running_server(make_app(), backplane=HubBackplane(hub)) as a,
        running_server(make_app(), backplane=HubBackplane(hub)) as b,
    ):
        path = "/room/lobby?user=ada"
        first, address = await connect_and_drop(a, ws_url(a, path))
        await b.app.publish("room:lobby", "while away")
        again = await in_thread(Client, f"{ws_url(b, path)}&resume={first.token}")
        assert again.hello["resumed"] is True
        assert await in_thread(again.recv) == "while away"
        assert await in_thread(again.ask, "two") == {"echo": "two", "seen": 2, "conn": address}
        assert resumes(b, "relayed") == 1
        await in_thread(again.close)
        await wait_until(lambda: bool(a.app.state["closed"]))
        assert a.app.state["closed"] == [(address, 1000, "")]
