"""Blocking clients for tests: the websockets sync client and plain HTTP GETs.

Run them in a worker thread (``tests.helpers.waiting.in_thread``) when the
server under test runs on the test's own event loop.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

TIMEOUT = 20.0
"""Seconds any single client step may take before the test fails (a deadlock guard)."""


def open_ws(url: str, **options: Any) -> ClientConnection:
    """Connect with the websockets sync client; use it in a ``with`` block or close it.

    The connection is entered already, because websockets warns about a
    connection that never was; entering it again in a ``with`` is harmless.
    """
    connection: ClientConnection = connect(url, open_timeout=TIMEOUT, **options)
    connection.__enter__()
    return connection


def recv_until_closed(ws: ClientConnection) -> tuple[list[str | bytes], int | None, str]:
    """Read every message until the server closes; return them, the close code and reason.

    The code is ``None`` when the connection ended without a close frame (1006).
    """
    messages: list[str | bytes] = []
    while True:
        try:
            messages.append(ws.recv(timeout=TIMEOUT))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return messages, None, ""
            return messages, exc.rcvd.code, exc.rcvd.reason


def get_url(url: str) -> tuple[int, str, str]:
    """GET ``url``; return the status, the ``Content-Type`` and the body, for any status."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:  # it holds the response and its socket
            return error.code, error.headers["Content-Type"], error.read().decode()


def http_get(port: int, path: str, *, host: str = "127.0.0.1") -> tuple[int, str]:
    """GET ``path`` on ``host``:``port``; return the status and body."""
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()
