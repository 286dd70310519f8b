"""What history costs: fan-out with and without it, and recovering 1,000 messages (not a test).

Reports, in one run and on one backplane at a time (in-process, then Redis on a
private ``redis-server``):

* **fan-out**: ``publish`` to a group of ``--members`` actors, ``--messages``
  times, from one sender that waits for each publish; the group is ``plain:g``
  (no history) or ``room:g`` (``room:*`` keeps history). Reported as the
  microseconds per publish until every member has counted every message;
* **recovery**: an actor recovering ``room:r`` from offset 0 after 1,000
  messages were sent to it: the time of ``Context.recover`` (join, read, hand
  back 1,000 records).

Every figure is the median over ``--repeats`` runs.

Usage: ``python -m bench.history [--members N] [--messages N] [--repeats N]
[--backend asyncio|trio]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel

from actors import Actor, Backplane, HistorySpec, MailboxConfig, Position, Record, Recovery
from bench.cluster import _redis_server
from supervisor import ActorSystem
from supervisor.redis import RedisBackplane

ROOMS = HistorySpec("room:*", size=1000, ttl=300.0)


class _Member(Actor):
    def __init__(self, group: str, expect: int, done: anyio.Event) -> None:
        self.group = group
        self.expect = expect
        self.done = done
        self.seen = 0

    async def on_start(self) -> None:
        self.context.join(self.group)

    async def on_receive(self, message: Any) -> None:
        self.seen += 1
        if self.seen == self.expect:
            self.done.set()


class _Recoverer(Actor):
    def __init__(self, since: Position, out: list[tuple[float, Recovery]]) -> None:
        self.since = since
        self.out = out

    async def on_start(self) -> None:
        started = time.perf_counter()
        recovery = await self.context.recover("room:r", self.since)
        self.out.append((time.perf_counter() - started, recovery))

    async def on_receive(self, message: Any) -> None:
        pass


async def _fanout(system: ActorSystem, group: str, members: int, messages: int) -> float:
    dones = [anyio.Event() for _ in range(members)]
    refs = [
        await system.spawn(
            lambda d=done: _Member(group, messages, d), mailbox=MailboxConfig(capacity=messages)
        )
        for done in dones
    ]
    synced = getattr(system.runtime.backplane, "synced", None)
    if synced is not None:
        await synced()
    started = time.perf_counter()
    for number in range(messages):
        await system.runtime.publish(group, number)
    for done in dones:
        await done.wait()
    elapsed = time.perf_counter() - started
    for ref in refs:
        ref.stop()
        await ref.wait_stopped()
    return elapsed / messages * 1e6


async def _recovery(system: ActorSystem, missed: int) -> float:
    first: list[Any] = []
    for number in range(missed):
        await system.runtime.publish("room:r", number)
    # The epoch, from a recovery that cannot succeed (any epoch will do to learn it).
    probe: list[tuple[float, Recovery]] = []
    ref = await system.spawn(lambda: _Recoverer(Position("?", 0), probe))
    ref.stop()
    position = probe[0][1].position
    assert position is not None
    last = position.offset
    out: list[tuple[float, Recovery]] = []
    ref = await system.spawn(lambda: _Recoverer(Position(position.epoch, last - missed), out))
    ref.stop()
    elapsed, recovery = out[0]
    assert recovery.ok, recovery.result
    assert len(recovery.records) == missed, len(recovery.records)
    assert all(isinstance(r, Record) for r in recovery.records)
    del first
    return elapsed * 1e3


async def _run(backplane: Backplane | None, members: int, messages: int) -> dict[str, float]:
    async with ActorSystem(backplane=backplane) as system:
        system.runtime.add_history(ROOMS)
        await anyio.lowlevel.checkpoint()
        plain = await _fanout(system, "plain:g", members, messages)
        history = await _fanout(system, "room:g", members, messages)
        recover = await _recovery(system, 1000)
    return {"plain": plain, "history": history, "recover": recover}


@contextmanager
def _backplanes(kind: str) -> Iterator[Backplane | None]:
    if kind == "inprocess":
        yield None
        return
    with _redis_server() as (url, _version):
        yield RedisBackplane(url, prefix=f"bench-{time.monotonic_ns()}")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table."""
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    options = {"use_uvloop": True} if args.backend == "asyncio" else {}
    print(
        f"fan-out to {args.members} members, {args.messages} publishes; recovery of 1000 "
        f"records; median of {args.repeats}; {args.backend}"
    )
    print(
        f"{'backplane':<10} {'plain µs/pub':>13} {'history µs/pub':>15} {'ratio':>6} "
        f"{'recover 1000 ms':>16}"
    )
    for kind in ("inprocess", "redis"):
        runs: list[dict[str, float]] = []
        for _ in range(args.repeats):
            with _backplanes(kind) as backplane:
                runs.append(
                    anyio.run(
                        _run, backplane, args.members, args.messages,
                        backend=args.backend, backend_options=options,
                    )
                )  # fmt: skip
        plain = statistics.median(r["plain"] for r in runs)
        history = statistics.median(r["history"] for r in runs)
        recover = statistics.median(r["recover"] for r in runs)
        print(
            f"{kind:<10} {plain:>13.1f} {history:>15.1f} {history / plain:>6.2f} {recover:>16.2f}"
        )


if __name__ == "__main__":
    main()
