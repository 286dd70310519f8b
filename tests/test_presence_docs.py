"""The presence guide (docs/presence.md): its example exists verbatim and does what it says.

``examples/presence/who.py`` is served in-process on a free loopback port (on
asyncio with uvloop and on trio) and talked to with the ``websockets`` sync
client in a worker thread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from examples.presence import who
from tests.helpers.docs import assert_blocks_are_files
from tests.helpers.server import running_server, ws_url
from tests.helpers.waiting import in_thread

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "presence.md"
TIMEOUT = 10.0
_HEADER = re.compile(r"# (examples/presence/\w+\.py)\n")


def test_the_example_on_the_page_is_the_file_verbatim() -> None:
    """Every python block that names an ``examples/presence`` file is that file, exactly."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    named = [b for b in blocks if b.startswith("# examples/presence/")]
    assert named
    assert_blocks_are_files(named, _HEADER, "in the guide")


def test_the_page_is_linked_from_messaging_and_the_server_api() -> None:
    """Readers of the messaging and server API pages find the presence guide."""
    for page in ("messaging.md", "server-api.md"):
        assert "(presence.md" in (ROOT / "docs" / page).read_text(encoding="utf-8"), page


def recv(ws: ClientConnection) -> Any:
    """The next message, decoded from JSON."""
    message = ws.recv(timeout=TIMEOUT)
    assert isinstance(message, str), message
    return json.loads(message)


@pytest.mark.anyio
async def test_a_member_gets_the_list_then_each_join_and_leave() -> None:
    """ada is alone; bob joins: bob gets both names, ada a join; bob goes: ada a leave.
    No user is HTTP 400."""
    async with running_server(who.app) as server:
        url = ws_url(server, "/room/lobby")

        def scenario() -> list[Any]:
            seen: list[Any] = []
            with connect(f"{url}?user=ada", open_timeout=TIMEOUT) as ada:
                seen.append(recv(ada))
                other = connect(ws_url(server, "/room/den?user=eve"), open_timeout=TIMEOUT)
                with other:
                    seen.append(recv(other))
                    with connect(f"{url}?user=bob", open_timeout=TIMEOUT) as bob:
                        seen.append(recv(bob))
                        seen.append(recv(ada))
                    seen.append(recv(ada))
                    with connect(f"{url}?user=cy", open_timeout=TIMEOUT) as cy:
                        seen.append(recv(cy))
                    seen.append(recv(ada))
                    seen.append(recv(ada))
                with pytest.raises(InvalidStatus) as refused, connect(url):
                    pass
                seen.append(refused.value.response.status_code)
            return seen

        seen = await in_thread(scenario)
    assert seen == [
        {"type": "members", "users": ["ada"]},
        {"type": "members", "users": ["eve"]},
        {"type": "members", "users": ["ada", "bob"]},
        {"type": "join", "user": "bob"},
        {"type": "leave", "user": "bob"},
        {"type": "members", "users": ["ada", "cy"]},
        {"type": "join", "user": "cy"},
        {"type": "leave", "user": "cy"},
        400,
    ]
