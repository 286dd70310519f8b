"""Singletons: a service that runs once in the whole cluster, under a lease.

Theory of operation: a child declared ``singleton=True`` is run by a keeper
instead of directly. The keeper tries to take a lease named after the service
in the backplane (``acquire_lease``: a Redis key with an expiry, and a fencing
token that grows with every new holder); while another node holds it, it
retries every ``retry_every`` seconds. Once it holds the lease it starts the
service under a supervisor of its own and renews the lease on the schedule
:func:`actors._policy.lease_step` decides. When a renewal fails for long enough that
the lease may have lapsed, the keeper stops the service at once (before the
key expires in Redis, by ``margin``) and goes back to waiting. When it stops
(shutdown, drain, a critical failure) it releases the lease, so a standby takes
over without waiting for the expiry; a holder killed with SIGKILL is replaced
once its key expires, within ``ttl + retry_every`` seconds.

With the in-process backplane every process holds its own lease: one instance
per process, which is all a single node needs (``--workers`` without ``--redis``
runs one per worker, and the docs say so).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import anyio
import structlog
from anyio.abc import TaskStatus

from actors import ActorRef, BackplaneError, CriticalFailure, Escalation, LeasePolicy, Runtime
from actors._policy import LeaseAction, lease_step

from ._tree import ChildSpec, SingletonSpec, Supervisor, SupervisorSpec

__all__ = ["SingletonKeeper", "singleton_of"]

_log = structlog.get_logger("wsup.supervisor")


class SingletonKeeper:
    """Runs a :class:`SingletonSpec`: waits for the lease, runs the children while it
    holds it (and again after losing and regaining it), releases it on shutdown.

    It stands in a supervisor's place in the tree: ``run``, ``shutdown`` and
    ``stopped`` mean what they mean for a :class:`Supervisor`.

    Args:
        runtime: the runtime (its backplane keeps the lease, its clock times it).
        spec: the singleton's spec.
        on_critical: where a critical child's failure goes.
    """

    def __init__(
        self,
        runtime: Runtime,
        spec: SingletonSpec,
        on_critical: Callable[[CriticalFailure], None] | None,
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.on_critical = on_critical
        self.holder = f"{runtime.node_id}:{secrets.token_hex(4)}"
        self.stopped = anyio.Event()
        self._stop = anyio.Event()
        self._drain = False
        self._sup: Supervisor | None = None

    @property
    def children(self) -> list[ActorRef]:
        """The live actor children while this node holds the lease, else none."""
        return self._sup.children if self._sup is not None else []

    @property
    def holding(self) -> bool:
        """Whether this node runs the singleton now."""
        return self._sup is not None

    def shutdown(self, *, drain: bool = False) -> None:
        """Stop the children (if running) and release the lease; idempotent."""
        self._drain = drain
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the singleton until :meth:`shutdown`, or until its children all ended.

        Reports started at once: a standby does not hold up the rest of the tree.

        Raises:
            Escalation: the children's supervisor escalated (only without ``on_critical``
                for a critical child).
        """
        task_status.started()
        try:
            await self._keep()
        finally:
            self.stopped.set()

    async def _pause(self, seconds: float) -> None:
        with self.runtime.clock.move_on_after(max(0.0, seconds)):
            await self._stop.wait()

    async def _keep(self) -> None:
        backplane = self.runtime.backplane
        clock = self.runtime.clock
        policy = self.spec.policy
        name = self.spec.lease_name
        while not self._stop.is_set():
            sent = clock.now()
            token: int | None = None
            try:
                with clock.move_on_after(policy.ttl - policy.margin):
                    token = await backplane.acquire_lease(name, self.holder, policy.ttl)
            except BackplaneError:
                token = None
            if token is None:
                await self._pause(policy.retry_every)
                continue
            _log.info("singleton.acquired", singleton=name, holder=self.holder, token=token)
            if await self._hold(sent):
                return

    async def _hold(self, confirmed: float) -> bool:
        """Run the children while the lease holds. True when done for good (shutdown, or
        the children ended by themselves); False when the lease was lost."""
        runtime = self.runtime
        backplane = runtime.backplane
        clock = runtime.clock
        spec = self.spec
        policy = spec.policy
        name = spec.lease_name
        inner = SupervisorSpec(
            spec.children,
            strategy=spec.strategy,
            intensity=spec.intensity,
            id=spec.id,
            shutdown_timeout=spec.shutdown_timeout,
        )
        sup = Supervisor(runtime, inner, on_critical=self.on_critical)
        lost = False
        failures: list[Escalation] = []
        async with anyio.create_task_group() as tg:
            await tg.start(_run_inner, sup, failures)
            self._sup = sup
            try:
                while not self._stop.is_set() and not sup.stopped.is_set() and sup.children:
                    action, at = lease_step(clock.now(), policy, confirmed)
                    if action is LeaseAction.LOST:
                        lost = True
                        break
                    if action is LeaseAction.WAIT:
                        await self._pause(at - clock.now())
                        continue
                    sent = clock.now()
                    renewed: bool | None = None
                    try:
                        with clock.move_on_after(at - sent):
                            renewed = await backplane.renew_lease(name, self.holder, policy.ttl)
                    except BackplaneError:
                        renewed = None
                    if renewed:
                        confirmed = sent
                    elif renewed is False:
                        lost = True  # another holder has it: it lapsed while we could not renew
                        break
                    else:
                        # Unreachable: try again shortly, until the lease would lapse.
                        await self._pause(min(policy.retry_every, at - clock.now()))
            finally:
                self._sup = None
                with anyio.CancelScope(shield=True):
                    if lost:
                        _log.error("singleton.lost", singleton=name, holder=self.holder)
                    sup.shutdown(drain=self._drain)
                    await sup.stopped.wait()
                    if not lost:
                        with clock.move_on_after(policy.ttl), _suppress_backplane():
                            await backplane.release_lease(name, self.holder)
                        _log.info("singleton.released", singleton=name, holder=self.holder)
        if failures:
            raise failures[0]  # raised here, not from the task group: no exception group
        return not lost


async def _run_inner(
    sup: Supervisor, failures: list[Escalation], *, task_status: TaskStatus[Supervisor]
) -> None:
    # Only without an on_critical handler (or with an intensity) does this escalate.
    try:
        await sup.run(task_status=task_status)
    except Escalation as exc:
        failures.append(exc)


class _suppress_backplane:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, BackplaneError)


def singleton_of(child: ChildSpec, label: str, policy: LeasePolicy, lease: str) -> SingletonSpec:
    """Wrap one child spec in the :class:`SingletonSpec` that runs it."""
    return SingletonSpec(
        (child,),
        intensity=None,
        id=f"singleton:{label}",
        lease=lease or label,
        policy=policy,
        shutdown_timeout=math.inf,
    )
