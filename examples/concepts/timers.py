# examples/concepts/timers.py
"""Timers an actor owns: keyed, replaced when re-armed, cancelled when it restarts."""

from typing import Any

import anyio
import structlog

from actors import Actor, Backoff, FakeClock
from supervisor import ActorSystem, Restart

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Metronome(Actor):
    """Beats every second; ("remind", text, delay) arms a reminder; "crash" fails."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def on_start(self) -> None:
        timers = self.context.timers
        print(f"t={self.clock.now():4.1f}  started (restarts: {self.context.restarts})")
        print(f"t={self.clock.now():4.1f}  timers left from before: {timers.keys}")
        timers.send_interval("beat", "beat", 1.0)

    async def on_receive(self, message: Any) -> Any:
        match message:
            case ("remind", text, delay):
                self.context.timers.send_after("reminder", text, delay)  # same key: replaced
            case "crash":
                raise RuntimeError("crash")
            case _:
                print(f"t={self.clock.now():4.1f}  {message}")


async def main() -> None:
    clock = FakeClock()
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(
            lambda: Metronome(clock), restart=Restart.PERMANENT, backoff=Backoff(minimum=0)
        )
        for _ in range(2):
            await clock.step(1.0)
        ref.tell_nowait(("remind", "first reminder", 1.5))
        ref.tell_nowait(("remind", "second reminder", 2.5))
        await anyio.wait_all_tasks_blocked()  # both armed at t=2.0: due at 3.5, then 4.5
        for _ in range(6):
            await clock.step(0.5)
        ref.tell_nowait("crash")
        await anyio.wait_all_tasks_blocked()
        await clock.step(1.0)


if __name__ == "__main__":
    anyio.run(main, backend="trio")  # see "Time is injected" below
