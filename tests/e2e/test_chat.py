"""The chat example against the SPEC's chat contract, with two independent clients.

``examples.chat:app`` is served in-process on a free loopback port (asyncio with
uvloop, and trio). The same conversations run twice: with the ``websockets``
sync client in a worker thread, and with Node's ``ws`` client
(``tests/e2e/node/chat_client.js``, installed by ``.ci/test-deps``).

A chat connection registers its user and joins its room in ``on_connect``,
which runs just after the handshake completes; before anyone speaks, the tests
wait until the server lists every expected room member. To show that a message
did *not* reach a connection, the tests use a barrier: that connection's own
next message comes back first. Each connection's outbound buffer is FIFO and a
room message is queued for every member before the sender gets its own copy,
so a stray message would have arrived before the barrier.

The last test runs the chat as a two-node cluster (one node in-process, one
``wsup serve`` child process) on a private ``redis-server``, which it stops
and starts again mid-chat.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
import redis
import structlog.testing
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.exceptions import InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from actors import Backoff
from examples import chat
from supervisor import Server
from supervisor.redis import RedisBackplane
from tests.e2e.apps.server_process import ServerProcess
from tests.helpers.node import node
from tests.helpers.redis_server import REDIS_SERVER, RedisServer
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

E2E = Path(__file__).resolve().parent
CHAT_CLIENT = E2E / "node" / "chat_client.js"
TIMEOUT = 20.0


# --- the protocol ------------------------------------------------------------------------


def chat_path(room: str, user: str | None = None) -> str:
    """Return the path of ``room`` for ``user`` (no ``?user`` when ``user`` is None)."""
    query = "" if user is None else "?" + urlencode({"user": user})
    return f"/chat/{quote(room, safe='')}{query}"


def say(text: str) -> str:
    """A client's ``say`` message."""
    return json.dumps({"type": "say", "text": text})


def dm(to: str, text: str) -> str:
    """A client's ``dm`` message."""
    return json.dumps({"type": "dm", "to": to, "text": text})


def said(room: str, sender: str, text: str) -> dict[str, Any]:
    """What every member of ``room`` receives when ``sender`` says ``text`` (without the
    position: see :func:`positionless`)."""
    return {"type": "said", "room": room, "from": sender, "text": text}


def positionless(message: Any) -> Any:
    """``message`` without the ``epoch`` and ``offset`` of a ``said``, which must be a
    string and an int; other messages as they are."""
    if isinstance(message, dict) and message.get("type") == "said":
        message = dict(message)
        assert isinstance(message.pop("epoch"), str), message
        offset = message.pop("offset")
        assert type(offset) is int, message
    return message


def dm_from(sender: str, text: str) -> dict[str, Any]:
    """What every connection of a user receives when ``sender`` sends them ``text``."""
    return {"type": "dm", "from": sender, "text": text}


# Messages that must each get an error and leave the connection open.
BAD_MESSAGES: list[tuple[str, str | bytes]] = [
    ("not JSON", "{nope"),
    ("binary, not UTF-8", b"\xff\xfe\x00"),
    ("JSON, not an object", "[1, 2]"),
    ("no type", json.dumps({"text": "hi"})),
    ("unknown type", json.dumps({"type": "shout", "text": "hi"})),
    ("text is a number", json.dumps({"type": "say", "text": 42})),
    ("text is missing", json.dumps({"type": "say"})),
    ("dm text is a list", json.dumps({"type": "dm", "to": "bob", "text": ["hi"]})),
    ("dm to is a number", json.dumps({"type": "dm", "to": 7, "text": "hi"})),
    ("dm to nobody connected", dm("nobody", "hi")),
]


def is_error(message: Any) -> bool:
    """Whether ``message`` is the chat's error message, with a non-empty explanation."""
    return (
        isinstance(message, dict)
        and set(message) == {"type", "error"}
        and message["type"] == "error"
        and isinstance(message["error"], str)
        and message["error"] != ""
    )


# --- the server side -------------------------------------------------------------------


async def joined(server: Server, members: dict[str, int]) -> None:
    """Wait until each address (``room:R``) has exactly the given number of local members."""
    runtime = server.runtime
    with anyio.fail_after(TIMEOUT):
        while any(len(runtime.members(a)) != n for a, n in members.items()):
            await anyio.lowlevel.checkpoint()


def wait_joined(server: Server, members: dict[str, int]) -> None:
    """:func:`joined`, from the worker thread a scenario runs in."""
    anyio.from_thread.run(joined, server, members)


# --- the websockets client --------------------------------------------------------------


def recv_raw(ws: ClientConnection) -> Any:
    """Return the next message, which must be JSON text, as it is."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    return json.loads(message)


def recv_json(ws: ClientConnection) -> Any:
    """Return the next message, which must be JSON text; a ``said`` without its position."""
    return positionless(recv_raw(ws))


def open_chat(stack: ExitStack, server: Server, room: str, user: str) -> ClientConnection:
    """Join ``room`` as ``user``; ``stack`` closes the connection."""
    return stack.enter_context(connect(ws_url(server, chat_path(room, user)), open_timeout=TIMEOUT))


@pytest.mark.parametrize("query", ["", "?user=", "?name=ada"])
async def test_without_a_user_the_handshake_is_refused_with_400(query: str) -> None:
    """A missing or empty ``?user`` gets HTTP 400, with the reason in the body."""
    async with running_server(chat.app) as server:

        def scenario() -> InvalidStatus:
            url = ws_url(server, "/chat/lobby" + query)
            with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=TIMEOUT):
                pass
            return refused.value

        refusal = await in_thread(scenario)
        assert refusal.response.status_code == 400
        assert b"user" in refusal.response.body
        assert server.connections == set()


async def test_say_reaches_every_connection_in_the_room_and_no_other_room() -> None:
    """A ``say`` reaches each room member (sender and its other tabs too), nobody elsewhere."""
    async with running_server(chat.app) as server:

        def scenario() -> None:
            with ExitStack() as stack:
                ada1 = open_chat(stack, server, "lobby", "ada")
                ada2 = open_chat(stack, server, "lobby", "ada")
                bob = open_chat(stack, server, "lobby", "bob")
                carol = open_chat(stack, server, "tea room", "carol")
                wait_joined(server, {"room:lobby": 3, "room:tea room": 1})

                ada1.send(say("hello lobby"))
                for ws in (ada1, ada2, bob):
                    assert recv_json(ws) == said("lobby", "ada", "hello lobby")

                carol.send(say("anyone?"))  # the barrier: her own message comes first
                assert recv_json(carol) == said("tea room", "carol", "anyone?")

                bob.send(say("bye"))  # and theirs: carol's message did not come first
                for ws in (ada1, ada2, bob):
                    assert recv_json(ws) == said("lobby", "bob", "bye")

        await in_thread(scenario)


async def test_dm_reaches_every_connection_of_the_user_in_any_room() -> None:
    """A ``dm`` reaches the target's connections in every room, and nobody else."""
    async with running_server(chat.app) as server:

        def scenario() -> None:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                bob1 = open_chat(stack, server, "lobby", "bob")
                bob2 = open_chat(stack, server, "kitchen", "bob")
                carol = open_chat(stack, server, "lobby", "carol")
                wait_joined(server, {"room:lobby": 3, "room:kitchen": 1})

                ada.send(dm("bob", "psst"))
                assert recv_json(bob1) == dm_from("ada", "psst")
                assert recv_json(bob2) == dm_from("ada", "psst")

                carol.send(say("barrier"))  # neither ada nor carol got the dm first
                for ws in (ada, bob1, carol):
                    assert recv_json(ws) == said("lobby", "carol", "barrier")
                bob2.send(say("here"))  # nor did bob2 get anything else
                assert recv_json(bob2) == said("kitchen", "bob", "here")

        await in_thread(scenario)


async def test_bad_messages_get_an_error_and_the_connection_stays_open() -> None:
    """Invalid JSON, an unknown type, wrong field types: an error each, then chat goes on."""
    async with running_server(chat.app) as server:

        def scenario() -> None:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                wait_joined(server, {"room:lobby": 1})
                for number, (case, message) in enumerate(BAD_MESSAGES):
                    ada.send(message)
                    assert is_error(recv_json(ada)), case
                    ada.send(say(f"still here {number}"))
                    assert recv_json(ada) == said("lobby", "ada", f"still here {number}"), case
                assert ada.state is State.OPEN

        await in_thread(scenario)
        assert server.metrics.registry.get_sample_value(
            "wsup_connections_closed_total", {"reason": "internal_error", "initiator": "server"}
        ) in (None, 0.0)


# --- history and recovery ----------------------------------------------------------------


def since_path(room: str, user: str, since: str) -> str:
    """The path of ``room`` for ``user``, coming back from position ``since``."""
    return f"{chat_path(room, user)}&{urlencode({'since': since})}"


async def test_said_carries_the_epoch_and_an_offset_one_more_each_time() -> None:
    """Each room numbers its ``said`` messages 1, 2, 3 in one epoch (a string); rooms
    are numbered apart."""
    async with running_server(chat.app) as server:

        def scenario() -> list[Any]:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                bob = open_chat(stack, server, "kitchen", "bob")
                wait_joined(server, {"room:lobby": 1, "room:kitchen": 1})
                got = []
                for text in ("one", "two", "three"):
                    ada.send(say(text))
                    got.append(recv_raw(ada))
                bob.send(say("elsewhere"))
                got.append(recv_raw(bob))
                return got

        one, two, three, elsewhere = await in_thread(scenario)
    assert isinstance(one["epoch"], str)
    assert one["epoch"] != ""
    assert [(m["epoch"], m["offset"]) for m in (one, two, three)] == [
        (one["epoch"], 1),
        (one["epoch"], 2),
        (one["epoch"], 3),
    ]
    assert positionless(three) == said("lobby", "ada", "three")
    assert elsewhere["offset"] == 1


async def test_since_replays_the_later_said_messages_in_order_then_live_ones() -> None:
    """Back with ``since=EPOCH:2`` after four messages: the third and fourth come first,
    exactly as they were sent the first time, then what is said from then on."""
    async with running_server(chat.app) as server:

        def scenario() -> None:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                wait_joined(server, {"room:lobby": 1})
                first = []
                for number in range(1, 5):
                    ada.send(say(f"m{number}"))
                    first.append(recv_raw(ada))
                since = f"{first[1]['epoch']}:{first[1]['offset']}"
                url = ws_url(server, since_path("lobby", "bob", since))
                bob = stack.enter_context(connect(url, open_timeout=TIMEOUT))
                assert [recv_raw(bob), recv_raw(bob)] == first[2:]
                wait_joined(server, {"room:lobby": 2})
                ada.send(say("live"))
                live = recv_raw(bob)
                assert positionless(live) == said("lobby", "ada", "live")
                assert (live["epoch"], live["offset"]) == (first[0]["epoch"], 5)

        await in_thread(scenario)
        assert (
            server.metrics.registry.get_sample_value(
                "wsup_history_recoveries_total", {"result": "recovered"}
            )
            == 1.0
        )
        assert (
            server.metrics.registry.get_sample_value("wsup_history_recovered_messages_total") == 2.0
        )


async def test_since_that_cannot_be_recovered_first_sends_recovery_failed() -> None:
    """An epoch the room never had (a restarted server's): ``recovery_failed`` comes first,
    then the live messages."""
    async with running_server(chat.app) as server:

        def scenario() -> None:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                wait_joined(server, {"room:lobby": 1})
                ada.send(say("before"))
                recv_json(ada)
                url = ws_url(server, since_path("lobby", "bob", "0ld3p0ch:1"))
                bob = stack.enter_context(connect(url, open_timeout=TIMEOUT))
                assert recv_raw(bob) == {"type": "recovery_failed", "room": "lobby"}
                wait_joined(server, {"room:lobby": 2})
                ada.send(say("after"))
                assert recv_json(bob) == said("lobby", "ada", "after")

        await in_thread(scenario)


@pytest.mark.parametrize("since", ["nocolon", "epoch:", "epoch:-1", "epoch:1.5", ":3"])
async def test_a_malformed_since_is_refused_with_400(since: str) -> None:
    """``since`` must be ``EPOCH:OFFSET``: anything else gets HTTP 400 saying so."""
    async with running_server(chat.app) as server:

        def scenario() -> InvalidStatus:
            url = ws_url(server, since_path("lobby", "ada", since))
            with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=TIMEOUT):
                pass
            return refused.value

        refusal = await in_thread(scenario)
        assert refusal.response.status_code == 400
        assert b"since" in refusal.response.body


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_redis_losing_its_data_makes_a_returning_client_get_recovery_failed(
    redis_server: RedisServer,
) -> None:
    """The room's history is in Redis; Redis restarted empty: a client back with its old
    position gets ``recovery_failed``, and the room starts a new epoch at offset 1."""
    fast = Backoff(minimum=0.01, maximum=0.1, jitter=0.1)
    backplane = RedisBackplane(redis_server.url, reconnect=fast)
    async with running_server(chat.app, backplane=backplane) as server:

        def before() -> Any:
            with ExitStack() as stack:
                ada = open_chat(stack, server, "lobby", "ada")
                wait_joined(server, {"room:lobby": 1})
                anyio.from_thread.run(backplane.synced)
                ada.send(say("before"))
                return recv_raw(ada)

        old = await in_thread(before)
        await in_thread(redis_server.kill)
        await backplane.wait_for_state(up=False)
        await in_thread(redis_server.start)
        await backplane.wait_for_state(up=True)

        def after() -> tuple[Any, Any]:
            with ExitStack() as stack:
                since = f"{old['epoch']}:{old['offset']}"
                url = ws_url(server, since_path("lobby", "bob", since))
                bob = stack.enter_context(connect(url, open_timeout=TIMEOUT))
                failed = recv_raw(bob)
                wait_joined(server, {"room:lobby": 1})
                bob.send(say("after"))
                return failed, recv_raw(bob)

        failed, new = await in_thread(after)
    assert old["offset"] == 1
    assert failed == {"type": "recovery_failed", "room": "lobby"}
    assert positionless(new) == said("lobby", "bob", "after")
    assert new["offset"] == 1
    assert new["epoch"] != old["epoch"]


# --- Node's ws client ---------------------------------------------------------------------


async def run_chat_client(
    server: Server,
    clients: dict[str, str],
    steps: list[dict[str, Any]],
    members: dict[str, int],
) -> dict[str, Any]:
    """Run ``chat_client.js`` with ``clients`` (id → path) and ``steps``; return its report.

    Between connecting and the first step, waits until the server lists
    ``members`` (address → count).
    """
    spec = {"clients": {cid: ws_url(server, path) for cid, path in clients.items()}, "steps": steps}
    process = await anyio.open_process(
        [node(), str(CHAT_CLIENT)],
        cwd=E2E,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(30):
            await process.stdin.send(json.dumps(spec).encode() + b"\n")
            settled = json.loads(await lines.receive_until(b"\n", 1 << 20))
            assert "settled" in settled, settled
            await joined(server, members)
            await process.stdin.send(b"go\n")
            report: dict[str, Any] = json.loads(await lines.receive_until(b"\n", 1 << 24))
            assert await process.wait() == 0, report
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert report["errors"] == [], report
    return report


def received(report: dict[str, Any], client: str) -> list[Any]:
    """The messages ``client`` received, in order (a ``said`` without its position)."""
    return [positionless(m) for m in report["clients"][client]["received"]]


async def test_node_without_a_user_is_refused_with_400() -> None:
    """Node's ws sees HTTP 400 for a missing or empty ``?user``; no connection opens."""
    async with running_server(chat.app) as server:
        report = await run_chat_client(
            server,
            {"none": "/chat/lobby", "empty": "/chat/lobby?user="},
            [],
            {},
        )
        for client in ("none", "empty"):
            entry = report["clients"][client]
            assert (entry["opened"], entry["status"]) == (False, 400), entry
            assert "user" in entry["body"]
        assert server.connections == set()


async def test_node_say_reaches_every_connection_in_the_room_and_no_other_room() -> None:
    """Node's ws: a ``say`` reaches each room member, the sender's tabs included, nobody else."""
    async with running_server(chat.app) as server:
        report = await run_chat_client(
            server,
            {
                "ada1": chat_path("lobby", "ada"),
                "ada2": chat_path("lobby", "ada"),
                "bob": chat_path("lobby", "bob"),
                "carol": chat_path("tea room", "carol"),
            },
            [
                {"send": "ada1", "data": say("hello lobby")},
                *({"expect": c, "count": 1} for c in ("ada1", "ada2", "bob")),
                {"send": "carol", "data": say("anyone?")},
                {"expect": "carol", "count": 1},
                {"send": "bob", "data": say("bye")},
                *({"expect": c, "count": 2} for c in ("ada1", "ada2", "bob")),
            ],
            {"room:lobby": 3, "room:tea room": 1},
        )
    lobby = [said("lobby", "ada", "hello lobby"), said("lobby", "bob", "bye")]
    for client in ("ada1", "ada2", "bob"):
        assert received(report, client) == lobby, client
    assert received(report, "carol") == [said("tea room", "carol", "anyone?")]
    for entry in report["clients"].values():
        assert entry["close"] == {"code": 1000, "reason": "done"}, entry


async def test_node_dm_reaches_every_connection_of_the_user_in_any_room() -> None:
    """Node's ws: a ``dm`` reaches the target's connections in every room, and nobody else."""
    async with running_server(chat.app) as server:
        report = await run_chat_client(
            server,
            {
                "ada": chat_path("lobby", "ada"),
                "bob1": chat_path("lobby", "bob"),
                "bob2": chat_path("kitchen", "bob"),
                "carol": chat_path("lobby", "carol"),
            },
            [
                {"send": "ada", "data": dm("bob", "psst")},
                {"expect": "bob1", "count": 1},
                {"expect": "bob2", "count": 1},
                {"send": "carol", "data": say("barrier")},
                {"expect": "ada", "count": 1},
                {"expect": "bob1", "count": 2},
                {"expect": "carol", "count": 1},
                {"send": "bob2", "data": say("here")},
                {"expect": "bob2", "count": 2},
            ],
            {"room:lobby": 3, "room:kitchen": 1},
        )
    barrier = said("lobby", "carol", "barrier")
    assert received(report, "bob1") == [dm_from("ada", "psst"), barrier]
    assert received(report, "bob2") == [dm_from("ada", "psst"), said("kitchen", "bob", "here")]
    assert received(report, "ada") == [barrier]
    assert received(report, "carol") == [barrier]


async def test_node_bad_messages_get_an_error_and_the_connection_stays_open() -> None:
    """Node's ws: each bad text message gets an error; a ``say`` after it still works."""
    texts = [message for _, message in BAD_MESSAGES if isinstance(message, str)]
    steps: list[dict[str, Any]] = []
    for number, message in enumerate(texts):
        steps += [
            {"send": "ada", "data": message},
            {"send": "ada", "data": say(f"still here {number}")},
            {"expect": "ada", "count": 2 * (number + 1)},
        ]
    async with running_server(chat.app) as server:
        report = await run_chat_client(
            server, {"ada": chat_path("lobby", "ada")}, steps, {"room:lobby": 1}
        )
    messages = received(report, "ada")
    assert len(messages) == 2 * len(texts)
    for number, message in enumerate(texts):
        error, echo = messages[2 * number : 2 * number + 2]
        assert is_error(error), (message, error)
        assert echo == said("lobby", "ada", f"still here {number}"), message
    assert report["clients"]["ada"]["close"] == {"code": 1000, "reason": "done"}


# --- a Redis outage ---------------------------------------------------------------------


def wait_subscribed(url: str, address: str) -> None:
    """Wait until a node has subscribed to ``address`` in Redis.

    A ``wsup serve`` child process gives no other sign that a connection's
    ``on_connect`` has reached Redis, so this asks Redis (a bounded poll).
    """
    inspector = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + TIMEOUT
        while inspector.pubsub_numsub(f"wsup:addr:{address}") != [
            (f"wsup:addr:{address}".encode(), 1)
        ]:
            assert time.monotonic() < deadline, f"nobody subscribed to {address}"
            time.sleep(0.01)
    finally:
        inspector.close()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_redis_outage_answers_remote_sends_with_an_error_and_closes_nothing(
    redis_server: RedisServer,
) -> None:
    """Redis stopped mid-chat: each dm or say gets an error, local delivery goes on, no
    handler crashes and no connection closes; Redis back: dms cross nodes again."""
    url = redis_server.url
    fast = Backoff(minimum=0.01, maximum=0.1, jitter=0.1)
    with (
        structlog.testing.capture_logs() as logs,
        ServerProcess("examples.chat:app", "--redis", url) as remote,
    ):
        async with running_server(chat.app, backplane=RedisBackplane(url, reconnect=fast)) as a:
            backplane = a.runtime.backplane
            assert isinstance(backplane, RedisBackplane)
            await in_thread(remote.wait_started)

            def scenario() -> None:
                with ExitStack() as stack:
                    ada = open_chat(stack, a, "lobby", "ada")
                    bob = open_chat(stack, a, "lobby", "bob")
                    carol = stack.enter_context(
                        connect(remote.url(chat_path("lobby", "carol")), open_timeout=TIMEOUT)
                    )
                    wait_joined(a, {"room:lobby": 2})
                    wait_subscribed(url, "user:carol")
                    ada.send(dm("carol", "before"))
                    assert recv_json(carol) == dm_from("ada", "before")

                    redis_server.kill()
                    anyio.from_thread.run(partial(backplane.wait_for_state, up=False))
                    remote.wait_for_event("redis.connection_lost")
                    # More sends than the restart intensity (3): a crash per send would
                    # close the sender with 1011.
                    for number in range(5):
                        ada.send(dm("bob", f"local {number}"))
                        assert recv_json(bob) == dm_from("ada", f"local {number}")
                        assert is_error(recv_json(ada))
                        ada.send(dm("carol", f"lost {number}"))
                        assert is_error(recv_json(ada))
                        carol.send(dm("ada", f"lost {number}"))
                        assert is_error(recv_json(carol))
                    # A room message gets its offset in Redis: now it reaches nobody.
                    ada.send(say("not sent"))
                    assert is_error(recv_json(ada))

                    redis_server.start()
                    anyio.from_thread.run(partial(backplane.wait_for_state, up=True))
                    remote.wait_for_event("redis.connected", count=2)
                    ada.send(dm("carol", "after"))
                    # Nothing sent during the outage arrives late.
                    assert recv_json(carol) == dm_from("ada", "after")
                    carol.send(dm("ada", "back to you"))
                    assert recv_json(ada) == dm_from("carol", "back to you")
                    ada.send(say("barrier"))  # no error came before it
                    assert recv_json(ada) == said("lobby", "ada", "barrier")
                    for ws in (ada, bob, carol):
                        assert ws.state is State.OPEN

            await in_thread(scenario)
            await eventually(lambda: not a.connections)
            a.metrics.flush()
            registry = a.metrics.registry
            assert (
                registry.get_sample_value("wsup_actor_crashes_total", {"kind": "connection"}) == 0
            )
            closed = {
                (s.labels["reason"], s.labels["initiator"]): s.value
                for metric in registry.collect()
                if metric.name == "wsup_connections_closed"
                for s in metric.samples
                if s.name == "wsup_connections_closed_total" and s.value
            }
            assert closed == {("normal", "client"): 2}  # ada and bob, when the test closed them
        assert remote.events("actor.crashed") == []
        assert [r["code"] for r in remote.events("connection.closed")] in ([], [1000])
    assert [e for e in logs if e["event"] in ("actor.crashed", "actor.intensity_exceeded")] == []
