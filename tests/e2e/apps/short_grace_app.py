"""``examples/server/draining.py`` with a readiness grace and a close timeout of 0.5 s.

For a test that needs the grace over, not its length: the second-signal test of the
server page waits for the listeners to close, then for the job that the forced stop
leaves running to be cancelled after ``close_timeout``; with the example's 5 s each,
that is ten seconds of waiting per backend. The route and its handler are the
example's own.
"""

from __future__ import annotations

import dataclasses

from examples.server import draining
from supervisor import App

app = App(config=dataclasses.replace(draining.app.config, readiness_grace=0.5, close_timeout=0.5))
app.add_route("/jobs", draining.Jobs)
