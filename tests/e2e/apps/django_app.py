"""wsup's chat beside a Django view, routed by Django Channels' ``ProtocolTypeRouter``.

For ``tests/e2e/test_asgi_servers.py``: ``uvicorn tests.e2e.apps.django_app:application``.
Plain HTTP goes to Django (``GET /hello`` → ``{"hello": "django"}``), WebSockets
to wsup (``/chat/{room}?user=NAME``, the chat of ``examples/chat.py``), and the
ASGI lifespan to wsup too: Channels passes it on like any scope type it is
given, so the ASGI server starts and drains wsup (Django has no lifespan).
"""

from __future__ import annotations

import django
from channels.routing import ProtocolTypeRouter
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path

from examples.chat import app as chat
from supervisor import configure_logging
from supervisor.asgi import ASGIApp

configure_logging("json", "info")

settings.configure(
    DEBUG=False,
    SECRET_KEY="wsup-e2e-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
)
django.setup()


def hello(request: HttpRequest) -> JsonResponse:
    """A Django view beside wsup's WebSockets."""
    return JsonResponse({"hello": "django"})


urlpatterns = [path("hello", hello)]

ws = ASGIApp(chat)
application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": ws,
        "lifespan": ws,
    }
)
