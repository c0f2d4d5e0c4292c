"""The snapshot commands' steps, in order: create (freeze, CreateSnapshot, thaw, wait, FSR,
SSM), list, and prune (plan, then delete only when asked).

Imports boto3 through ``ec2``: load this module inside command handlers only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nodeagent.errors import NodeagentError, UsageError
from nodeagent.log import fields
from nodeagent.snapshot import ec2 as E
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.freeze import frozen
from nodeagent.snapshot.retention import PruneDecision, SnapshotInfo, plan_prune

log = logging.getLogger(__name__)

# CreateSnapshot inside the freeze window gets a short retry budget: the window is what
# every writer on the node waits for. (Standard backoff caps this near 1+2+4 s of sleep.)
FREEZE_WINDOW_ATTEMPTS = 4
FREEZE_WINDOW_TIMEOUT_S = 10.0  # per attempt; CreateSnapshot normally answers in < 1 s


@dataclass(frozen=True)
class CreateRequest:
    volume_id: str
    metadata: T.SnapshotMetadata
    freeze_path: str | None  # None: no freeze (crash-consistent snapshot)
    description: str = "nodeagent: prewarmed containerd data volume"
    name: str = ""
    wait: bool = True
    timeout_s: float = 4 * 3600.0
    poll_s: float = 15.0
    max_freeze_s: float = 30.0
    ssm_parameter: str | None = None
    fsr_zones: tuple[str, ...] = ()


@dataclass
class CreateResult:
    snapshot_id: str
    state: str
    consistency: str
    freeze_seconds: float | None = None
    duplicates: list[str] = field(default_factory=list)
    fsr_zones: tuple[str, ...] = ()
    ssm_parameter: str | None = None
    wait_seconds: float = 0.0


def validate(req: CreateRequest) -> None:
    if not req.wait and (req.ssm_parameter or req.fsr_zones):
        raise UsageError(
            "--no-wait cannot be combined with --ssm-parameter or --fast-restore-az: both "
            "need a completed snapshot"
        )
    if req.max_freeze_s <= 0:
        raise UsageError(f"--max-freeze-seconds must be positive (got {req.max_freeze_s})")


def _check_volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    """DescribeVolumes before freezing: fails early on a wrong region or volume id, and
    warms up the connection, endpoint resolution and lazy imports the window will use."""
    with E.aws_call("DescribeVolumes", volume_id):
        volumes = ec2.describe_volumes(VolumeIds=[volume_id]).get("Volumes", [])
    if not volumes:
        raise E.AwsError(f"DescribeVolumes {volume_id}: not found in this region")
    return dict(volumes[0])


def _start_snapshot(aws: E.AwsClients, req: CreateRequest) -> tuple[str, str, float | None]:
    """CreateSnapshot, inside the freeze window when asked: (id, consistency, window s)."""
    fast = aws.client("ec2", max_attempts=FREEZE_WINDOW_ATTEMPTS,
                      timeout_s=FREEZE_WINDOW_TIMEOUT_S)
    volume = _check_volume(fast, req.volume_id)
    log.info("volume found", extra=fields(
        volume_id=req.volume_id, size_gib=volume.get("Size"),
        zone=volume.get("AvailabilityZone"), state=volume.get("State")))
    if req.freeze_path is None:
        meta = replace(req.metadata, consistency="crash")
        tags = T.build_tags(meta, req.name)
        return E.create_snapshot(fast, req.volume_id, req.description, tags), "crash", None
    tags = T.build_tags(replace(req.metadata, consistency="frozen"), req.name)
    # No logging in the window: stderr may be a file on the frozen filesystem.
    with frozen(req.freeze_path, req.max_freeze_s) as window:
        snapshot_id = E.create_snapshot(fast, req.volume_id, req.description, tags)
    if window.thawed_by_watchdog:
        log.warning("freeze window overran; the watchdog thawed the filesystem early: the "
                    "snapshot is crash-consistent", extra=fields(
                        snapshot_id=snapshot_id, max_freeze_s=req.max_freeze_s))
        with E.aws_call("CreateTags", snapshot_id):
            fast.create_tags(Resources=[snapshot_id],
                             Tags=[{"Key": T.CONSISTENCY, "Value": "crash"}])
        return snapshot_id, "crash", window.frozen_seconds
    return snapshot_id, "frozen", window.frozen_seconds


def _duplicates(aws: E.AwsClients, request_id: str, snapshot_id: str) -> list[str]:
    """Other snapshots a retried CreateSnapshot made (its first answer lost): best effort,
    a failure here must not fail a snapshot that EC2 is already taking."""
    try:
        found = E.snapshots_with_request_id(aws.ec2, request_id)
    except NodeagentError as exc:
        log.warning("could not check for duplicate snapshots", extra=fields(error=str(exc)))
        return []
    duplicates = [s for s in found if s != snapshot_id]
    if duplicates:
        log.warning("a retried CreateSnapshot also created these snapshots; `nodeagent "
                    "snapshot prune` handles them", extra=fields(duplicates=duplicates))
    return duplicates


def create(
    aws: E.AwsClients,
    req: CreateRequest,
    on_progress: Callable[[str, str, str], None] | None = None,
) -> CreateResult:
    """Create the snapshot; wait, enable FSR and publish to SSM as the request says."""
    validate(req)
    aws.check_credentials()
    request_id = req.metadata.request_id or uuid.uuid4().hex
    req = replace(req, metadata=replace(req.metadata, request_id=request_id))
    snapshot_id, consistency, window_s = _start_snapshot(aws, req)
    log.info("snapshot started", extra=fields(
        snapshot_id=snapshot_id, volume_id=req.volume_id, consistency=consistency,
        freeze_ms=None if window_s is None else round(window_s * 1000, 1)))
    result = CreateResult(snapshot_id, "pending", consistency, window_s)
    result.duplicates = _duplicates(aws, request_id, snapshot_id)
    if not req.wait:
        return result
    started = time.monotonic()
    E.wait_for_snapshot(
        aws.ec2, snapshot_id, req.timeout_s, req.poll_s,
        on_progress=(lambda state, pct: on_progress(snapshot_id, state, pct))
        if on_progress else None,
    )
    result.state, result.wait_seconds = "completed", time.monotonic() - started
    if req.fsr_zones:
        E.enable_fast_snapshot_restore(aws.ec2, snapshot_id, req.fsr_zones)
        result.fsr_zones = req.fsr_zones
        log.info("fast snapshot restore enabled", extra=fields(
            snapshot_id=snapshot_id, zones=list(req.fsr_zones)))
    if req.ssm_parameter:
        E.publish_parameter(aws.ssm, req.ssm_parameter, snapshot_id)
        result.ssm_parameter = req.ssm_parameter
        log.info("snapshot id published", extra=fields(
            snapshot_id=snapshot_id, parameter=req.ssm_parameter))
    return result


# ---------------------------------------------------------------------------- list / prune


def references(aws: E.AwsClients, ssm_parameters: Sequence[str]) -> dict[str, list[str]]:
    """Who still names which snapshot: launch templates and the given SSM parameters."""
    refs = E.launch_template_references(aws.ec2)
    for snap, names in E.parameter_references(aws.ssm, ssm_parameters).items():
        refs.setdefault(snap, []).extend(names)
    return refs


def list_ours(aws: E.AwsClients) -> list[SnapshotInfo]:
    aws.check_credentials()
    return sorted(E.list_snapshots(aws.ec2), key=lambda s: s.start_time, reverse=True)


@dataclass
class PruneResult:
    decisions: list[PruneDecision]
    deleted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    dry_run: bool = True


def prune(aws: E.AwsClients, keep: int, ssm_parameters: Sequence[str],
          execute: bool) -> PruneResult:
    """Plan which snapshots to delete; delete them only when ``execute``."""
    snapshots = list_ours(aws)
    decisions = plan_prune(snapshots, keep, references(aws, ssm_parameters))
    result = PruneResult(decisions=decisions, dry_run=not execute)
    if not execute:
        return result
    for decision in decisions:
        if not decision.delete:
            continue
        snap_id = decision.snapshot.snapshot_id
        try:
            E.delete_snapshot(aws.ec2, snap_id)
        except NodeagentError as exc:  # e.g. still used by an AMI: report, go on
            result.failed[snap_id] = str(exc)
            log.warning("snapshot not deleted", extra=fields(snapshot_id=snap_id, error=str(exc)))
            continue
        result.deleted.append(snap_id)
        log.info("snapshot deleted", extra=fields(snapshot_id=snap_id, reason=decision.reason))
    return result
