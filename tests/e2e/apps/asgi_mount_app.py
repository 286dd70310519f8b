"""wsup's routes mounted in a Starlette app with ``Mount``, under ``/live``.

For ``tests/e2e/test_asgi_servers.py``: ``uvicorn tests.e2e.apps.asgi_mount_app:application``
(or hypercorn). The routes are those of ``asgi_app`` (``/echo``, ``/crash``,
``/flood``), served at ``/live/echo``...; ``/plain`` is Starlette's own route.
Starlette does not run a mounted app's lifespan, so the host runs wsup's.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route

from supervisor.asgi import ASGIApp
from tests.e2e.apps.asgi_app import app, plain

ws = ASGIApp(app)
application = Starlette(
    routes=[Route("/plain", plain), Mount("/live", app=ws)],
    lifespan=ws.lifespan,
)
