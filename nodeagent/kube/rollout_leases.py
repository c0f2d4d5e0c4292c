"""The rollout queue's Leases: building them and reading them into rollout_plan's views."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nodeagent.errors import NodeagentError
from nodeagent.kube import rollout_plan as rp

MANAGED_BY = {"app.kubernetes.io/managed-by": "nodeagent"}


class RolloutQueueError(NodeagentError):
    """A rollout Lease that this version of nodeagent cannot read."""


def wall_now() -> datetime:
    return datetime.now(UTC)


def _labels(image: str, role: str, notify: str) -> dict[str, str]:
    return {rp.ROLLOUT_LABEL: rp.short_hash(image), rp.ROLE_LABEL: role,
            rp.NOTIFY_LABEL: notify, **MANAGED_BY}


def new_ticket(image: str, namespace: str, node: str, duration_s: int, *,
               mirrored: bool, seed_wave: int, content: str = "") -> Any:
    from lightkube.models.coordination_v1 import LeaseSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.coordination_v1 import Lease

    annotations = {rp.IMAGE_ANNOTATION: image}
    if mirrored:
        annotations |= {rp.MIRRORED: "true", rp.SEED_WAVE: str(seed_wave)}
        if content:
            annotations[rp.CONTENT] = content
    now = wall_now()
    return Lease(
        metadata=ObjectMeta(name=rp.ticket_name(image, node), namespace=namespace,
                            labels=_labels(image, "ticket", rp.short_hash(node)),
                            annotations=annotations),
        spec=LeaseSpec(holderIdentity=node, leaseDurationSeconds=duration_s,
                       acquireTime=now, renewTime=now),
    )


def new_coordinator(image: str, namespace: str, node: str, duration_s: int) -> Any:
    from lightkube.models.coordination_v1 import LeaseSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.coordination_v1 import Lease

    now = wall_now()
    return Lease(
        metadata=ObjectMeta(name=rp.coordinator_name(image), namespace=namespace,
                            labels=_labels(image, "coordinator", rp.NOTIFY_ALL),
                            annotations={rp.IMAGE_ANNOTATION: image}),
        spec=LeaseSpec(holderIdentity=node, leaseDurationSeconds=duration_s,
                       acquireTime=now, renewTime=now, leaseTransitions=0),
    )


def take_over(lease: Any, node: str, duration_s: int) -> Any:
    """The coordinator Lease, now held by ``node`` (write it with its resourceVersion)."""
    spec = lease.spec
    now = wall_now()
    if spec.holderIdentity != node:
        spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
    spec.holderIdentity, spec.acquireTime, spec.renewTime = node, now, now
    spec.leaseDurationSeconds = duration_s
    return lease


def role(lease: Any) -> str:
    return (lease.metadata.labels or {}).get(rp.ROLE_LABEL, "")


def _int(lease: Any, text: str | None, what: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise RolloutQueueError(
            f"Lease {lease.metadata.namespace}/{lease.metadata.name}: {what} {text!r} is not "
            "an integer; the rollout queue orders nodes by resourceVersion, which Kubernetes "
            "API servers backed by etcd give as integers") from None


def position(lease: Any) -> int:
    """Queue position: the creation resourceVersion (kept in an annotation once updated)."""
    recorded = (lease.metadata.annotations or {}).get(rp.POSITION)
    if recorded:
        return _int(lease, recorded, "position")
    return _int(lease, lease.metadata.resourceVersion, "resourceVersion")


def to_ticket(lease: Any) -> rp.Ticket:
    notes = lease.metadata.annotations or {}
    seed_wave = notes.get(rp.SEED_WAVE, "0")
    return rp.Ticket(
        name=lease.metadata.name,
        node=(lease.spec.holderIdentity if lease.spec else None) or "",
        position=position(lease),
        version=lease.metadata.resourceVersion or "",
        granted=notes.get(rp.GRANTED) == "true",
        done=notes.get(rp.DONE) == "true",
        mirrored=notes.get(rp.MIRRORED) == "true",
        seed_wave=int(seed_wave) if seed_wave.isdigit() else 0,
        content=notes.get(rp.CONTENT, ""),
    )


def to_coordinator(lease: Any) -> rp.Coordinator:
    notes = lease.metadata.annotations or {}
    spec = lease.spec
    through = notes.get(rp.GRANTED_THROUGH, "0")
    return rp.Coordinator(
        holder=(spec.holderIdentity if spec else None) or None,
        version=lease.metadata.resourceVersion or "",
        duration_s=float((spec.leaseDurationSeconds if spec else None) or 30),
        granted_through=int(through) if through.isdigit() else 0,
        seeds_done_at=_parse_time(notes.get(rp.SEEDS_DONE_AT)),
        seeds_content=notes.get(rp.SEEDS_CONTENT, ""),
    )


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def annotate(lease: Any, values: dict[str, str | None]) -> Any:
    """Set (or, with None, remove) a ticket's annotations; records its queue position."""
    notes = dict(lease.metadata.annotations or {})
    notes.setdefault(rp.POSITION, str(position(lease)))
    for key, value in values.items():
        if value is None:
            notes.pop(key, None)
        else:
            notes[key] = value
    lease.metadata.annotations = notes
    return lease
