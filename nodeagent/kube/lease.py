"""Cluster-wide rollout limit: at most N nodes pull the same image at once (Lease semaphore).

For each image there are N slot Leases in one namespace, named
``nodeagent-<hash(image)>-<slot>``. A node takes a slot by creating the Lease, or by
updating one that is free (no holder) or expired, with the resourceVersion it read, so
of two nodes racing for a slot exactly one wins (the other gets 409 and tries another
slot or waits). The holder renews the Lease while it pulls and clears the holder when
done. A holder that died stops renewing; its Lease is considered expired when its
resourceVersion has not changed for ``leaseDurationSeconds`` as observed by the waiting
node's own clock (like client-go's leader election, so clock skew between nodes does not
matter), and the slot is taken over.

Waiting nodes poll with one LIST per image (label selector), jittered, so a 500-node
scale-up costs the API server a few cheap requests per second, not a thundering herd.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeagent import metrics
from nodeagent.log import fields

log = logging.getLogger(__name__)

HASH_LABEL = "nodeagent.io/image-hash"
IMAGE_ANNOTATION = "nodeagent.io/image"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nodeagent"}


def image_hash(image: str) -> str:
    return hashlib.sha256(image.encode()).hexdigest()[:16]


def lease_name(image: str, slot: int) -> str:
    return f"nodeagent-{image_hash(image)}-{slot}"


@dataclass
class _Observation:
    version: str
    since: float  # monotonic time we first saw this version


@dataclass
class LeaseView:
    """What the semaphore needs from a Lease; pure helpers decide on it."""

    name: str
    holder: str | None
    version: str
    duration_s: float


def is_free(view: LeaseView, me: str, observed: _Observation | None, now: float) -> bool:
    """Free: no holder, our own (a previous run of this agent), or expired; pure."""
    if not view.holder or view.holder == me:
        return True
    if observed is None or observed.version != view.version:
        return False
    return now - observed.since >= view.duration_s


@dataclass
class RolloutLimiter:
    """``gate(image)`` is the engine's pull_gate: an async context manager holding a slot."""

    client: Any
    namespace: str
    holder: str
    slots: int
    lease_duration_s: int = 30
    poll_min_s: float = 1.0
    poll_max_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _observed: dict[str, _Observation] = field(default_factory=dict, repr=False)

    @contextlib.asynccontextmanager
    async def gate(self, image: str) -> AsyncIterator[None]:
        started = self.clock()
        lease = await self.acquire(image)
        metrics.ROLLOUT_LEASE_WAIT.observe(self.clock() - started)
        metrics.ROLLOUT_LEASES_HELD.inc()
        renewer = asyncio.create_task(self._renew(lease), name=f"renew {lease.metadata.name}")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                lease = await renewer or lease
            metrics.ROLLOUT_LEASES_HELD.dec()
            # bounded: at shutdown with the API away the Lease simply expires
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._release(lease)), 5)

    async def acquire(self, image: str) -> Any:
        """Wait for and take a slot for ``image``; returns the held Lease."""
        from nodeagent.kube.watch import describe_error

        waited = False
        while True:
            try:
                lease = await self._try_once(image)
            except Exception as exc:
                lease = None
                log.warning("rollout limit: cannot read Leases; retrying",
                            extra=fields(image=image, error=describe_error(exc)))
            if lease is not None:
                if waited:
                    log.info("rollout slot acquired", extra=fields(
                        image=image, lease=lease.metadata.name))
                return lease
            if not waited:
                log.info("rollout limit reached: waiting for a pull slot",
                         extra=fields(image=image, slots=self.slots))
                waited = True
            await asyncio.sleep(random.uniform(self.poll_min_s, self.poll_max_s))

    async def _try_once(self, image: str) -> Any:
        from lightkube.resources.coordination_v1 import Lease

        found = {lease.metadata.name: lease async for lease in self.client.list(
            Lease, namespace=self.namespace, labels={HASH_LABEL: image_hash(image)})}
        now = self.clock()
        for slot in random.sample(range(self.slots), self.slots):
            name = lease_name(image, slot)
            existing = found.get(name)
            if existing is None:
                taken = await self._create(image, name)
            elif is_free(self._view(existing), self.holder, self._observe(existing, now), now):
                taken = await self._take(existing)
            else:
                continue
            if taken is not None:
                return taken
        return None

    def _view(self, lease: Any) -> LeaseView:
        spec = lease.spec
        return LeaseView(lease.metadata.name, spec.holderIdentity if spec else None,
                         lease.metadata.resourceVersion or "",
                         float((spec.leaseDurationSeconds if spec else None)
                               or self.lease_duration_s))

    def _observe(self, lease: Any, now: float) -> _Observation:
        name, version = lease.metadata.name, lease.metadata.resourceVersion or ""
        seen = self._observed.get(name)
        if seen is None or seen.version != version:
            seen = self._observed[name] = _Observation(version, now)
        return seen

    async def _create(self, image: str, name: str) -> Any:
        from lightkube import ApiError
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        now = _micro_now()
        lease = Lease(
            metadata=ObjectMeta(name=name, namespace=self.namespace,
                                labels={HASH_LABEL: image_hash(image), **MANAGED_BY},
                                annotations={IMAGE_ANNOTATION: image}),
            spec=LeaseSpec(holderIdentity=self.holder, leaseDurationSeconds=self.lease_duration_s,
                           acquireTime=now, renewTime=now, leaseTransitions=0),
        )
        try:
            return await self.client.create(lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                return None  # another node created it first
            raise

    async def _take(self, lease: Any) -> Any:
        from lightkube import ApiError

        spec = lease.spec
        now = _micro_now()
        if spec.holderIdentity != self.holder:
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity, spec.acquireTime, spec.renewTime = self.holder, now, now
        spec.leaseDurationSeconds = self.lease_duration_s
        try:
            return await self.client.replace(lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                return None  # someone else took it since we read it
            raise

    async def _renew(self, lease: Any) -> Any:
        """Renew every third of the duration; returns the latest Lease when cancelled."""
        from lightkube import ApiError

        from nodeagent.kube.watch import describe_error

        try:
            while True:
                await asyncio.sleep(self.lease_duration_s / 3)
                lease.spec.renewTime = _micro_now()
                try:
                    lease = await self.client.replace(lease, namespace=self.namespace)
                except ApiError as exc:
                    if exc.status.code in (404, 409):
                        log.warning("rollout slot lost (not renewed in time); finishing the "
                                    "pull anyway", extra=fields(lease=lease.metadata.name))
                        return None
                    log.warning("cannot renew rollout slot", extra=fields(
                        lease=lease.metadata.name, error=describe_error(exc)))
                except Exception as exc:
                    log.warning("cannot renew rollout slot", extra=fields(
                        lease=lease.metadata.name, error=describe_error(exc)))
        except asyncio.CancelledError:
            return lease

    async def _release(self, lease: Any) -> None:
        from lightkube import ApiError

        if lease is None or lease.spec.holderIdentity != self.holder:
            return
        lease.spec.holderIdentity = None
        lease.spec.renewTime = _micro_now()
        try:
            await self.client.replace(lease, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                raise


def _micro_now() -> datetime:
    return datetime.now(UTC)
