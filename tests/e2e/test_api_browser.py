"""A browser tab of the chat gets messages from curl (the server API) and redis-cli (Redis).

``wsup serve examples.chat:app --redis URL`` runs as a child process with an
API key and its own ``redis-server``; headless Chromium opens the chat page and
joins as ada. Two programs that are not Python then reach her tab: ``curl``
through ``POST /api/send``, and ``redis-cli`` publishing the documented wire
format on ``wsup:addr:user:ada``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.apps.server_process import ServerProcess
from tests.e2e.test_chat_browser import chromium, join, log_of
from tests.helpers.redis_server import REDIS_SERVER, RedisServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

KEY = "browser-test-key"
TIMEOUT = 20.0


def redis_cli(port: int, *args: str, stdin: bytes | None = None) -> str:
    """Run ``redis-cli`` against the test's Redis; return its output."""
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    )
    return result.stdout.decode().strip()


def test_curl_and_redis_cli_reach_a_browser_tab(tmp_path: Path) -> None:
    """A dm sent with curl through the API, then one published with redis-cli, show in
    ada's tab in that order."""
    for program in ("curl", "redis-cli"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not installed")
    with (
        RedisServer() as redis,
        ServerProcess("examples.chat:app", "--redis", redis.url, env={"WSUP_API_KEY": KEY}) as node,
        chromium(tmp_path / "profile") as browser,
    ):
        node.wait_started()
        ada = browser.pages[0] if browser.pages else browser.new_page()
        join(ada, f"http://127.0.0.1:{node.port}/", "ada", "lobby")
        # Her name's subscription reaches Redis asynchronously: wait until it has.
        deadline = time.monotonic() + TIMEOUT
        while redis_cli(redis.port, "PUBSUB", "NUMSUB", "wsup:addr:user:ada").split()[-1] != "1":
            assert time.monotonic() < deadline, "ada's subscription never reached Redis"
            time.sleep(0.05)

        message = {"type": "dm", "from": "shop", "text": "order 1234 shipped"}
        answer = subprocess.run(
            [
                *("curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {KEY}"),
                *("-d", json.dumps({"address": "user:ada", "message": message})),
                f"http://127.0.0.1:{node.port}/api/send",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert json.loads(answer.stdout)["reached"] is True
        expect(log_of(ada)).to_have_text(["joined #lobby as ada", "(dm) shop: order 1234 shipped"])

        payload = b'\x00j{"type": "dm", "from": "ops", "text": "via redis"}'
        assert redis_cli(redis.port, "-x", "PUBLISH", "wsup:addr:user:ada", stdin=payload) == "1"
        expect(log_of(ada)).to_have_text(
            ["joined #lobby as ada", "(dm) shop: order 1234 shipped", "(dm) ops: via redis"]
        )
