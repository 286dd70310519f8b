# examples/concepts/fake_clock.py
"""Injected time: a FakeClock makes a 30 s timeout and restart backoff instant and exact."""

from typing import Any

import anyio
import structlog

from actors import Actor, AskTimeout, Backoff, FakeClock
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Sluggish(Actor):
    """Replies only once the gate opens; "crash" makes it fail."""

    def __init__(self, gate: anyio.Event, clock: FakeClock) -> None:
        self.gate = gate
        self.clock = clock

    async def on_restart(self, error: Exception) -> None:
        print(f"t={self.clock.now():5.1f}  restarted after {error!r}")

    async def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        await self.gate.wait()
        return message


async def main() -> None:
    clock = FakeClock()
    gate = anyio.Event()
    async with ActorSystem(clock=clock) as system:
        ref = await system.spawn(
            lambda: Sluggish(gate, clock),
            backoff=Backoff(minimum=1.0, factor=2.0, jitter=0.0),
        )

        async def ask_with_timeout() -> None:
            try:
                await ref.ask("hello", timeout=30.0)
            except AskTimeout:
                print(f"t={clock.now():5.1f}  AskTimeout")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_with_timeout)
            await anyio.wait_all_tasks_blocked()  # the ask is waiting on the clock now
            await clock.step(29.9)  # advance fake time, then let woken tasks run
            print(f"t={clock.now():5.1f}  still waiting")
            await clock.step(0.1)
        gate.set()

        for _ in range(3):
            ref.tell_nowait("crash")
            await anyio.wait_all_tasks_blocked()  # crashed; the restart sleeps on the clock
            print(f"t={clock.now():5.1f}  crashed, restart due at t={clock.next_deadline():.1f}")
            await clock.run_until_idle()  # jump to each deadline in turn


if __name__ == "__main__":
    anyio.run(main, backend="trio")  # see "Testing with a fake clock" below
