"""The resumable connections guide (docs/resume.md): its example exists verbatim and
does what the page says.

``examples/resume/session.py`` is served in-process on a free loopback port (on
asyncio with uvloop and on trio) and talked to with the ``websockets`` sync
client in a worker thread; a client that drops resets its TCP connection.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from examples.resume import session
from supervisor import App, Server
from supervisor.redis import RedisBackplane
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.metrics import sample
from tests.helpers.redis_server import REDIS_SERVER, quick_backplane, running_redis
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import eventually, in_thread

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "resume.md"
TIMEOUT = 10.0
_HEADER = re.compile(r"# (examples/resume/\w+\.py)\n")


def test_the_example_on_the_page_is_the_file_verbatim() -> None:
    """Every python block that names an ``examples/resume`` file is that file, exactly."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    assert_blocks_are_files(
        [b for b in blocks if b.startswith("# examples/resume/")], _HEADER, "in the guide"
    )


def opened(url: str) -> ClientConnection:
    ws: ClientConnection = connect(url, open_timeout=TIMEOUT, ping_interval=None).__enter__()
    return ws


def recv(ws: ClientConnection) -> Any:
    """The next message, decoded from JSON when it is JSON."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    try:
        return json.loads(message)
    except ValueError:
        return message


def drop(ws: ClientConnection) -> None:
    """Reset the TCP connection: no close frame."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.close_socket()
    ws.recv_events_thread.join(TIMEOUT)


def detached(server: Server) -> bool:
    return sample(server, "wsup_connections", state="detached") == 1


@pytest.mark.anyio
async def test_a_session_comes_back_with_its_state_and_what_was_posted_meanwhile() -> None:
    """Ada drops, a post arrives, Ada resumes: the announcement says so, the post
    follows, and her count goes on from 1 to 2; Bob with her token gets his own."""
    async with running_server(session.app) as server:
        url = ws_url(server, "/session?user=ada")
        ada = await in_thread(opened, url)
        hello = await in_thread(recv, ada)
        token = hello["token"]
        assert hello == {"type": "wsup.resume", "token": token, "grace": 30.0, "resumed": False}
        await in_thread(ada.send, "hi")
        assert await in_thread(recv, ada) == {"type": "count", "sent": 1}
        await in_thread(drop, ada)
        await eventually(lambda: detached(server))
        poster = await in_thread(opened, ws_url(server, "/post"))
        await in_thread(poster.send, "news")

        def resume() -> list[Any]:
            with opened(f"{url}&resume={token}") as back:
                seen = [recv(back), recv(back), recv(back)]
                back.send("again")
                seen.append(recv(back))
                with opened(f"{ws_url(server, '/session?user=bob')}&resume={token}") as bob:
                    seen.append(recv(bob))
            return seen

        back, news, welcome, count, bob = await in_thread(resume)
        await in_thread(poster.close)
    assert back == {"type": "wsup.resume", "token": token, "grace": 30.0, "resumed": True}
    assert news == "news"
    assert welcome == {"type": "welcome_back", "sent": 1}
    assert count == {"type": "count", "sent": 2}
    assert bob["resumed"] is False
    assert bob["refused"] == "mismatch"
    assert bob["token"] != token


def another_node() -> App:
    """The example's app as a second process would load it: a fresh copy of the module
    (one ``App`` is served once)."""
    spec = importlib.util.spec_from_file_location("session_on_another_node", session.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    assert isinstance(app, App)
    return app


@pytest.mark.anyio
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_session_comes_back_through_another_node() -> None:
    """Two nodes on Redis: Ada drops on one and comes back on the other, with her
    token; she gets the post, her welcome back, and her count goes on (the page's
    cross-node walk-through)."""
    with running_redis() as redis_server:
        await come_back_elsewhere(redis_server.url)


async def come_back_elsewhere(url: str) -> None:
    async with (
        running_server(session.app, backplane=quick_backplane(url)) as a,
        running_server(another_node(), backplane=quick_backplane(url)) as b,
    ):
        for server in (a, b):
            backplane = server.runtime.backplane
            assert isinstance(backplane, RedisBackplane)
            await backplane.synced()
        ada = await in_thread(opened, ws_url(a, "/session?user=ada"))
        token = (await in_thread(recv, ada))["token"]
        await in_thread(ada.send, "hi")
        assert await in_thread(recv, ada) == {"type": "count", "sent": 1}
        await in_thread(drop, ada)
        await eventually(lambda: detached(a))
        poster = await in_thread(opened, ws_url(b, "/post"))
        await in_thread(poster.send, "news")

        def resume() -> list[Any]:
            with opened(f"{ws_url(b, '/session?user=ada')}&resume={token}") as back:
                seen = [recv(back), recv(back), recv(back)]
                back.send("again")
                seen.append(recv(back))
            return seen

        back, news, welcome, count = await in_thread(resume)
        await in_thread(poster.close)
    assert back == {"type": "wsup.resume", "token": token, "grace": 30.0, "resumed": True}
    assert news == "news"
    assert welcome == {"type": "welcome_back", "sent": 1}
    assert count == {"type": "count", "sent": 2}
