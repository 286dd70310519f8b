"""wsup's chat mounted in a FastAPI app: HTTP routes and wsup's WebSockets on one port.

Run it with ``uvicorn examples.fastapi_app:app`` (``pip install 'wsup[asgi]'``
brings FastAPI and uvicorn), then:

* ``GET http://127.0.0.1:8000/hello`` answers ``{"hello": "world"}`` (FastAPI);
* ``ws://127.0.0.1:8000/ws/chat/{room}?user=NAME`` speaks the chat protocol of
  ``examples/chat.py`` (wsup: every connection an actor under supervision);
* ``GET /ws/metrics``, ``/ws/healthz``, ``/ws/readyz``: wsup's own endpoints.

Starlette does not run the lifespan of a mounted app, so the FastAPI app runs
wsup's: ``FastAPI(lifespan=ws.lifespan)`` starts the actor system and the
chat's services with the app and drains every chat connection (close 1001) when
the server stops. See ``docs/asgi.md``.
"""

from __future__ import annotations

from fastapi import FastAPI

from examples.chat import app as chat
from supervisor import configure_logging
from supervisor.asgi import ASGIApp

# wsup's log lines (connection.closed, server.drain_started...) on stderr: coloured
# on a terminal, one JSON object per line otherwise (as under `wsup serve`).
configure_logging()

ws = ASGIApp(chat)
app = FastAPI(lifespan=ws.lifespan)


@app.get("/hello")
async def hello() -> dict[str, str]:
    """A plain FastAPI route beside the WebSockets."""
    return {"hello": "world"}


app.mount("/ws", ws)
