"""The delivery guarantees page (docs/delivery.md): its example is the file, and it does
what the page says, in one process and across two nodes on a real ``redis-server``.

``examples/delivery/inbox.py`` is served in-process on free loopback ports (on
asyncio with uvloop and on trio) and talked to with the ``websockets`` sync
client in a worker thread.
"""

from __future__ import annotations

import importlib.util
import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from actors import Backoff
from examples.delivery import inbox
from supervisor import App
from supervisor.publisher import Publisher
from supervisor.redis import RedisBackplane
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.redis_server import REDIS_SERVER, running_redis
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

PAGE = Path(__file__).resolve().parents[1] / "docs" / "delivery.md"
TIMEOUT = 20.0
"""Seconds a client waits for one message (a deadlock guard, not a measurement)."""
_FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)
_HEADER = re.compile(r"# (examples/delivery/\w+\.py)\n")


def test_the_page_quotes_its_example_verbatim() -> None:
    blocks = [b for b in _FENCE.findall(PAGE.read_text()) if b.startswith("# examples/")]
    assert_blocks_are_files(blocks, _HEADER, "on the delivery page")


def test_the_page_is_in_the_nav_and_linked_from_the_pages_it_sums_up() -> None:
    root = PAGE.parents[1]
    assert "delivery.md" in (root / "mkdocs.yml").read_text()
    for page in ("messaging.md", "history.md", "scaling.md"):
        assert "(delivery.md" in (root / "docs" / page).read_text(), page


def another_node() -> App:
    """The example's app as a second process would load it: a fresh copy of the module
    (one ``App`` is served once)."""
    path = Path(inbox.__file__)
    spec = importlib.util.spec_from_file_location("inbox_on_another_node", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    assert isinstance(app, App)
    return app


def recv(ws: ClientConnection) -> Any:
    """The next message, decoded from JSON."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    return json.loads(message)


def settle(ws: ClientConnection, user: str) -> dict[str, Any]:
    """Have ``user`` message itself and return that message: once it is back, the
    connection is in its inbox (on every node)."""
    ws.send(f"{user}:here")
    answers = sorted((recv(ws), recv(ws)), key=lambda answer: str(answer["type"]))
    dm, sent = answers
    assert sent == {"type": "sent", "to": user, "online": True}
    assert isinstance(dm, dict)
    return dm


@pytest.mark.anyio
async def test_in_one_process_a_reader_comes_back_for_what_it_missed() -> None:
    """The sender learns whether the reader was online; what was kept comes back with
    ``since``; an unknown epoch is a gap; bad input gets a clear answer."""
    async with running_server(inbox.app) as server:
        url = ws_url(server, "/inbox")

        def scenario() -> list[Any]:
            seen: list[Any] = []
            with ExitStack() as stack:
                ada = stack.enter_context(connect(f"{url}/ada", open_timeout=TIMEOUT))
                with connect(f"{url}/bob", open_timeout=TIMEOUT) as bob:
                    settle(bob, "bob")
                    ada.send("bob:one")
                    seen += [recv(ada), recv(bob)]
                ada.send("bob:two")  # bob is away
                seen.append(recv(ada))
                first = seen[1]["position"]
                with connect(f"{url}/bob?since={first}", open_timeout=TIMEOUT) as back:
                    seen.append(recv(back))
                with connect(f"{url}/bob?since=other:1", open_timeout=TIMEOUT) as lost:
                    seen.append(recv(lost))
                ada.send("nobody")
                seen.append(recv(ada))
                with pytest.raises(InvalidStatus) as refused, connect(f"{url}/bob?since=x"):
                    pass
                seen.append(refused.value.response.status_code)
            return seen

        sent, one, away, two, gap, error, status = await in_thread(scenario)
    epoch = one["position"].split(":")[0]
    assert sent == {"type": "sent", "to": "bob", "online": True}
    assert one == {"type": "dm", "position": f"{epoch}:2", "from": "ada", "text": "one"}
    assert away == {"type": "sent", "to": "bob", "online": False}
    assert two == {"type": "dm", "position": f"{epoch}:3", "from": "ada", "text": "two"}
    assert gap == {"type": "gap", "reason": "epoch_changed"}
    assert error == {"type": "error", "error": "send TO:TEXT"}
    assert status == 400


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_across_nodes_outside_messages_are_not_numbered_and_an_outage_is_told() -> None:
    """Two nodes on one Redis: a message crosses numbered; one from ``supervisor.publisher``
    arrives as it was sent, without a position; with Redis gone the send is ``not_sent``."""
    with running_redis() as redis_server:

        def backplane() -> RedisBackplane:
            quick = Backoff(minimum=0.01, maximum=0.1, jitter=0.1)
            return RedisBackplane(redis_server.url, node_ttl=5.0, reconnect=quick)

        async with (
            running_server(inbox.app, backplane=backplane()) as a,
            running_server(another_node(), backplane=backplane()) as b,
        ):
            stack = ExitStack()
            try:

                def open_client(url: str) -> ClientConnection:
                    return stack.enter_context(connect(url, open_timeout=TIMEOUT))

                ada = await in_thread(open_client, ws_url(a, "/inbox/ada"))
                bob = await in_thread(open_client, ws_url(b, "/inbox/bob"))

                def across() -> list[Any]:
                    settle(bob, "bob")
                    ada.send("bob:hello")
                    seen = [recv(ada), recv(bob)]
                    publisher = Publisher(redis_server.url)
                    try:
                        publisher.send("inbox:bob", {"from": "shop", "text": "sale"})
                    finally:
                        publisher.close()
                    return [*seen, recv(bob)]

                sent, dm, outside = await in_thread(across)
                redis_server.kill()
                bp = a.runtime.backplane
                assert isinstance(bp, RedisBackplane)
                await bp.wait_for_state(up=False)

                def during_the_outage() -> Any:
                    ada.send("bob:are you there?")
                    return recv(ada)

                refused = await in_thread(during_the_outage)
            finally:
                await in_thread(stack.close)  # off the loop: a close waits for the server
    assert sent == {"type": "sent", "to": "bob", "online": True}
    assert dm["type"] == "dm"
    assert dm["position"].endswith(":2")
    assert outside == {"from": "shop", "text": "sale"}
    assert refused == {"type": "not_sent", "to": "bob"}
