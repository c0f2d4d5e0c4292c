"""The coordinator of one image's rollout queue (see rollout_plan): one node at a time.

It LISTs and WATCHes the image's tickets, grants free slots in queue order (one write
for several grants), removes the tickets of holders that stopped renewing, marks the seed
wave done, and renews its own Lease every third of its duration. It stops when no ticket
is left (releasing its Lease: a later rollout elects a new coordinator), when it loses its
Lease (another node took it over after it failed to renew), or when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from nodeagent.kube import rollout_leases as rl
from nodeagent.kube import rollout_plan as rp
from nodeagent.kube.lease_watch import LeaseWatch
from nodeagent.kube.watch import Backoff, WatchTiming, describe_error
from nodeagent.log import fields

log = logging.getLogger(__name__)

COALESCE_S = 0.02  # after a change, wait this long for the ones that come with it


class LostCoordination(Exception):
    """Another node holds the coordinator Lease now."""


class QueueCoordinator:
    def __init__(self, client: Any, namespace: str, image: str, node: str, *, limit: int,
                 duration_s: int, lease: Any, seeds_ttl_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Callable[[], Backoff] = Backoff,
                 timing: WatchTiming | None = None) -> None:
        self.client, self.namespace, self.image, self.node = client, namespace, image, node
        self.limit, self.duration_s, self.seeds_ttl_s = limit, duration_s, seeds_ttl_s
        self.lease = lease  # our latest write of the coordinator Lease
        self.clock = clock
        self._backoff = backoff
        self._timing = timing
        self._written_at = clock()
        self._versions = rp.VersionClock()
        self._granted_at: dict[str, float] = {}
        self._views: dict[str, tuple[str, rp.Ticket]] = {}  # name -> (version, view)
        self._changed = asyncio.Event()

    async def run(self) -> None:
        tickets = LeaseWatch(self.client, self.namespace,
                             {rp.ROLLOUT_LABEL: rp.short_hash(self.image),
                              rp.ROLE_LABEL: "ticket"},
                             on_change=self._changed.set, from_list=True,
                             backoff=self._backoff(), timing=self._timing, clock=self.clock)
        watcher = asyncio.create_task(tickets.run(), name=f"rollout tickets {self.image}")
        log.info("coordinating the rollout of an image", extra=fields(image=self.image))
        try:
            await tickets.synced.wait()
            await self._loop(tickets)
        except LostCoordination:
            log.warning("rollout coordinator Lease taken over by another node",
                        extra=fields(image=self.image))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _loop(self, tickets: LeaseWatch) -> None:
        errors = self._backoff()
        while True:
            self._changed.clear()
            now = self.clock()
            if now - self._written_at >= self.duration_s * 2 / 3:
                raise LostCoordination  # could not renew in time: others may take over
            try:
                step = await self._step(tickets, now)
                errors.reset()
            except LostCoordination:
                raise
            except Exception as exc:
                delay = errors.delay()
                log.warning("rollout coordinator: Kubernetes API unavailable; retrying",
                            extra=fields(image=self.image, error=describe_error(exc)))
                step = self.clock() + delay
            if step is None:
                return
            timeout = max(0.0, step - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
            # changes that come together (a wave finishing) are handled in one step
            await asyncio.sleep(COALESCE_S)

    async def _step(self, tickets: LeaseWatch, now: float) -> float | None:
        """Plan and write once; returns when to look again (None: step down)."""
        leases = dict(tickets.items)
        views = [self._view(lease) for lease in leases.values()]
        coordinator = rl.to_coordinator(self.lease)
        for ticket in views:
            if rp.may_pull(ticket, coordinator):
                self._granted_at.setdefault(ticket.name, now)
        alive = {t.name: max(self._versions.since(t.name, t.version, now),
                             self._granted_at.get(t.name, now)) for t in views}
        if len(self._views) > 2 * len(leases) + 16:  # forget deleted tickets now and then
            self._versions.forget(set(alive))
            self._views = {name: self._views[name] for name in leases if name in self._views}
        state = rp.QueueState(views, coordinator, alive,
                              rp.seeds_done(coordinator, rl.wall_now(), self.seeds_ttl_s))
        plan = rp.plan(state, self.limit, self.duration_s, now)
        for ticket in plan.remove:
            await self._remove(ticket)
        if plan.idle:
            await self._release(plan)  # with the wave it may just have finished
            return None
        renew_due = now - self._written_at >= self.duration_s / 3
        if plan.grant_through is not None or plan.mark_seeds_done or renew_due:
            await self._write_coordinator(plan)
        for ticket in plan.grant_each:
            await self._grant(leases[ticket.name])
        for ticket in plan.grants:
            self._granted_at[ticket.name] = self.clock()
        wake = self._written_at + self.duration_s / 3
        return min(wake, plan.wake_at) if plan.wake_at is not None else wake

    def _view(self, lease: Any) -> rp.Ticket:
        """The ticket's view, parsed once per version (a step looks at every ticket)."""
        name, version = lease.metadata.name, lease.metadata.resourceVersion or ""
        cached = self._views.get(name)
        if cached is None or cached[0] != version:
            cached = self._views[name] = (version, rl.to_ticket(lease))
        return cached[1]

    async def _write_coordinator(self, plan: rp.Plan) -> None:
        lease = self._planned(plan)
        lease.spec.renewTime = rl.wall_now()
        await self._replace_coordinator(lease)

    def _planned(self, plan: rp.Plan | None) -> Any:
        """Our Lease with the plan's grants and finished seed wave written in."""
        lease = copy.deepcopy(self.lease)
        if plan is None:
            return lease
        notes = dict(lease.metadata.annotations or {})
        if plan.grant_through is not None:
            notes[rp.GRANTED_THROUGH] = str(plan.grant_through)
        if plan.mark_seeds_done:
            notes[rp.SEEDS_DONE_AT] = rl.wall_now().isoformat().replace("+00:00", "Z")
            notes[rp.SEEDS_CONTENT] = plan.seeds_content
            log.info("seed wave done: the other nodes pull through the mirror now",
                     extra=fields(image=self.image))
        lease.metadata.annotations = notes
        return lease

    async def _replace_coordinator(self, lease: Any) -> None:
        from lightkube import ApiError

        try:
            self.lease = await self.client.replace(lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code in (404, 409):
                raise LostCoordination from None
            raise
        self._written_at = self.clock()

    async def _grant(self, lease: Any) -> None:
        from lightkube import ApiError

        lease = rl.annotate(copy.deepcopy(lease), {rp.GRANTED: "true"})
        try:
            await self.client.replace(lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                raise  # 404: gone; 409: changed since we looked; the next step re-plans

    async def _remove(self, ticket: rp.Ticket) -> None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        if not ticket.done:
            log.warning("rollout slot of an unresponsive node freed (its Lease expired)",
                        extra=fields(image=self.image, node=ticket.node))
        try:
            await self.client.delete(Lease, ticket.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        self._granted_at.pop(ticket.name, None)

    async def _release(self, plan: rp.Plan | None = None) -> None:
        """No ticket left: give the coordinator Lease up (a later rollout elects anew)."""
        lease = self._planned(plan)
        lease.spec.holderIdentity = None
        lease.spec.renewTime = rl.wall_now()
        with contextlib.suppress(LostCoordination):
            await self._replace_coordinator(lease)
        log.info("rollout done: coordinator stepped down", extra=fields(image=self.image))

    async def abandon(self) -> None:
        """Shutdown: release the Lease so that a waiting node takes over at once."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._release(), 5)
