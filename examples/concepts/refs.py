# examples/concepts/refs.py
"""A reference sends to one actor: tell, tell_nowait, and ask with its failure modes."""

from typing import Any

import anyio
import structlog

from actors import Actor, ActorRestarted, ActorStopped, AskTimeout, MailboxClosed
from supervisor import ActorSystem

# Silence wsup's structured logs so the output is only what this script prints.
structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


class Worker(Actor):
    """Shouts text back; "wait" blocks until the gate opens; "fail" crashes."""

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    async def on_receive(self, message: Any) -> Any:
        if message == "wait":
            await self.gate.wait()
            return "waited"
        if message == "fail":
            raise RuntimeError("cannot do that")
        print(f"handled {message!r}")
        return str(message).upper()


async def main() -> None:
    async with ActorSystem(node_id="demo") as system:
        gate = anyio.Event()
        worker = await system.spawn(lambda: Worker(gate))

        worker.tell_nowait("first")  # queued at once, or MailboxFull
        await worker.tell("second")  # may wait for mailbox space under "block"
        print("ask ->", await worker.ask("third"))

        fragile = await system.spawn(lambda: Worker(gate))
        try:
            await fragile.ask("fail")
        except ActorRestarted as exc:
            print(f"ActorRestarted: {exc.address} crashed with {exc.error}")

        worker.tell_nowait("wait")  # keeps the worker busy until the gate opens
        try:
            await worker.ask("hello", timeout=0.005)
        except AskTimeout as exc:
            print(f"AskTimeout after {exc.timeout} s; the request itself stays queued")

        async def ask_behind_the_busy_one() -> None:
            try:
                await worker.ask("never handled")
            except ActorStopped as exc:
                print(f"ActorStopped: {exc}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_behind_the_busy_one)
            await anyio.wait_all_tasks_blocked()  # the request is queued now
            worker.stop()  # overtakes the queued messages
            gate.set()  # lets "wait" finish; then the stop applies

        await worker.wait_stopped()
        print("alive:", worker.alive)
        try:
            await worker.tell("anyone there?")
        except MailboxClosed as exc:
            print(f"MailboxClosed: {exc}")


if __name__ == "__main__":
    anyio.run(main)
