"""The chat page in a real browser: two users chat and exchange a direct message.

Headless Chromium (Debian's ``/usr/bin/chromium``, installed by ``.ci/test-deps``)
is driven by Playwright's sync API. That API runs its own asyncio loop in the
calling thread and refuses to run inside another one, so the test itself is a
plain function and ``examples.chat:app`` is served in a background thread with
its own ``anyio.run`` — on asyncio with uvloop and on trio. The test reaches
the server's loop through ``anyio.from_thread`` and the server's loop token.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from websockets.sync.client import connect

from examples import chat
from supervisor import App, Server
from supervisor.metrics import Metrics
from tests.helpers.server import http_url, ws_url

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 20.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@contextmanager
def served_in_thread(
    app: App, backend: tuple[str, dict[str, Any]], port: int = 0
) -> Iterator[Server]:
    """Serve ``app`` on a loopback port (0: a free one) from a thread running its own
    event loop.

    On exit the server drains through ``Server.shutdown`` on its own loop and the
    thread is joined; an error in the server thread is raised here.
    """
    config = dataclasses.replace(app.config, hosts=("127.0.0.1",), port=port)
    server = Server(app, config, metrics=Metrics())
    started = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            started.set()

    def run() -> None:
        try:
            anyio.run(main, backend=backend[0], backend_options=backend[1])
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="chat-server", daemon=True)
    thread.start()
    try:
        started.wait(TIMEOUT)
        if failure:
            raise failure[0]
        assert server.loop_token is not None
        yield server
    finally:
        if server.loop_token is not None and thread.is_alive():
            anyio.from_thread.run(server.shutdown, token=server.loop_token)
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the server thread did not stop"
    if failure:
        raise failure[0]


def wait_joined(server: Server, members: dict[str, int]) -> None:
    """Wait, on the server's loop, until each address has the given number of members."""

    async def joined() -> None:
        with anyio.fail_after(TIMEOUT):
            while any(len(server.runtime.members(a)) != n for a, n in members.items()):
                await anyio.lowlevel.checkpoint()

    assert server.loop_token is not None
    anyio.from_thread.run(joined, token=server.loop_token)


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    """Headless Chromium, launched once for the module: each test has its own context."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed: run .ci/test-deps")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser(chromium_browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context for one test: its own cookies, storage, cache and
    network conditions, as a new profile would have."""
    context = chromium_browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT * 1000)
        yield context
    finally:
        context.close()


@contextmanager
def chromium(user_data_dir: Path) -> Iterator[BrowserContext]:
    """Launch headless Chromium with a fresh profile; close it on exit."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed: run .ci/test-deps")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            context.set_default_timeout(TIMEOUT * 1000)
            yield context
        finally:
            context.close()


def join(page: Page, url: str, user: str, room: str) -> None:
    """Open the chat page and join ``room`` as ``user``, as a person would."""
    page.goto(url)
    page.fill("#user", user)
    page.fill("#room", room)
    page.click("#connect")
    expect(page.locator("#status")).to_have_text(f"{user} in #{room}")


def log_of(page: Page) -> Any:
    """The page's chat log, one locator entry per line."""
    return page.locator("#log li")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_users_chat_and_exchange_a_direct_message_in_chromium(
    backend: tuple[str, dict[str, Any]], browser: BrowserContext, tmp_path: Path
) -> None:
    """Ada and bob see each other's room message; only ada gets bob's dm; errors show;
    each page lists who is in the room, and ada's list loses bob when his tab closes."""
    with served_in_thread(chat.app, backend) as server:
        url = http_url(server, "/")
        ada = browser.new_page()
        bob = browser.new_page()
        join(ada, url, "ada", "lobby")
        join(bob, url, "bob", "lobby")
        wait_joined(server, {"room:lobby": 2})
        # Who is in the room, live: each page lists both.
        for page in (ada, bob):
            expect(page.locator("#members")).to_have_text("ada, bob")

        ada.fill("#text", "hello bob")
        ada.press("#text", "Enter")
        expect(log_of(ada)).to_have_text(["joined #lobby as ada", "[#lobby] ada: hello bob"])
        expect(log_of(bob)).to_have_text(["joined #lobby as bob", "[#lobby] ada: hello bob"])

        bob.fill("#dm-to", "ada")
        bob.fill("#dm-text", "psst")
        bob.click("#dm-send")
        expect(log_of(ada)).to_have_text(
            ["joined #lobby as ada", "[#lobby] ada: hello bob", "(dm) bob: psst"]
        )

        bob.fill("#dm-to", "nobody")
        bob.fill("#dm-text", "anyone?")
        bob.click("#dm-send")
        expect(log_of(bob)).to_have_text(
            [
                "joined #lobby as bob",
                "[#lobby] ada: hello bob",
                "(dm to ada) psst",
                "(dm to nobody) anyone?",
                "error: nobody is not connected",
            ]
        )
        expect(bob.locator("#log li.error")).to_have_count(1)

        # Ada said something after bob's dm went out: the dm never reached bob himself.
        ada.fill("#text", "bye")
        ada.press("#text", "Enter")
        expect(log_of(bob).last).to_have_text("[#lobby] ada: bye")
        expect(bob.locator("#log li.dm")).to_have_text(
            ["(dm to ada) psst", "(dm to nobody) anyone?"]
        )

        screenshot = tmp_path / "chat.png"
        ada.screenshot(path=str(screenshot), full_page=True)
        data = screenshot.read_bytes()
        assert len(data) > len(PNG_SIGNATURE)
        assert data.startswith(PNG_SIGNATURE)

        bob.close()  # his tab goes: ada's list follows
        expect(ada.locator("#members")).to_have_text("ada")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_page_that_goes_offline_comes_back_and_shows_what_it_missed(
    backend: tuple[str, dict[str, Any]], browser: BrowserContext
) -> None:
    """The browser goes offline (network emulation) while ada keeps talking: back
    online, the page reconnects by itself with ``since`` and shows every message it
    missed, in order, then the live ones."""
    with served_in_thread(chat.app, backend) as server:
        bob = browser.new_page()
        join(bob, http_url(server, "/"), "bob", "lobby")
        wait_joined(server, {"room:lobby": 1})
        with connect(ws_url(server, "/chat/lobby?user=ada"), open_timeout=TIMEOUT) as ada:
            wait_joined(server, {"room:lobby": 2})
            ada.send(json.dumps({"type": "say", "text": "m1"}))
            expect(log_of(bob).last).to_have_text("[#lobby] ada: m1")

            browser.set_offline(True)
            expect(bob.locator("#status")).to_contain_text("reconnecting")
            for text in ("m2", "m3"):
                ada.send(json.dumps({"type": "say", "text": text}))
            # ada's own copies came back: m2 and m3 are in the room's history
            for text in ("m1", "m2", "m3"):
                assert json.loads(ada.recv(TIMEOUT))["text"] == text
            browser.set_offline(False)
            expect(bob.locator("#status")).to_have_text("bob in #lobby")
            ada.send(json.dumps({"type": "say", "text": "m4"}))
            expect(log_of(bob)).to_have_text(
                [
                    "joined #lobby as bob",
                    "[#lobby] ada: m1",
                    "back in #lobby",
                    "[#lobby] ada: m2",
                    "[#lobby] ada: m3",
                    "[#lobby] ada: m4",
                ]
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_drained_page_reconnects_with_jittered_backoff(
    backend: tuple[str, dict[str, Any]], browser: BrowserContext
) -> None:
    """The page's retry delays are drawn between 0 and min(10 s, 0.5 s x 2^n); when the
    server drains, the page shows the 1001 it got and comes back by itself to the
    server started again on the same port."""
    bob = browser.new_page()
    with served_in_thread(chat.app, backend) as first:
        port = first.ports[0][1]
        join(bob, http_url(first, "/"), "bob", "lobby")
        wait_joined(first, {"room:lobby": 1})
        delays = bob.evaluate(
            "() => Array.from({length: 12}, (_, n) => "
            "Array.from({length: 50}, () => retryDelay(n)))"
        )
        for n, drawn in enumerate(delays):
            bound = min(10_000, 500 * 2**n)
            assert all(0 <= d <= bound for d in drawn), (n, drawn)
            # Full jitter: spread over the interval, not bunched at its end.
            assert min(drawn) < bound / 2 < max(drawn), (n, drawn)
    # The server drained: the page says how it was closed and that it retries.
    expect(log_of(bob).last).to_have_text(
        re.compile(r"^disconnected \(1001\), reconnecting in \d+\.\d s…$")
    )
    with served_in_thread(chat.app, backend, port=port) as second:
        expect(bob.locator("#status")).to_have_text("bob in #lobby", timeout=60_000)
        wait_joined(second, {"room:lobby": 1})
        expect(log_of(bob).last).to_have_text("back in #lobby")
