"""What the snapshot commands print: tables, JSON documents and snapshot completion.

Text for people (tables, one line per phase), JSON for scripts (-o json); the wait for a
snapshot shows one redrawn line on a terminal and a log line per poll otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nodeagent.console import LiveDisplay, bar, fmt_bytes, fmt_duration
from nodeagent.log import fields
from nodeagent.snapshot import tags as T

if TYPE_CHECKING:
    from nodeagent.snapshot.hydrate import HydrateReport
    from nodeagent.snapshot.retention import PruneDecision, SnapshotInfo
    from nodeagent.snapshot.workflow import CreateResult, PruneResult

log = logging.getLogger("nodeagent.snapshot")


class WaitProgress:
    """Snapshot completion: one redrawn line on a terminal, a log line per poll otherwise."""

    def __init__(self, live: bool) -> None:
        self.display = LiveDisplay(sys.stderr) if live else None
        if self.display:
            self.display.hook_logging()
        self.started = time.monotonic()

    def __call__(self, snapshot_id: str, state: str, progress: str) -> None:
        elapsed = fmt_duration(time.monotonic() - self.started)
        if self.display is None:
            log.info("snapshot progress", extra=fields(
                snapshot_id=snapshot_id, state=state, progress=progress, elapsed=elapsed))
            return
        try:
            fraction: float | None = float(progress.rstrip("%")) / 100
        except ValueError:
            fraction = None
        self.display.show([f"{snapshot_id} {state:<9} {bar(fraction)} {progress:>4}  "
                           f"elapsed {elapsed}"])

    def close(self) -> None:
        if self.display:
            self.display.close()


def print_create(result: CreateResult, meta: T.SnapshotMetadata, output: str) -> None:
    """The snapshot id (stdout), and, when not everything asked was done, what was and
    was not, each failed step with its error (stderr; in the document with -o json)."""
    if output == "json":
        print(json.dumps({
            "snapshotId": result.snapshot_id, "state": result.state,
            "consistency": result.consistency, "complete": result.complete,
            "freezeSeconds": result.freeze_seconds, "waitSeconds": round(result.wait_seconds, 1),
            "hotlistDigest": meta.hotlist_digest, "images": list(meta.images),
            "models": list(meta.models),
            "fastRestoreZones": list(result.fsr_zones), "ssmParameter": result.ssm_parameter,
            "duplicates": result.duplicates,
            "steps": [{"step": s.name, "status": s.status, "detail": s.detail}
                      for s in result.steps],
            "errors": [s.detail for s in result.steps if s.status == "failed"],
        }, indent=2))
    else:
        print(result.snapshot_id)
    if not result.complete:
        print(create_report(result), file=sys.stderr)


def create_report(result: CreateResult) -> str:
    lines = [f"nodeagent: error: snapshot {result.snapshot_id} exists (state {result.state}, "
             f"{result.consistency}-consistent) but not everything asked was done:"]
    lines += [f"  {s.name}: {s.status}" + (f": {s.detail}" if s.detail else "")
              for s in result.steps]
    return "\n".join(lines)


def print_prune(result: PruneResult, output: str) -> None:
    if output == "json":
        print(json.dumps({
            "dryRun": result.dry_run, "deleted": result.deleted, "failed": result.failed,
            "decisions": [{"snapshotId": d.snapshot.snapshot_id,
                           "action": "delete" if d.delete else "keep", "reason": d.reason}
                          for d in result.decisions],
        }, indent=2))
    else:
        print(prune_table(result.decisions))
        to_delete = sum(1 for d in result.decisions if d.delete)
        if result.dry_run:
            print(f"dry run: nothing deleted; {to_delete} snapshot(s) would be deleted "
                  "(re-run with --yes)")
        else:
            print(f"deleted {len(result.deleted)} snapshot(s)"
                  + (f", {len(result.failed)} could not be deleted" if result.failed else ""))


def snapshot_json(s: SnapshotInfo) -> dict[str, Any]:
    images, complete = T.images_from_tags(s.tags)
    return {
        "snapshotId": s.snapshot_id, "state": s.state, "progress": s.progress,
        "startTime": s.start_time.isoformat(), "volumeId": s.volume_id,
        "volumeSizeGiB": s.volume_size_gib, "hotlistDigest": s.hotlist_digest,
        "images": list(images), "imagesComplete": complete,
        "architecture": s.tags.get(T.ARCHITECTURE), "consistency": s.tags.get(T.CONSISTENCY),
        "containerdVersion": s.tags.get(T.CONTAINERD_VERSION),
        "sourceNode": s.tags.get(T.SOURCE_NODE),
    }


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _short_digest(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def snapshot_table(snapshots: Sequence[SnapshotInfo]) -> str:
    rows = [("SNAPSHOT", "STATE", "STARTED", "SIZE", "IMAGES", "HOTLIST", "ARCH", "NODE")]
    for s in snapshots:
        images, complete = T.images_from_tags(s.tags)
        state = s.state if s.state != "pending" else f"pending {s.progress}"
        rows.append((s.snapshot_id, state, s.start_time.strftime("%Y-%m-%d %H:%M"),
                     fmt_bytes(s.volume_size_gib * 2**30),
                     str(len(images)) + ("" if complete else "+"),
                     _short_digest(s.hotlist_digest), s.tags.get(T.ARCHITECTURE, "-"),
                     s.tags.get(T.SOURCE_NODE, "-")))
    return _table(rows)


def prune_table(decisions: Sequence[PruneDecision]) -> str:
    rows = [("ACTION", "SNAPSHOT", "STATE", "STARTED", "HOTLIST", "REASON")]
    for d in decisions:
        s = d.snapshot
        rows.append(("delete" if d.delete else "keep", s.snapshot_id, s.state,
                     s.start_time.strftime("%Y-%m-%d %H:%M"), _short_digest(s.hotlist_digest),
                     d.reason))
    return _table(rows)


def print_hydrate(report: HydrateReport, output: str) -> None:
    def phase(stats: Any) -> dict[str, Any]:
        rate = stats.bytes / stats.seconds if stats.seconds > 0 else 0.0
        return {"files": stats.files, "bytes": stats.bytes, "seconds": round(stats.seconds, 3),
                "bytesPerSecond": round(rate), "errors": stats.errors}

    if output == "json":
        print(json.dumps({
            "images": report.images, "hot": phase(report.hot),
            "perImage": {k: v for k, v in report.hot.per_owner.items() if k != "containerd"},
            "device": phase(report.device) if report.device else None,
            "problems": report.problems,
        }, indent=2))
        return
    for name, stats in (("hot images", report.hot), ("device", report.device)):
        if stats is None:
            continue
        rate = stats.bytes / stats.seconds if stats.seconds > 0 else 0.0
        print(f"hydrated {name}: {stats.files} file(s), {fmt_bytes(stats.bytes)} in "
              f"{stats.seconds:.1f}s ({rate / 2**20:.1f} MiB/s)")
    for problem in report.problems + report.hot.errors:
        print(f"  problem: {problem}")
