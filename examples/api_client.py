# examples/api_client.py
"""Call a wsup server's API with the standard library only.

Run a server with a key (``WSUP_API_KEY=secret wsup serve examples.chat:app``),
then ``WSUP_API_KEY=secret python examples/api_client.py``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

URL = os.environ.get("WSUP_API_URL", "http://127.0.0.1:8765")
KEY = os.environ["WSUP_API_KEY"]


def call(path: str, body: dict[str, Any] | None = None) -> Any:
    """POST ``body`` (or GET without one) to the API; return the decoded answer."""
    request = urllib.request.Request(
        URL + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # 4xx, 5xx: the body says why
        raise RuntimeError(f"{error.code}: {json.load(error)['error']}") from None


if __name__ == "__main__":
    print(call("/api/send", {"address": "user:42", "message": {"type": "order", "id": 1234}}))
    print(call("/api/presence?address=room:lobby"))
