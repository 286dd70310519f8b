# examples/concepts/critical.py
"""Critical children: a service that gives up stops alone, unless the app cannot do without it."""

from typing import Any

import anyio
import structlog

from actors import Actor, Backoff, Instrumentation, Intensity, SystemFailed
from supervisor import ActorSystem, ChildSpec

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Flaky(Actor):
    """Crashes on every message."""

    async def on_receive(self, message: Any) -> Any:
        raise RuntimeError(f"cannot handle {message!r}")


class Escalations(Instrumentation):
    """Counts what wsup_supervisor_escalations_total counts in a server."""

    count = 0

    def escalated(self) -> None:
        self.count += 1


async def main() -> None:
    now = Backoff(minimum=0)
    optional = ChildSpec(Flaky, id="optional", intensity=Intensity(0, 60.0), backoff=now)
    feed = ChildSpec(Flaky, id="feed", intensity=Intensity(1, 60.0), backoff=now, critical=True)
    escalations = Escalations()
    try:
        async with ActorSystem(optional, feed, instrumentation=escalations) as system:
            first, second = system.root.children
            await first.tell("x")  # no restart allowed: it gives up
            await anyio.wait_all_tasks_blocked()
            print(f"optional gave up: alive={first.alive}, escalations={escalations.count}")
            print(f"the rest runs on: feed alive={second.alive}")
            await second.tell("y")  # one restart allowed
            await second.tell("z")  # one crash too many: critical
            await anyio.sleep_forever()
    except SystemFailed as exc:
        print(f"SystemFailed: {exc}")
        print(f"  caused by {exc.__cause__!r}")
        print(f"  caused by {exc.__cause__.__cause__!r}")


if __name__ == "__main__":
    anyio.run(main)
