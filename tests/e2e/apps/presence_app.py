"""A test app for presence events: the server API test app, with events for ``room:*``.

``ws://HOST/u?user=NAME[&group=G]...`` as in :mod:`tests.e2e.apps.api_app`; each
member of a ``room:*`` group also receives every join and leave of that group as
JSON text (wsup's default forwarding of the event dict).
"""

from __future__ import annotations

from supervisor import App
from tests.e2e.apps.api_app import Member

__all__ = ["app"]

app = App()
app.presence_events("room:*")
app.add_route("/u", Member)
