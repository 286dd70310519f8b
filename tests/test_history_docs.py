"""The history guide (docs/history.md): its example exists verbatim and does what it says.

``examples/history/feed.py`` is served in-process on a free loopback port (on
asyncio with uvloop and on trio) and talked to with the ``websockets`` sync
client in a worker thread.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from examples.history import feed
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "history.md"
TIMEOUT = 10.0
_HEADER = re.compile(r"# (examples/history/\w+\.py)\n")


def test_the_example_on_the_page_is_the_file_verbatim() -> None:
    """Every python block that names an ``examples/history`` file is that file, exactly."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    assert_blocks_are_files(
        [b for b in blocks if b.startswith("# examples/history/")], _HEADER, "in the guide"
    )


def recv(ws: ClientConnection) -> Any:
    """The next message, decoded from JSON."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    return json.loads(message)


@pytest.mark.anyio
async def test_a_reader_comes_back_from_a_position_or_is_told_of_the_gap() -> None:
    """Posts carry their position; back from the first, a reader gets the second then new
    ones; from an unknown epoch, a gap first; a malformed ``since``, HTTP 400."""
    async with running_server(feed.app) as server:
        url = ws_url(server, "/feed/news")

        def scenario() -> list[Any]:
            seen: list[Any] = []
            with ExitStack() as stack:
                writer = stack.enter_context(connect(url, open_timeout=TIMEOUT))
                writer.send("hello")
                writer.send("world")
                hello, world = recv(writer), recv(writer)
                seen += [hello, world]
                back = stack.enter_context(
                    connect(f"{url}?since={hello['position']}", open_timeout=TIMEOUT)
                )
                seen.append(recv(back))
                lost = stack.enter_context(connect(f"{url}?since=other:1", open_timeout=TIMEOUT))
                seen.append(recv(lost))
                writer.send("again")
                seen += [recv(back), recv(lost)]
                with pytest.raises(InvalidStatus) as refused, connect(f"{url}?since=oops"):
                    pass
                seen.append(refused.value.response.status_code)
            return seen

        hello, world, replayed, gap, live_back, live_lost, status = await in_thread(scenario)
    epoch = hello["position"].split(":")[0]
    assert hello == {"type": "post", "position": f"{epoch}:1", "text": "hello"}
    assert world == {"type": "post", "position": f"{epoch}:2", "text": "world"}
    assert replayed == world
    assert gap == {"type": "gap", "reason": "epoch_changed"}
    assert live_back == live_lost == {"type": "post", "position": f"{epoch}:3", "text": "again"}
    assert status == 400
