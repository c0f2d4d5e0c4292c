"""Cluster-wide rollout limit: at most N nodes pull the same image at once (Lease queue).

``RolloutLimiter.gate(image)`` is the engine's pull gate. A node that needs the image
takes a ticket (a Lease) and waits, watching only its ticket and the image's coordinator
Lease, until the coordinator grants it a slot; it renews the ticket every third of the
lease duration while it pulls and deletes it when done. One of the waiting nodes is the
coordinator (rollout_coordinator); if there is none, or it stopped renewing, a waiting
node takes the role over after a random delay (so a thousand waiters do not all try).
The protocol and its decisions are in rollout_plan. An idle node makes no API call here.

With ``mirrored=True`` (containerd has a mirror for the image's registry) only the first
``seed_wave`` nodes wait for a slot (the seeds); a seed that pulled marks its ticket done,
and once ``seed_wave`` seeds are done the coordinator opens the gate for every mirrored
node, which then pulls at once through the mirror (rollout_plan). A seed that fails or
dies leaves the queue and the next mirrored node becomes a seed. ``seed_wave=0`` turns
this off: mirrored images obey the plain limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nodeagent import metrics
from nodeagent.kube import rollout_leases as rl
from nodeagent.kube import rollout_plan as rp
from nodeagent.kube.lease_watch import LeaseWatch
from nodeagent.kube.rollout_coordinator import QueueCoordinator
from nodeagent.kube.watch import Backoff, WatchTiming, describe_error
from nodeagent.log import fields

log = logging.getLogger(__name__)

__all__ = ["RolloutLimiter"]


@dataclass
class RolloutLimiter:
    """``gate(image)`` is the engine's pull_gate; ``aclose()`` at shutdown."""

    client: Any
    namespace: str
    holder: str  # this node's name
    slots: int  # the rollout limit
    lease_duration_s: int = 30
    seed_wave: int | None = None  # mirrored images: seeds (None: as many as slots; 0: off)
    seeds_ttl_s: float = 24 * 3600  # how long a finished seed wave lets nodes skip the queue
    discovery_s: float = 0.1  # how long to wait to hear of a coordinator before electing one
    election_window_s: float = 0.5  # a vacant coordinator role is taken within about this
    clock: Callable[[], float] = time.monotonic
    backoff: Callable[[], Backoff] = Backoff
    timing: WatchTiming | None = None
    _coordinators: dict[str, tuple[QueueCoordinator, asyncio.Task[None]]] = field(
        default_factory=dict, repr=False)

    @contextlib.asynccontextmanager
    async def gate(self, image: str, *, mirrored: bool = False, seed_wave: int | None = None,
                   content: str = "") -> AsyncIterator[None]:
        """``content``: an opaque name of what is pulled (a tag moved to new layers is a
        new seed wave); "" when unknown."""
        started = self.clock()
        wave = self.seed_wave_for(seed_wave)
        mirrored = mirrored and wave > 0
        waiter = _Waiter(self, image, mirrored, wave, content)
        ticket = await waiter.wait_turn()
        metrics.ROLLOUT_LEASE_WAIT.observe(self.clock() - started)
        if ticket is None:  # a mirrored image whose seeds are done: no slot needed
            yield
            return
        metrics.ROLLOUT_LEASES_HELD.inc()
        renewer = asyncio.create_task(waiter.renew(ticket), name=f"renew {ticket.metadata.name}")
        pulled = False
        try:
            yield
            pulled = True
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                ticket = await renewer or ticket
            metrics.ROLLOUT_LEASES_HELD.dec()
            # bounded: at shutdown with the API away the ticket simply expires
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(
                    waiter.finish(ticket, seed_done=pulled and mirrored)), 5)

    def seed_wave_for(self, asked: int | None = None) -> int:
        """The seed wave: asked for, else configured, else as many as the limit."""
        for wave in (asked, self.seed_wave):
            if wave is not None:
                return max(0, wave)
        return self.slots

    def coordinating(self, image: str) -> bool:
        entry = self._coordinators.get(image)
        return entry is not None and not entry[1].done()

    def _start_coordinator(self, image: str, lease: Any) -> None:
        if self.coordinating(image):
            return
        coordinator = QueueCoordinator(
            self.client, self.namespace, image, self.holder, limit=self.slots,
            duration_s=self.lease_duration_s, lease=lease, seeds_ttl_s=self.seeds_ttl_s,
            clock=self.clock, backoff=self.backoff, timing=self.timing)
        task = asyncio.create_task(coordinator.run(), name=f"rollout coordinator {image}")
        self._coordinators[image] = (coordinator, task)
        task.add_done_callback(lambda _: self._coordinators.pop(image, None)
                               if self._coordinators.get(image, (None, task))[1] is task
                               else None)

    async def aclose(self) -> None:
        """Stop coordinating; release the coordinator Leases so others take over at once."""
        entries = list(self._coordinators.values())
        self._coordinators.clear()
        for coordinator, task in entries:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await coordinator.abandon()


ELECTION_ROUNDS = 8


def election_delay(window_s: float) -> float:
    """When a waiter tries to take a vacant coordinator role: in round k of
    ``ELECTION_ROUNDS`` (each window/rounds long) with probability 2**(k - rounds), so
    whatever the number of waiters only about one tries in the first round that has any
    (a uniform delay would have every waiter that did not yet see the winner try too),
    and a lone waiter waits at most the window."""
    step = window_s / (ELECTION_ROUNDS + 1)
    u = random.random()
    first = math.ceil(math.log2(u)) + ELECTION_ROUNDS if u > 0 else 0
    return (max(0, first) + random.random()) * step


class _Waiter:
    """One node waiting for its turn to pull one image."""

    def __init__(self, limiter: RolloutLimiter, image: str, mirrored: bool,
                 seed_wave: int, content: str) -> None:
        from lightkube import operators

        self.limiter, self.image, self.mirrored, self.seed_wave = (
            limiter, image, mirrored, seed_wave)
        self.content = content
        self.ticket_name = rp.ticket_name(image, limiter.holder)
        self.coordinator_name = rp.coordinator_name(image)
        self.changed = asyncio.Event()
        self.watch = LeaseWatch(
            limiter.client, limiter.namespace,
            {rp.ROLLOUT_LABEL: rp.short_hash(image),
             rp.NOTIFY_LABEL: operators.in_([rp.NOTIFY_ALL, rp.short_hash(limiter.holder)])},
            on_change=self.changed.set, from_list=False, backoff=limiter.backoff(),
            timing=limiter.timing, clock=limiter.clock)
        self.versions = rp.VersionClock()
        self._takeover: tuple[str | None, float] | None = None  # (vacancy, when)
        self._asked_at = 0.0  # when the ticket was requested
        self._seen_at: float | None = None  # when the watch first showed the ticket

    async def wait_turn(self) -> Any:
        """The granted ticket, or None when the mirror's seeds are done (no slot needed)."""
        watching = asyncio.create_task(self.watch.run(), name=f"rollout watch {self.image}")
        try:
            return await self._wait()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._delete()), 5)
            raise
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    async def _wait(self) -> Any:
        clock = self.limiter.clock
        if self.mirrored and await self._seeds_done_already():
            self._log_through_mirror()
            return None
        self._asked_at = clock()
        created = await self._create()
        waiting_logged = False
        while True:
            self.changed.clear()
            if self._seen_at is None and self.ticket_name in self.watch.items:
                self._seen_at = clock()
            ticket = self.watch.items.get(self.ticket_name) or created
            lease = self.watch.items.get(self.coordinator_name)
            coordinator = rl.to_coordinator(lease) if lease is not None else None
            if ticket is not None and rp.may_pull(rl.to_ticket(ticket), coordinator):
                if waiting_logged:
                    log.info("rollout slot granted", extra=fields(image=self.image))
                return ticket
            if self.mirrored and rp.seeds_done(coordinator, rl.wall_now(),
                                               self.limiter.seeds_ttl_s, self.content):
                await self._delete()
                self._log_through_mirror()
                return None
            if not waiting_logged:
                log.info("rollout limit: waiting for a pull slot", extra=fields(
                    image=self.image, slots=self.limiter.slots,
                    seed_wave=self.seed_wave if self.mirrored else None))
                waiting_logged = True
            wake = await self._coordinate_if_vacant(lease, coordinator, clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, wake - clock()))

    def _log_through_mirror(self) -> None:
        log.info("rollout limit: the seed nodes have the image; pulling through the mirror "
                 "without a slot", extra=fields(image=self.image))

    async def _seeds_done_already(self) -> bool:
        """Mirrored image: has a seed wave already finished? (then no ticket at all)"""
        clock = self.limiter.clock
        while True:
            self.changed.clear()
            lease = self.watch.items.get(self.coordinator_name)
            if lease is not None:
                return rp.seeds_done(rl.to_coordinator(lease), rl.wall_now(),
                                     self.limiter.seeds_ttl_s, self.content)
            # no ticket to tell when the watch is live: a longer bound, then the queue
            deadline = self.watch.started_at + 2 * self.limiter.discovery_s
            if clock() >= deadline:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - clock())

    async def _create(self) -> Any:
        """Take a ticket; None when it exists already (a restarted agent keeps its place)."""
        from lightkube import ApiError

        limiter = self.limiter
        lease = rl.new_ticket(self.image, limiter.namespace, limiter.holder,
                              limiter.lease_duration_s, mirrored=self.mirrored,
                              seed_wave=self.seed_wave, content=self.content)
        errors = limiter.backoff()
        while True:
            try:
                return await limiter.client.create(lease, namespace=limiter.namespace)
            except ApiError as exc:
                if exc.status.code == 409:
                    return None
                error = exc
            except Exception as exc:
                error = exc
            delay = errors.delay()
            log.warning("rollout limit: cannot take a ticket; retrying",
                        extra=fields(image=self.image, error=describe_error(error),
                                     retry_in_s=round(delay, 2)))
            await asyncio.sleep(delay)

    async def _coordinate_if_vacant(self, lease: Any, coordinator: rp.Coordinator | None,
                                    now: float) -> float:
        """Take the coordinator role over when it is vacant (after a random delay);
        returns when to look again if nothing changes."""
        limiter = self.limiter
        if limiter.coordinating(self.image):
            return now + limiter.lease_duration_s
        if coordinator is None:
            # Our own ticket arriving on the watch means the watch is live, and a
            # coordinator Lease that existed would have come first (the current objects
            # come before new events); a moment more for good measure.
            if self._seen_at is None:
                return now + limiter.lease_duration_s  # woken by the ticket's event
            if now < self._seen_at + limiter.discovery_s:
                return self._seen_at + limiter.discovery_s
        mine = coordinator is not None and coordinator.holder == limiter.holder
        if not mine and not rp.coordinator_vacant(coordinator, self.versions, now):
            self._takeover = None  # a live coordinator: a later vacancy is a new one
            return rp.coordinator_expires_at(coordinator, self.versions, now)
        vacancy = coordinator.version if coordinator else None
        if self._takeover is None or self._takeover[0] != vacancy:
            delay = 0.0 if mine else election_delay(self._election_window())
            self._takeover = (vacancy, now + delay)
        if now < self._takeover[1]:
            return min(self._takeover[1], now + limiter.lease_duration_s)
        # one try per vacancy: whoever wins, the watch shows the new coordinator Lease
        self._takeover = (vacancy, math.inf)
        if not await self._become_coordinator(lease):
            self._takeover = None  # the API failed: try again after a new random delay
        return now + self._election_window()

    def _election_window(self) -> float:
        """Election rounds should outlast the time a write takes to reach the other nodes'
        watches; our own ticket's trip (request to event) measures it. The first nodes to
        join see short trips and elect a coordinator before a crowd slows the API down."""
        base = self.limiter.election_window_s
        seen = self._seen_at if self._seen_at is not None else self.limiter.clock()
        latency = max(0.0, seen - self._asked_at)
        return min(max(base, 2 * (ELECTION_ROUNDS + 1) * latency),
                   float(self.limiter.lease_duration_s))

    async def _become_coordinator(self, lease: Any) -> bool:
        """Try once; False when the API failed (True: we won, or another node did)."""
        from lightkube import ApiError

        limiter = self.limiter
        try:
            if lease is None:
                written = await limiter.client.create(
                    rl.new_coordinator(self.image, limiter.namespace, limiter.holder,
                                       limiter.lease_duration_s), namespace=limiter.namespace)
            else:
                written = await limiter.client.replace(
                    rl.take_over(copy.deepcopy(lease), limiter.holder,
                                 limiter.lease_duration_s), namespace=limiter.namespace)
        except ApiError as exc:
            if exc.status.code in (404, 409):
                return True  # another node was faster (or it changed): the watch will tell
            error: Exception = exc
        except Exception as exc:
            error = exc
        else:
            limiter._start_coordinator(self.image, written)
            return True
        log.warning("rollout limit: cannot take the coordinator role",
                    extra=fields(image=self.image, error=describe_error(error)))
        return False

    async def renew(self, ticket: Any) -> Any:
        """Renew every third of the duration; returns the latest ticket when cancelled."""
        from lightkube import ApiError

        limiter = self.limiter
        try:
            while True:
                await asyncio.sleep(limiter.lease_duration_s / 3)
                renewed = rl.annotate(copy.deepcopy(ticket), {})
                renewed.spec.renewTime = rl.wall_now()
                try:
                    ticket = await limiter.client.replace(renewed, namespace=limiter.namespace)
                except ApiError as exc:
                    if exc.status.code in (404, 409):
                        log.warning("rollout slot lost (not renewed in time); finishing the "
                                    "pull anyway", extra=fields(image=self.image))
                        return None
                    log.warning("cannot renew rollout slot", extra=fields(
                        image=self.image, error=describe_error(exc)))
                except Exception as exc:
                    log.warning("cannot renew rollout slot", extra=fields(
                        image=self.image, error=describe_error(exc)))
        except asyncio.CancelledError:
            return ticket

    async def finish(self, ticket: Any, *, seed_done: bool) -> None:
        """Leave the queue; a mirrored seed that has the image marks its ticket done."""
        from lightkube import ApiError

        if seed_done:
            done = rl.annotate(copy.deepcopy(ticket), {rp.DONE: "true"})
            try:
                await self.limiter.client.replace(done, namespace=self.limiter.namespace)
                return
            except ApiError as exc:
                if exc.status.code == 404:
                    return
        await self._delete()

    async def _delete(self) -> None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        try:
            await self.limiter.client.delete(Lease, self.ticket_name,
                                             namespace=self.limiter.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
