# examples/concepts/escalation.py
"""Escalation: a supervisor past its restart intensity gives up; at the root, the system fails."""

from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from actors import Actor, Backoff, Intensity, SystemFailed
from supervisor import ActorSystem, ChildSpec, SupervisorSpec

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Worker(Actor):
    """Reports each start; "crash" makes it fail."""

    def __init__(self, starts: MemoryObjectSendStream[str]) -> None:
        self.starts = starts

    async def on_start(self) -> None:
        self.starts.send_nowait(self.context.address)

    async def on_receive(self, message: Any) -> Any:
        raise RuntimeError(f"cannot handle {message!r}")


async def crash_six_times(system: ActorSystem, starts: MemoryObjectReceiveStream[str]) -> None:
    """Crash the worker, and wait for it to start again, six times over."""
    address = await starts.receive()
    print(f"worker started at {address}")
    for crash in range(1, 7):
        await system.send(address, "crash")
        new_address = await starts.receive()
        if new_address == address:
            print(f"crash {crash}: worker restarted, same address")
        else:
            print(f"crash {crash}: 'workers' escalated; root restarted it: {new_address}")
        address = new_address


async def main() -> None:
    starts_in, starts = anyio.create_memory_object_stream[str](10)
    workers = SupervisorSpec(
        [ChildSpec(lambda: Worker(starts_in), id="worker", backoff=Backoff(minimum=0))],
        id="workers",
        intensity=Intensity(max_restarts=2, within=60.0),  # the third restart escalates
        backoff=Backoff(minimum=0),
    )
    with starts_in, starts:
        try:
            async with ActorSystem(workers, intensity=Intensity(1, 60.0), node_id="demo") as system:
                await crash_six_times(system, starts)
        except SystemFailed as exc:
            print(f"SystemFailed: {exc}")
            cause = exc.__cause__
            while cause is not None:
                print(f"  caused by {cause!r}")
                cause = cause.__cause__


if __name__ == "__main__":
    anyio.run(main)
