"""Rollout queue decisions, pure: who may pull now, what the coordinator writes next.

The rollout limit is a FIFO queue kept in Leases (one namespace, per image):

- a **ticket** per node that wants the image, ``nodeagent-<image>-<node>``, created when
  the node needs a slot and deleted when it is done. Its position in the queue is its
  creation ``resourceVersion`` (Kubernetes guarantees resourceVersions of one resource are
  comparable integers, KEP-5504; etcd revisions have always been), copied into the
  ``position`` annotation on any later write.
- one **coordinator** Lease per image, ``nodeagent-<image>``, held by one of the waiting
  nodes (elected with optimistic concurrency). The coordinator watches the tickets and
  grants slots in queue order, at most ``limit`` at once: several grants at once with one
  write to its own Lease (``granted-through`` = a position: every ticket up to it may
  pull), a single grant by annotating that ticket.

A waiting node watches only its own ticket and the coordinator Lease (one watch), so a
node costs the API server three requests for a whole rollout (create and delete its
ticket, the grant) and no polling; a slot that frees is handed to exactly one waiter
(no herd, no lost races). Nodes judge expiry by their own clocks since they last saw a
Lease change (as client-go's leader election does): a dead holder's ticket is removed by
the coordinator ``duration`` after its last renewal, a dead coordinator is replaced by a
waiter ``duration`` after its last write.

Seed, then peers: with a registry mirror (a P2P mirror or pull-through cache), the limit
applies to the first ``seed_wave`` mirrored tickets (the seeds); once that many seeds
have the image (their tickets marked ``done`` after a successful pull, so the image is
whole in their containerd and, for a pull-through cache, in the cache), the coordinator
records ``seeds-done-at`` on its Lease and every other mirrored node pulls at once,
through the mirror, without a slot; a node that comes later (within ``seeds_ttl``)
takes no ticket at all. A seed that fails deletes its ticket, one that dies stops
renewing it and the coordinator removes it: either way the next mirrored node in the
queue becomes a seed. When every mirrored node that asked is done before the wave is
full, their records go and a later node starts a new wave (it is a seed itself).
Nodes without a mirror for the image keep the plain limit, in the same queue. A wave is
for one content (a hash of the image's layer digests, on each mirrored ticket and, once
the wave is done, ``seeds-content`` on the coordinator): when a tag moves to new layers,
the mirror does not have them yet and the first nodes that want them are seeds again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

ROLLOUT_LABEL = "nodeagent.io/rollout"  # the image's hash, on every Lease of its rollout
ROLE_LABEL = "nodeagent.io/rollout-role"  # "coordinator" or "ticket"
NOTIFY_LABEL = "nodeagent.io/notify"  # who watches it: "all", or the node's hash
NOTIFY_ALL = "all"
IMAGE_ANNOTATION = "nodeagent.io/image"
POSITION = "nodeagent.io/position"
GRANTED = "nodeagent.io/granted"
DONE = "nodeagent.io/done"
MIRRORED = "nodeagent.io/mirrored"
SEED_WAVE = "nodeagent.io/seed-wave"
GRANTED_THROUGH = "nodeagent.io/granted-through"
SEEDS_DONE_AT = "nodeagent.io/seeds-done-at"
CONTENT = "nodeagent.io/content"  # a mirrored ticket: what it pulls (opaque name)
SEEDS_CONTENT = "nodeagent.io/seeds-content"  # the coordinator: what the seeds pulled


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def coordinator_name(image: str) -> str:
    return f"nodeagent-{short_hash(image)}"


def ticket_name(image: str, node: str) -> str:
    return f"nodeagent-{short_hash(image)}-{short_hash(node)}"


def same_content(a: str, b: str) -> bool:
    """Contents are opaque names (the engine hashes the layer digests); "" is unknown and
    matches any."""
    return not a or not b or a == b


@dataclass(frozen=True)
class Ticket:
    """A node's place in the queue."""

    name: str
    node: str
    position: int
    version: str
    granted: bool = False  # granted by its own annotation (one-at-a-time grants)
    done: bool = False  # a seed that has the image
    mirrored: bool = False
    seed_wave: int = 0
    content: str = ""  # what a mirrored node pulls ("": unknown)


@dataclass(frozen=True)
class Coordinator:
    """The coordinator Lease of one image's rollout."""

    holder: str | None
    version: str
    duration_s: float
    granted_through: int = 0
    seeds_done_at: datetime | None = None
    seeds_content: str = ""


def may_pull(ticket: Ticket, coordinator: Coordinator | None) -> bool:
    """Granted by its own annotation or by the coordinator's ``granted-through``."""
    return ticket.granted or (coordinator is not None
                              and ticket.position <= coordinator.granted_through)


def seeds_done(coordinator: Coordinator | None, wall_now: datetime, ttl_s: float,
               content: str = "") -> bool:
    """A seed wave for this content finished recently enough that the mirror still has
    it (``content`` "": any wave)."""
    if coordinator is None or coordinator.seeds_done_at is None:
        return False
    if not same_content(content, coordinator.seeds_content):
        return False
    return (wall_now - coordinator.seeds_done_at).total_seconds() < ttl_s


@dataclass
class VersionClock:
    """When this node first saw each object at its current resourceVersion (own clock)."""

    _seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def since(self, name: str, version: str, now: float) -> float:
        seen = self._seen.get(name)
        if seen is None or seen[0] != version:
            seen = self._seen[name] = (version, now)
        return seen[1]

    def forget(self, keep: set[str]) -> None:
        for name in set(self._seen) - keep:
            del self._seen[name]


def coordinator_vacant(coordinator: Coordinator | None, clock: VersionClock,
                       now: float) -> bool:
    """No coordinator, a released one, or one that has not written for its duration."""
    if coordinator is None or not coordinator.holder:
        return True
    return now - clock.since("coordinator", coordinator.version, now) >= coordinator.duration_s


def coordinator_expires_at(coordinator: Coordinator, clock: VersionClock, now: float) -> float:
    return clock.since("coordinator", coordinator.version, now) + coordinator.duration_s


@dataclass
class Plan:
    """What the coordinator writes next; empty when nothing changes."""

    grant_through: int | None = None  # one write to the coordinator Lease grants `grants`
    grants: list[Ticket] = field(default_factory=list)
    remove: list[Ticket] = field(default_factory=list)  # expired holders, finished seeds
    mark_seeds_done: bool = False
    seeds_content: str = ""  # with mark_seeds_done: the content the seeds pulled
    wake_at: float | None = None  # earliest moment a holder can expire
    idle: bool = False  # no tickets: step down

    @property
    def grant_each(self) -> list[Ticket]:
        """Grants written to their own tickets (when one write to the coordinator can't)."""
        return [] if self.grant_through is not None else self.grants


@dataclass(frozen=True)
class QueueState:
    """The coordinator's view: tickets, its own Lease, and when holders last showed life."""

    tickets: list[Ticket]
    coordinator: Coordinator
    alive_since: dict[str, float]  # ticket name -> later of its last change and its grant
    seeds_done: bool  # a finished seed wave is recorded, recent enough (its content aside)


@dataclass(frozen=True)
class _Seeds:
    """The finished seed wave: what it covers (``content`` None: none)."""

    content: str | None

    def cover(self, ticket: Ticket) -> bool:
        """A mirrored node that pulls from the mirror without a slot."""
        return ticket.mirrored and self.content is not None \
            and same_content(ticket.content, self.content)


def plan(state: QueueState, limit: int, duration_s: float, now: float) -> Plan:
    """Grant free slots in queue order; remove expired holders and finished seeds."""
    out = Plan()
    queue = sorted(state.tickets, key=lambda t: t.position)
    seeds = _Seeds(state.coordinator.seeds_content if state.seeds_done else None)
    wave, content = _wave(queue, seeds)
    done = sum(t.done for t in queue if not seeds.cover(t) and same_content(t.content, content))
    if wave and done >= wave:
        out.mark_seeds_done, out.seeds_content = True, content
        seeds = _Seeds(content)
    # seeds nobody waits for: their records go, so the coordinator can step down
    drained = any(t.done for t in queue) and not any(
        t.mirrored and not t.done and not seeds.cover(t) for t in queue)
    # holders: granted, not finished, not a mirrored node that no longer needs a slot
    holders = [t for t in queue if may_pull(t, state.coordinator) and not t.done
               and not seeds.cover(t)]
    expired = {t.name for t in holders if now - state.alive_since.get(t.name, now) >= duration_s}
    out.remove = [t for t in queue
                  if t.name in expired or (t.done and (seeds.cover(t) or drained))]
    removed = {t.name for t in out.remove}
    holding = [t for t in holders if t.name not in removed]
    expiries = [state.alive_since.get(t.name, now) + duration_s for t in holding]
    out.wake_at = min(expiries) if expiries else None
    out.grants = _next_grants(queue, state.coordinator, removed, limit - len(holding),
                              wave, seeds)
    out.grant_through = _one_write_grant(queue, state.coordinator, removed, out.grants,
                                         seeds, limit)
    out.idle = all(t.name in removed for t in queue)
    return out


def _wave(queue: list[Ticket], seeds: _Seeds) -> tuple[int, str]:
    """The seed wave still to come: the size and content asked for by the first mirrored
    ticket the finished wave does not cover ((0, ""): none)."""
    first = next((t for t in queue if t.mirrored and not seeds.cover(t)), None)
    return (first.seed_wave, first.content) if first else (0, "")


def _next_grants(queue: list[Ticket], coordinator: Coordinator, removed: set[str],
                 free: int, wave: int, seeds: _Seeds) -> list[Ticket]:
    seeds_started = sum(1 for t in queue if t.mirrored and t.name not in removed
                        and not seeds.cover(t) and (t.done or may_pull(t, coordinator)))
    grants: list[Ticket] = []
    for ticket in queue:
        if free <= 0:
            break
        if ticket.name in removed or ticket.done or may_pull(ticket, coordinator):
            continue
        if ticket.mirrored:
            if seeds.cover(ticket):
                continue  # pulls from the mirror without a slot
            if seeds_started >= wave:
                continue  # waits for the seeds; nodes without a mirror keep their turn
            seeds_started += 1
        grants.append(ticket)
        free -= 1
    return grants


def _one_write_grant(queue: list[Ticket], coordinator: Coordinator, removed: set[str],
                     grants: list[Ticket], seeds: _Seeds, limit: int) -> int | None:
    """A position for ``granted-through`` that grants exactly ``grants`` (and tickets that
    are free to go anyway) in one write, when there are many: a write to the coordinator
    Lease reaches every waiting node, a write to a ticket only its owner, so a few grants
    go one by one and a wave (the first one, or the nodes after the seeds) at once."""
    if len(grants) < max(2, limit // 2):
        return None
    through = grants[-1].position
    chosen = {t.name for t in grants}
    for ticket in queue:
        if ticket.position > through:
            break
        if ticket.name in chosen or ticket.name in removed or ticket.done \
                or may_pull(ticket, coordinator) or seeds.cover(ticket):
            continue
        return None  # a ticket that must keep waiting lies below: grant one by one
    return through
