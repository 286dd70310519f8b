"""Micro-benchmark of the actor runtime (not a test).

Reports, in one run:

* messages/s through one actor (``tell_nowait`` from a producer task, the actor
  counting) against the floor: a bare anyio memory-object stream with one
  consumer task doing the same counting;
* memory per idle actor, for N actors spawned under one supervisor, measured
  as the growth of the process's RSS and of ``tracemalloc``'s traced size.

Usage: ``python -m bench.actors_micro [--messages N] [--actors N] [--repeats N]
[--backend asyncio|trio]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
import tracemalloc
from typing import Any

import anyio

from actors import Actor, MailboxConfig
from supervisor import ActorSystem, ChildSpec


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _Counter(Actor):
    def __init__(self, total: int, done: anyio.Event) -> None:
        self.total = total
        self.done = done
        self.seen = 0

    async def on_receive(self, message: Any) -> None:
        self.seen += 1
        if self.seen == self.total:
            self.done.set()


async def _floor(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](1000)
    done = anyio.Event()

    async def consumer() -> None:
        seen = 0
        async with receive:
            async for _ in receive:
                seen += 1
                if seen == n:
                    done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        start = time.perf_counter()
        async with send:
            for i in range(n):
                await send.send(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


async def _actor(n: int) -> float:
    done = anyio.Event()
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: _Counter(n, done), mailbox=MailboxConfig(capacity=1000))
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


class _Idle(Actor):
    async def on_receive(self, message: Any) -> None:
        pass


async def _memory(count: int) -> tuple[float, float]:
    async with ActorSystem() as system:
        gc.collect()
        rss0 = _rss()
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
        sup = system.root
        spec = ChildSpec(_Idle, kind="service", mailbox=MailboxConfig(capacity=16))
        for _ in range(count):
            sup.start_child_nowait(spec)
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
        rss = _rss() - rss0
    return rss / count, traced / count


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):>12,.0f}  (min {min(values):,.0f}, max {max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--actors", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args()
    options = {"use_uvloop": True} if args.backend == "asyncio" else {}
    floor: list[float] = []
    actor: list[float] = []
    for _ in range(args.repeats):
        floor.append(
            anyio.run(_floor, args.messages, backend=args.backend, backend_options=options)
        )
        actor.append(
            anyio.run(_actor, args.messages, backend=args.backend, backend_options=options)
        )
    ratios = [a / f for a, f in zip(actor, floor, strict=True)]
    rss, traced = anyio.run(_memory, args.actors, backend=args.backend, backend_options=options)
    backend = args.backend + ("+uvloop" if options else "")
    print(f"backend: {backend}; {args.messages:,} messages x {args.repeats} repeats")
    print(f"bare memory stream (floor)  msgs/s {_fmt(floor)}")
    print(f"one actor                   msgs/s {_fmt(actor)}")
    print(
        f"actor / floor               ratio  {statistics.median(ratios):>12.2f}  "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    print(
        f"idle actors: {args.actors:,}; per actor: RSS {rss:,.0f} B, "
        f"traced Python allocations {traced:,.0f} B"
    )
    if not math.isfinite(rss):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
