"""Singletons in one process: the keeper takes the lease, runs the service, hands it over."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from actors import Actor, BackplaneUnavailable, FakeClock, InProcessBackplane, LeasePolicy
from supervisor import ActorSystem, ChildSpec
from tests.helpers.tasks import settle

pytestmark = pytest.mark.anyio

POLICY = LeasePolicy(ttl=3.0, renew_every=1.0, retry_every=0.25, margin=0.3)


class Feed(Actor):
    """Records in ``running`` which system runs it."""

    def __init__(self, running: set[str], system: str) -> None:
        self.running = running
        self.system = system

    async def on_start(self) -> None:
        self.running.add(self.system)

    async def on_stop(self) -> None:
        self.running.discard(self.system)

    async def on_receive(self, message: Any) -> Any:
        return self.system


def feed(running: set[str], system: str) -> ChildSpec:
    """The singleton Feed as system ``system`` declares it."""
    return ChildSpec(
        lambda: Feed(running, system),
        id="Feed",
        names=("feed",),
        singleton=True,
        lease=POLICY,
    )


class Flaky(InProcessBackplane):
    """An in-process backplane that can be made unreachable, or whose lease can be made to
    look taken by someone else."""

    def __init__(self) -> None:
        self.renewals: str = "ok"  # "ok", "refused" or "unreachable"

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> int | None:
        if self.renewals == "unreachable":
            raise BackplaneUnavailable("lease", "test")
        if self.renewals == "refused":
            return None
        return await super().acquire_lease(name, holder, ttl)

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        if self.renewals == "unreachable":
            raise BackplaneUnavailable("lease", "test")
        if self.renewals == "refused":
            return False
        return await super().renew_lease(name, holder, ttl)


async def test_two_systems_sharing_a_backplane_run_the_singleton_once() -> None:
    """Only the system holding the lease runs the service; when it stops, it releases the
    lease and the other takes over at its next retry."""
    clock = FakeClock()
    backplane = InProcessBackplane()
    running: set[str] = set()
    stop_a = anyio.Event()

    async def run_a(*, task_status: TaskStatus[None]) -> None:
        async with ActorSystem(feed(running, "a"), clock=clock, backplane=backplane):
            task_status.started()
            await stop_a.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(run_a)
        async with ActorSystem(feed(running, "b"), clock=clock, backplane=backplane) as b:
            await settle()
            assert running == {"a"}
            for _ in range(10):  # renewals go on; b keeps retrying in vain
                await clock.step(0.5)
            assert running == {"a"}
            assert b.runtime.members("feed") == []
            stop_a.set()
            await settle()
            assert running == set()
            await clock.step(POLICY.retry_every)
            await settle()
            assert running == {"b"}
            assert await b.ask("feed", "who?") == "b"


async def test_a_holder_that_cannot_renew_stops_the_service_before_the_lease_lapses() -> None:
    """While Redis is unreachable the holder keeps the service until ttl - margin after its
    last renewal, then stops it; once renewals work again it takes the lease back."""
    clock = FakeClock()
    backplane = Flaky()
    running: set[str] = set()
    async with ActorSystem(feed(running, "a"), clock=clock, backplane=backplane):
        await settle()
        assert running == {"a"}
        backplane.renewals = "unreachable"
        await clock.step(1.0)  # the renewal due now fails
        await clock.step(1.0)
        assert running == {"a"}
        await clock.step(0.7)  # 2.7 s = ttl - margin since the last renewal
        await settle()
        assert running == set()
        backplane.renewals = "ok"
        await clock.step(POLICY.retry_every)
        await settle()
        assert running == {"a"}


async def test_a_refused_renewal_stops_the_service_at_once() -> None:
    """A renewal Redis refuses (another holder has the key) stops the service immediately."""
    clock = FakeClock()
    backplane = Flaky()
    running: set[str] = set()
    async with ActorSystem(feed(running, "a"), clock=clock, backplane=backplane):
        await settle()
        assert running == {"a"}
        backplane.renewals = "refused"
        await clock.step(1.0)
        await settle()
        assert running == set()
        await clock.step(POLICY.retry_every)  # still taken: the standby waits
        await settle()
        assert running == set()
        backplane.renewals = "ok"
        await clock.step(POLICY.retry_every)
        await settle()
        assert running == {"a"}
