"""The FastAPI example's set-up with a Redis backplane: one node of a chat cluster.

For ``tests/e2e/test_asgi_servers.py``: ``uvicorn tests.e2e.apps.asgi_cluster_app:app``
with ``WSUP_TEST_REDIS`` set to the cluster's Redis URL. wsup's chat is mounted
under ``/ws`` as in ``examples/fastapi_app.py``; its JSON log lines go to stderr.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from examples.chat import app as chat
from supervisor import configure_logging
from supervisor.asgi import ASGIApp
from supervisor.redis import RedisBackplane

configure_logging("json", "info")

ws = ASGIApp(chat, backplane=RedisBackplane(os.environ["WSUP_TEST_REDIS"]))
app = FastAPI(lifespan=ws.lifespan)
app.mount("/ws", ws)
