"""docs/faq.md: every question of the websockets server FAQ is answered, and the answers hold.

Each ```python block of the FAQ is a file of ``examples/faq/`` verbatim. Each
example app is served in-process on a free loopback port (asyncio with uvloop,
and trio) and talked to with the ``websockets`` sync client in a worker thread.
What only a real process shows (SIGTERM, SIGUSR1, the bind-failure line) runs
``python -m supervisor serve`` as a child process.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib
import re
import signal
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection

import supervisor.observe._watchdog
from actors import ALL, Backplane, BackplaneUnavailable, FakeClock, Node
from examples.faq import (
    arguments,
    blocking,
    client_ip,
    closing,
    firehose,
    health_check,
    keep_connections,
    listen,
    message_all,
    message_user,
    one_message,
    premature_close,
    read_headers,
    request_path,
    same_port,
    set_headers,
    topics,
)
from supervisor import App, Server
from supervisor.metrics import Metrics
from tests.e2e.apps.server_process import ServerProcess, run_cli
from tests.helpers.clients import get_url, open_ws, recv_until_closed
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.metrics import sample
from tests.helpers.server import http_url, running_server, ws_url
from tests.helpers.waiting import in_thread, wait_until

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "docs" / "faq.md"
EXAMPLES = ROOT / "examples" / "faq"
TIMEOUT = 20.0

QUESTIONS = [
    "Why does the server close the connection prematurely?",
    "Why does the server close the connection after one message?",
    "Why can only one client connect at a time?",
    "How do I send a message to all users?",
    "How do I send a message to a single user?",
    "How do I send a message to a channel, a topic, or some users?",
    "How do I pass arguments to the connection handler?",
    "How do I access the request path?",
    "How do I access HTTP headers?",
    "How do I set HTTP headers?",
    "How do I get the IP address of the client?",
    "How do I set the IP addresses that my server listens on?",
    "What does `OSError: [Errno 99] error while attempting to bind on address ('::1', 80, 0, 0):"
    " address not available` mean?",
    "How do I close a connection?",
    "How do I stop a server?",
    "How do I stop a server while keeping existing connections open?",
    "How do I implement a health check?",
    "How do I run HTTP and WebSocket servers on the same port?",
]
"""The questions of the websockets server FAQ, in its order."""


# --- helpers ---------------------------------------------------------------------------------


def wait_members(server: Server, address: str, count: int) -> None:
    """From a scenario's worker thread: wait until ``address`` has ``count`` members."""
    anyio.from_thread.run(wait_until, lambda: len(server.runtime.members(address)) == count)


def recv(ws: ClientConnection) -> str | bytes:
    """Return the next message."""
    return ws.recv(timeout=TIMEOUT)


def refused(url: str, **options: Any) -> InvalidStatus:
    """Open a connection the server must refuse with an HTTP status; return the refusal."""
    with pytest.raises(InvalidStatus) as caught, open_ws(url, **options):
        pass
    return caught.value


# --- the FAQ and its files ----------------------------------------------------------------------

_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_HEADER = re.compile(r"# (examples/faq/(\w+)\.py)\n")


def _python_blocks() -> list[str]:
    return _FENCE.findall(FAQ.read_text(encoding="utf-8"))


def test_the_faq_answers_every_question_in_order() -> None:
    """The FAQ's second-level headings are the websockets server FAQ's questions, in order."""
    headings = re.findall(r"^## (.+)$", FAQ.read_text(encoding="utf-8"), re.MULTILINE)
    assert headings == QUESTIONS


def test_each_answer_says_what_goes_wrong_and_what_wsup_does() -> None:
    """Under every question: what breaks in a hand-written server, then wsup's answer."""
    sections = re.split(r"^## .+$", FAQ.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    assert len(sections) == len(QUESTIONS)
    for question, section in zip(QUESTIONS, sections, strict=True):
        assert "**By hand:**" in section, question
        assert "**With wsup:**" in section, question


def test_every_python_block_is_an_example_file_verbatim() -> None:
    """Each ```python block names its file on line one and equals that file exactly."""
    assert_blocks_are_files(_python_blocks(), _HEADER, "in the FAQ")


def test_every_example_file_is_in_the_faq_and_has_an_app() -> None:
    """Each examples/faq module is quoted in the FAQ and exposes an ``app``."""
    quoted = {m.group(2) for block in _python_blocks() if (m := _HEADER.match(block))}
    names = {p.stem for p in EXAMPLES.glob("*.py") if p.stem != "__init__"}
    assert names == quoted
    for name in names:
        module = importlib.import_module(f"examples.faq.{name}")
        assert isinstance(module.app, App), name


def test_the_messaging_guide_code_is_valid_python() -> None:
    """docs/messaging.md quotes fragments, not files: each one must at least parse."""
    guide = (ROOT / "docs" / "messaging.md").read_text(encoding="utf-8")
    blocks = _FENCE.findall(guide)
    assert blocks
    for block in blocks:
        ast.parse(block)


def test_the_bind_failure_shown_is_what_the_command_line_prints() -> None:
    """``wsup serve --host`` on an address IPv6 cannot bind prints the FAQ's one line."""
    text = FAQ.read_text(encoding="utf-8")
    found = re.search(r"```text\n\$ (wsup serve [^\n]+)\n([^\n]+)\n```", text)
    assert found is not None, "the FAQ shows no `$ wsup serve ...` session"
    command, shown = found.groups()
    args = command.split()[1:]
    result = run_cli(*args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [shown]


# --- prematurely, after one message ------------------------------------------------------------


@pytest.mark.anyio
async def test_premature_close_background_jobs_report_to_an_open_connection() -> None:
    """Hooks return at once; each job reports later; the connection stays open throughout."""
    async with running_server(premature_close.app) as server:

        def scenario() -> list[str | bytes]:
            with open_ws(ws_url(server, "/jobs")) as ws:
                replies = [recv(ws)]
                for job in ("0", "0.0"):
                    ws.send(job)
                    replies += [recv(ws), recv(ws)]
                assert ws.state is State.OPEN
                return replies

        replies = await in_thread(scenario)
        assert replies == [
            "send me a number of seconds",
            "working on a job of 0 s",
            "job of 0 s done",
            "working on a job of 0 s",
            "job of 0 s done",
        ]
        # Each job stopped itself once done: no service actor is left.
        await wait_until(lambda: server.runtime.statistics().actors.get("service", 0) == 0)


@pytest.mark.anyio
async def test_one_message_every_message_is_handled_in_both_styles() -> None:
    """``on_message`` and ``async for message in conn`` both see every message."""
    async with running_server(one_message.app) as server:

        def scenario(path: str) -> list[str | bytes]:
            with open_ws(ws_url(server, path)) as ws:
                for message in ("one", "two", b"\x03", "four"):
                    ws.send(message)
                replies = [recv(ws) for _ in range(4)]
                assert ws.state is State.OPEN
                return replies

        for path in ("/shout", "/shout-loop"):
            assert await in_thread(scenario, path) == ["ONE", "TWO", b"\x03", "FOUR"]


# --- one client at a time ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_blocking_def_hook_runs_in_a_thread_while_others_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a plain ``def`` hook blocks, other connections and /healthz are answered."""
    entered, release = threading.Event(), threading.Event()

    def blocking_sleep(seconds: float) -> None:
        entered.set()
        release.wait(TIMEOUT)

    monkeypatch.setattr(blocking, "time", types.SimpleNamespace(sleep=blocking_sleep))
    async with running_server(blocking.app) as server:
        reports: list[str | bytes] = []

        def report() -> None:
            with open_ws(ws_url(server, "/report")) as ws:
                ws.send("q3")
                reports.append(recv(ws))

        def ping() -> str | bytes:
            with open_ws(ws_url(server, "/ping")) as ws:
                ws.send("ping")
                return recv(ws)

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread, report)
            assert await in_thread(entered.wait, TIMEOUT)
            assert await in_thread(ping) == "pong"
            assert await in_thread(get_url, http_url(server, "/healthz")) == (
                200,
                "text/plain; charset=utf-8",
                "ok\n",
            )
            assert reports == []
            release.set()
    assert reports == ["report q3 ready"]


class StallRecorder:
    """Stands in for the watchdog's logger: keeps ``loop.stalled`` lines, flags the first."""

    def __init__(self) -> None:
        self.stalls: list[dict[str, Any]] = []
        self.seen = threading.Event()

    def warning(self, event: str, **fields: Any) -> None:
        """Record one warning (called from the watchdog's thread)."""
        if event == "loop.stalled":
            self.stalls.append(fields)
            self.seen.set()


@pytest.mark.anyio
async def test_blocking_call_in_an_async_hook_is_named_by_the_watchdog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``time.sleep`` in an ``async def`` stalls the loop; wsup logs the actor and hook."""
    # Lock.acquire is C code: the innermost Python frame on the loop is on_message itself.
    held = threading.Lock()
    held.acquire()
    monkeypatch.setattr(blocking, "time", types.SimpleNamespace(sleep=held.acquire))
    recorder = StallRecorder()
    monkeypatch.setattr(supervisor.observe._watchdog, "_log", recorder)
    async with running_server(blocking.app, loop_lag_threshold=0.05) as server:

        def scenario() -> str | bytes:
            with open_ws(ws_url(server, "/mistake")) as ws:
                ws.send("x")
                # The loop stays stalled until the watchdog has reported it.
                assert recorder.seen.wait(TIMEOUT)
                held.release()
                return recv(ws)

        assert await in_thread(scenario) == "finally"
    stall = recorder.stalls[0]
    assert stall["actor"].startswith("conn:")
    assert stall["callback"] == "on_message"
    source = (EXAMPLES / "blocking.py").read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(source, 1) if "time.sleep(1)  # noqa" in text)
    assert stall["location"] == f"blocking.py:{line}"
    assert f"location=blocking.py:{line}" in FAQ.read_text(encoding="utf-8")


@pytest.mark.anyio
async def test_firehose_stays_within_its_buffer_and_others_are_served() -> None:
    """A send-forever handler yields: others are served, its buffer stays bounded."""
    limit = 64 * 1024
    async with running_server(firehose.app) as server:

        def buffered() -> list[int]:
            return [conn.buffered_bytes for conn in server.connections]

        def scenario() -> tuple[list[int], str | bytes, list[int]]:
            # max_queue=None: a full queue makes the sync client stop reading, and it
            # would then miss the server's close frame and wait out its close timeout.
            with open_ws(ws_url(server, "/firehose"), max_queue=None) as hose:
                numbers = [int(str(recv(hose)).split()[1]) for _ in range(200)]
                with open_ws(ws_url(server, "/ping")) as other:
                    other.send("ping")
                    pong = recv(other)
                assert get_url(http_url(server, "/healthz"))[::2] == (200, "ok\n")
                sizes = anyio.from_thread.run_sync(buffered)
                numbers += [int(str(recv(hose)).split()[1]) for _ in range(200)]
            return numbers, pong, sizes

        numbers, pong, sizes = await in_thread(scenario)
        assert pong == "pong"
        assert numbers == sorted(set(numbers))  # in order, maybe with stale ones dropped
        assert all(size <= limit for size in sizes)
        await wait_until(lambda: not server.connections)
    crashed = sample(server, "wsup_actor_crashes_total", kind="connection")
    assert crashed == 0


# --- all users, one user, some users ------------------------------------------------------------


@pytest.mark.anyio
async def test_message_all_reaches_every_open_connection_and_forgets_closed_ones() -> None:
    """``broadcast`` from a task, a thread and a handler reaches everyone connected."""
    async with running_server(message_all.app) as server:
        url = ws_url(server, "/live")

        def scenario() -> None:
            with open_ws(url) as ada, open_ws(url) as bob:
                with open_ws(url) as carol:
                    wait_members(server, ALL, 3)
                    anyio.from_thread.run(message_all.message_all, "maintenance at noon")
                    message_all.message_all_from_a_thread("from a thread")
                    ada.send("hi")
                    for ws in (ada, bob, carol):
                        assert [recv(ws) for _ in range(3)] == [
                            "maintenance at noon",
                            "from a thread",
                            "someone said hi",
                        ]
                wait_members(server, ALL, 2)
                anyio.from_thread.run(message_all.message_all, "still here")
                assert recv(ada) == recv(bob) == "still here"

        await in_thread(scenario)
        assert sample(server, "wsup_dead_letters_total", reason="no_recipient") == 0


@pytest.mark.anyio
async def test_message_user_reaches_each_of_the_users_connections_only() -> None:
    """``user:NAME`` reaches all of that user's connections; nobody connected is no error."""
    async with running_server(message_user.app) as server:
        url = ws_url(server, "/notifications")

        def scenario() -> None:
            assert refused(url).response.status_code == 401
            assert refused(f"{url}?token=nope").response.status_code == 401
            with (
                open_ws(f"{url}?token=t-ada") as phone,
                open_ws(f"{url}?token=t-ada") as laptop,
                open_ws(f"{url}?token=t-bob") as bob,
            ):
                wait_members(server, "user:ada", 2)
                wait_members(server, "user:bob", 1)
                anyio.from_thread.run(message_user.message_user, "ada", "for ada")
                anyio.from_thread.run(message_user.message_user, "bob", "for bob")
                anyio.from_thread.run(message_user.message_user, "carol", "for carol")
                assert recv(phone) == recv(laptop) == "for ada"
                assert recv(bob) == "for bob"  # ada's message did not come first

        await in_thread(scenario)
        assert sample(server, "wsup_dead_letters_total", reason="no_recipient") == 1


@pytest.mark.anyio
async def test_topics_join_leave_publish_and_some_users() -> None:
    """Subscribers of a topic get its posts until they leave; named users get theirs."""
    async with running_server(topics.app) as server:
        url = ws_url(server, "/topics")

        def scenario() -> None:
            with open_ws(f"{url}?user=ada") as ada, open_ws(f"{url}?user=bob") as bob:
                for ws, command in ((ada, "join news"), (bob, "join news"), (bob, "join sports")):
                    ws.send(command)
                    assert recv(ws) == f"joined {command.split()[1]}"
                ada.send("post news hello")
                assert recv(ada) == recv(bob) == "[news] hello"
                bob.send("leave news")
                assert recv(bob) == "left news"
                anyio.from_thread.run(topics.publish, "news", "again")
                assert recv(ada) == "[news] again"
                bob.send("post sports 2-1")
                assert recv(bob) == "[sports] 2-1"  # the news did not come first
                anyio.from_thread.run(topics.message_some, ["bob"], "psst")
                assert recv(bob) == "psst"
                ada.send("dance")
                assert recv(ada) == "unknown command 'dance'"  # not the psst either

        await in_thread(scenario)


class _DownBackplane(Backplane):
    """A cluster backplane whose broker is unreachable: every remote send fails fast."""

    kind = "down"
    remote = True

    @property
    def up(self) -> bool:
        return False

    async def run(self, node: Node, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def subscribe(self, address: str) -> None:
        pass

    def unsubscribe(self, address: str) -> None:
        pass

    async def publish(self, address: str, message: Any) -> int:
        await anyio.lowlevel.checkpoint()
        raise BackplaneUnavailable(address, "Redis is down")


@pytest.mark.anyio
async def test_with_the_cluster_down_broadcast_and_post_tell_the_sender_and_stay_open() -> None:
    """Cluster unreachable: local clients still get broadcasts and posts, the sender is
    told each time, and no handler crashes (more sends than the restart intensity)."""
    async with (
        running_server(message_all.app, backplane=_DownBackplane()) as live,
        running_server(topics.app, backplane=_DownBackplane()) as topical,
    ):

        def scenario() -> None:
            with open_ws(ws_url(live, "/live")) as ada, open_ws(ws_url(live, "/live")) as bob:
                wait_members(live, ALL, 2)
                for number in range(5):
                    ada.send(f"hi {number}")
                    assert recv(bob) == f"someone said hi {number}"
                    assert recv(ada) == f"someone said hi {number}"
                    assert recv(ada) == "not sent to the other servers: try again later"
                assert ada.state is State.OPEN
            with open_ws(ws_url(topical, "/topics")) as cy:
                cy.send("join news")
                assert recv(cy) == "joined news"
                for number in range(5):
                    cy.send(f"post news {number}")
                    assert recv(cy) == f"[news] {number}"
                    assert recv(cy) == "not posted to news on the other servers: try again later"
                assert cy.state is State.OPEN

        await in_thread(scenario)
        for server in (live, topical):
            assert sample(server, "wsup_actor_crashes_total", kind="connection") == 0


# --- arguments, path, headers, client address ---------------------------------------------------


@pytest.mark.anyio
async def test_arguments_reach_the_handler() -> None:
    """App state, constructor kwargs and the decoded route parameter make the greeting."""
    async with running_server(arguments.app) as server:

        def greet(name: str) -> str | bytes:
            with open_ws(ws_url(server, f"/greet/{name}")) as ws:
                return recv(ws)

        assert await in_thread(greet, "ada") == "hello ada!"
        assert await in_thread(greet, "J%C3%BCrgen") == "hello Jürgen!"


@pytest.mark.anyio
async def test_request_path_picks_the_handler_and_unknown_paths_get_404() -> None:
    """Each path reaches its own handler; a path with no route is refused before the upgrade."""
    async with running_server(request_path.app) as server:

        def first(path: str) -> str | bytes:
            with open_ws(ws_url(server, path)) as ws:
                return recv(ws)

        assert await in_thread(first, "/blue") == "blue"
        assert await in_thread(first, "/green") == "green"
        assert await in_thread(first, "/rooms/tea%20room") == "room tea room at /rooms/tea%20room"
        refusal = await in_thread(refused, ws_url(server, "/red"))
        assert refusal.response.status_code == 404
        assert server.connections == set()


@pytest.mark.anyio
async def test_read_headers_in_the_hook_and_on_the_connection() -> None:
    """No token: 401 with WWW-Authenticate. With it: the handler reads headers and cookies."""
    async with running_server(read_headers.app) as server:
        url = ws_url(server, "/whoami")

        def scenario() -> str | bytes:
            refusal = refused(url)
            assert refusal.response.status_code == 401
            assert refusal.response.headers["WWW-Authenticate"] == "Bearer"
            headers = [("Authorization", "Bearer s3cret"), ("Cookie", "theme=dark; lang=en")]
            with open_ws(url, additional_headers=headers, user_agent_header="faq/1.0") as ws:
                return recv(ws)

        assert await in_thread(scenario) == "faq/1.0, theme dark"


@pytest.mark.anyio
async def test_set_headers_extra_header_subprotocol_and_compression() -> None:
    """The 101 carries the hook's header, the server's preferred subprotocol and deflate."""
    async with running_server(set_headers.app) as server:
        url = ws_url(server, "/api")

        def scenario() -> None:
            with open_ws(url, subprotocols=["api.v1", "api.v2"]) as ws:
                assert ws.subprotocol == "api.v2"
                assert recv(ws) == "speaking api.v2"
                response = ws.response
                assert response is not None
                assert re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-Id"])
                assert "permessage-deflate" in response.headers["Sec-WebSocket-Extensions"]
            with open_ws(url, subprotocols=["api.v1"]) as ws:
                assert recv(ws) == "speaking api.v1"
            with open_ws(url, subprotocols=["api.v1"], compression=None) as ws:
                assert ws.response is not None
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert refused(url).response.status_code == 400

        await in_thread(scenario)


@pytest.mark.anyio
@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_client_ip_behind_a_trusted_proxy_only(trusted: bool) -> None:
    """X-Forwarded-For is believed from a trusted proxy, and ignored from anyone else."""
    proxies = client_ip.app.config.trusted_proxies if trusted else ()
    async with running_server(client_ip.app, trusted_proxies=proxies) as server:
        url = ws_url(server, "/ip")

        def first(**options: Any) -> str | bytes:
            with open_ws(url, **options) as ws:
                return recv(ws)

        assert await in_thread(first) == "127.0.0.1 via 127.0.0.1"
        forwarded = await in_thread(
            lambda: first(additional_headers=[("X-Forwarded-For", "203.0.113.7")])
        )
        assert forwarded == ("203.0.113.7" if trusted else "127.0.0.1") + " via 127.0.0.1"


@pytest.mark.anyio
async def test_listen_on_ipv4_and_ipv6_loopback() -> None:
    """Both configured hosts listen; each client learns which family it used."""
    async with running_server(listen.app, hosts=listen.app.config.hosts) as server:
        hosts = dict(server.ports)
        assert set(hosts) == {"127.0.0.1", "::1"}

        def where(url: str) -> str | bytes:
            with open_ws(url) as ws:
                return recv(ws)

        assert await in_thread(where, f"ws://127.0.0.1:{hosts['127.0.0.1']}/where") == "IPv4"
        assert await in_thread(where, f"ws://[::1]:{hosts['::1']}/where") == "IPv6"


# --- closing and stopping ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_closing_from_the_handler_by_stopping_and_from_outside() -> None:
    """``conn.close`` sends its code and reason after queued messages; so do stop and kick."""
    async with running_server(closing.app) as server:
        url = ws_url(server, "/session?user=ada")

        def logout() -> tuple[list[str | bytes], int | None, str]:
            with open_ws(url) as ws:
                ws.send("hello")
                ws.send("logout")
                return recv_until_closed(ws)

        def quit_() -> tuple[list[str | bytes], int | None, str]:
            with open_ws(url) as ws:
                ws.send("quit")
                return recv_until_closed(ws)

        def kicked() -> tuple[list[str | bytes], int | None, str]:
            with open_ws(url) as ws:
                ws.send("still here")
                assert recv(ws) == "still here"
                wait_members(server, "user:ada", 1)
                anyio.from_thread.run(closing.kick, "ada", "spamming")
                return recv_until_closed(ws)

        assert await in_thread(logout) == (["hello", "bye"], 1000, "logged out")
        assert await in_thread(quit_) == ([], 1000, "")
        assert await in_thread(kicked) == ([], 4001, "spamming")


BACKENDS = ["asyncio", "trio"]
# Refused, or accepted by the kernel just before the listener closed and then reset.
NEVER_OPENS = (OSError, InvalidHandshake, ConnectionClosed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_server_sigterm_finishes_the_job_then_closes_with_1001(backend: str) -> None:
    """On SIGTERM a job under way finishes, its answer arrives, then the close is 1001."""
    with ServerProcess("examples.faq.stop_server:app", "--backend", backend) as server:
        server.wait_started()
        with open_ws(server.url("/jobs")) as ws:
            ws.send("0.5")
            assert recv(ws) == "started 0.5"
            server.signal(signal.SIGTERM)
            assert recv_until_closed(ws) == (["finished 0.5"], 1001, "server shutting down")
        assert server.wait() == 0
        assert server.events("server.drain_completed")[0]["cancelled"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_connections_sigusr1_refuses_new_ones_and_serves_open_ones(backend: str) -> None:
    """After SIGUSR1 new connections are refused, an open one still works until SIGTERM."""
    with ServerProcess("examples.faq.keep_connections:app", "--backend", backend) as server:
        server.wait_started()
        with open_ws(server.url("/session")) as ws:
            ws.send("before")
            assert recv(ws) == "before"
            server.signal(signal.SIGUSR1)
            server.wait_for_event("server.stopped_accepting")
            with pytest.raises(NEVER_OPENS), open_ws(server.url("/session")):
                pass
            ws.send("after")
            assert recv(ws) == "after"
            server.signal(signal.SIGTERM)
            assert recv_until_closed(ws) == ([], 1001, "server shutting down")
        assert server.wait() == 0


@pytest.mark.anyio
async def test_keep_connections_hand_over_in_process() -> None:
    """``hand_over(server)`` closes the listeners; the open connection keeps working."""
    async with running_server(keep_connections.app) as server:
        url = ws_url(server, "/session")

        def scenario() -> None:
            with open_ws(url) as ws:
                anyio.from_thread.run_sync(keep_connections.hand_over, server)
                with pytest.raises(NEVER_OPENS), open_ws(url):
                    pass
                ws.send("still served")
                assert recv(ws) == "still served"

        await in_thread(scenario)
        assert not server.accepting
        assert server.readiness() == (False, "not accepting connections")


# --- health checks, HTTP on the same port ------------------------------------------------------


@pytest.mark.anyio
async def test_health_check_endpoints_and_readiness_during_the_drain() -> None:
    """/healthz, /readyz and /metrics answer beside /echo; /readyz is 503 once draining."""
    clock = FakeClock()
    app = health_check.app
    config = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=0)
    server = Server(app, config, metrics=Metrics(), clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        healthz, readyz = http_url(server, "/healthz"), http_url(server, "/readyz")
        assert (await in_thread(get_url, healthz))[::2] == (200, "ok\n")
        assert (await in_thread(get_url, readyz))[::2] == (200, "ready\n")
        status, content_type, body = await in_thread(get_url, http_url(server, "/metrics"))
        assert status == 200
        assert content_type.startswith("text/plain")
        assert "wsup_build_info{" in body

        def echo() -> str | bytes:
            with open_ws(ws_url(server, "/echo")) as ws:
                ws.send("same port")
                return recv(ws)

        assert await in_thread(echo) == "same port"

        tg.start_soon(server.shutdown)
        await wait_until(lambda: server.draining)
        # readiness_grace: the listeners stay open 5 s (on the fake clock) with /readyz 503.
        assert (await in_thread(get_url, readyz))[::2] == (503, "draining\n")
        assert (await in_thread(get_url, healthz))[::2] == (200, "ok\n")
        clock.advance(config.readiness_grace)
    assert app.server is None


@pytest.mark.anyio
async def test_same_port_serves_the_page_and_the_websocket() -> None:
    """GET / returns the page that opens /clock; /clock answers on the same port."""
    async with running_server(same_port.app) as server:
        status, content_type, body = await in_thread(get_url, http_url(server, "/"))
        assert (status, content_type) == (200, "text/html; charset=utf-8")
        assert "/clock" in body

        def now() -> str | bytes:
            with open_ws(ws_url(server, "/clock")) as ws:
                ws.send("now")
                return recv(ws)

        stamp = await in_thread(now)
        assert isinstance(stamp, str)
        assert datetime.datetime.fromisoformat(stamp).tzinfo is not None


def iter_sections() -> Iterator[tuple[str, str]]:
    """Yield each question of the FAQ with the text of its answer."""
    text = FAQ.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    yield from zip(parts[1::2], parts[2::2], strict=True)


def test_every_answer_that_has_code_says_how_to_run_it() -> None:
    """A section quoting an example tells how to serve it with ``wsup serve``."""
    for question, answer in iter_sections():
        for name in re.findall(r"^# examples/faq/(\w+)\.py$", answer, re.MULTILINE):
            assert f"examples.faq.{name}:app" in answer, (question, name)
