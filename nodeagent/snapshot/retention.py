"""Which of our snapshots `snapshot prune` deletes (pure decision, no AWS calls).

Rules, per hot-list digest (snapshots of the same hot list are interchangeable):
- a snapshot that a launch template (latest or default version) or an SSM parameter still
  names is always kept: nodes launched from it would fail to boot otherwise;
- pending snapshots are kept (a create may still be waiting on them);
- the newest ``keep`` completed snapshots are kept;
- older completed snapshots are deleted, and so are failed (state "error") ones, which
  cannot be restored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from nodeagent.errors import UsageError
from nodeagent.snapshot import tags as T

UNKNOWN_DIGEST = "(none)"


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    state: str  # pending | completed | error | recoverable | recovering
    start_time: datetime
    volume_id: str = ""
    volume_size_gib: int = 0
    progress: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def hotlist_digest(self) -> str:
        return self.tags.get(T.HOTLIST_DIGEST) or UNKNOWN_DIGEST


@dataclass(frozen=True)
class PruneDecision:
    snapshot: SnapshotInfo
    delete: bool
    reason: str


def plan_prune(
    snapshots: Sequence[SnapshotInfo],
    keep: int,
    references: Mapping[str, Sequence[str]],
) -> list[PruneDecision]:
    """Decide keep/delete for each snapshot; ``references`` maps snapshot id -> who names it
    (e.g. "launch template web (lt-0abc) $Latest", "SSM parameter /nodeagent/snapshot")."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (got {keep})")
    groups: dict[str, list[SnapshotInfo]] = {}
    for snap in snapshots:
        groups.setdefault(snap.hotlist_digest, []).append(snap)
    decisions: list[PruneDecision] = []
    for digest in sorted(groups):
        newest_first = sorted(groups[digest], key=lambda s: s.start_time, reverse=True)
        decisions.extend(_decide_group(newest_first, keep, references))
    return decisions


def _decide_group(
    newest_first: list[SnapshotInfo], keep: int, references: Mapping[str, Sequence[str]]
) -> list[PruneDecision]:
    decisions = []
    kept_completed = 0
    for snap in newest_first:
        refs = references.get(snap.snapshot_id)
        if snap.state == "completed":
            kept_completed += 1
        if refs:
            reason, delete = "still referenced by " + "; ".join(refs), False
        elif snap.state == "error":
            reason, delete = "failed snapshot (state error) cannot be restored", True
        elif snap.state != "completed":
            reason, delete = f"state {snap.state}: not finished", False
        elif kept_completed <= keep:
            reason, delete = f"among the newest {keep} of its hot list", False
        else:
            reason, delete = f"older than the newest {keep} of its hot list", True
        decisions.append(PruneDecision(snapshot=snap, delete=delete, reason=reason))
    return decisions
