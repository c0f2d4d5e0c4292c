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
from nodeagent.inputs import check_number
from nodeagent.log import fields
from nodeagent.snapshot import ec2 as E
from nodeagent.snapshot import limits
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


DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass
class Step:
    """One thing done (or not) after the snapshot exists."""

    name: str  # "consistency-tag" | "wait" | "fast-restore" | "ssm-parameter"
    status: str  # DONE | FAILED | SKIPPED
    detail: str = ""  # what was done, the error of a failed step, why one was skipped


@dataclass
class CreateResult:
    snapshot_id: str
    state: str
    consistency: str
    freeze_seconds: float | None = None
    duplicates: list[str] = field(default_factory=list)
    fsr_zones: tuple[str, ...] = ()  # the zones where FSR was enabled
    ssm_parameter: str | None = None  # set once the parameter was written
    wait_seconds: float = 0.0
    steps: list[Step] = field(default_factory=list)
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Everything asked was done (the command then exits 0)."""
        return not self.interrupted and all(s.status == DONE for s in self.steps)


def validate(req: CreateRequest) -> None:
    check_wait(req.wait, req.ssm_parameter, req.fsr_zones)
    check_number("--max-freeze-seconds", req.max_freeze_s, *limits.MAX_FREEZE_S,
                 low_open=True)
    check_number("--timeout", req.timeout_s, *limits.TIMEOUT_S, low_open=True)
    check_number("--poll-interval", req.poll_s, *limits.POLL_S)


def check_wait(wait: bool, ssm_parameter: str | None, fsr_zones: Sequence[str]) -> None:
    if not wait and (ssm_parameter or fsr_zones):
        raise UsageError(
            "--no-wait cannot be combined with --ssm-parameter or --fast-restore-az: both "
            "need a completed snapshot"
        )


def _check_volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    """DescribeVolumes before freezing: fails early on a wrong region or volume id, and
    warms up the connection, endpoint resolution and lazy imports the window will use."""
    with E.aws_call("DescribeVolumes", volume_id):
        volumes = ec2.describe_volumes(VolumeIds=[volume_id]).get("Volumes", [])
        if not volumes:
            raise E.AwsError(f"DescribeVolumes {volume_id}: not found in this region")
        return dict(volumes[0])


def _start_snapshot(aws: E.AwsClients, req: CreateRequest, result: CreateResult) -> None:
    """CreateSnapshot, inside the freeze window when asked; fills in the result's id,
    consistency and window. Raises only while no snapshot exists."""
    fast = aws.client("ec2", max_attempts=FREEZE_WINDOW_ATTEMPTS,
                      timeout_s=FREEZE_WINDOW_TIMEOUT_S)
    volume = _check_volume(fast, req.volume_id)
    log.info("volume found", extra=fields(
        volume_id=req.volume_id, size_gib=volume.get("Size"),
        zone=volume.get("AvailabilityZone"), state=volume.get("State")))
    result.consistency = "crash" if req.freeze_path is None else "frozen"
    tags = T.build_tags(replace(req.metadata, consistency=result.consistency), req.name)
    if req.freeze_path is None:
        result.snapshot_id = _create_or_find(aws, req, _create_call(fast, req, tags))
        return
    # No logging in the window: stderr may be a file on the frozen filesystem.
    with frozen(req.freeze_path, req.max_freeze_s) as window:
        outcome = _create_call(fast, req, tags)
    result.freeze_seconds = window.frozen_seconds
    result.snapshot_id = _create_or_find(aws, req, outcome)
    if window.thawed_by_watchdog:
        log.warning("freeze window overran; the watchdog thawed the filesystem early: the "
                    "snapshot is crash-consistent", extra=fields(
                        snapshot_id=result.snapshot_id, max_freeze_s=req.max_freeze_s))
        result.consistency = "crash"
        _attempt(result, "consistency-tag", lambda: _retag_crash(fast, result.snapshot_id))


def _create_call(ec2: Any, req: CreateRequest, tags: list[dict[str, str]]) -> str | E.AwsError:
    try:
        return E.create_snapshot(ec2, req.volume_id, req.description, tags)
    except E.AwsError as exc:  # looked into after the thaw
        return exc


def _create_or_find(aws: E.AwsClients, req: CreateRequest, outcome: str | E.AwsError) -> str:
    """The new snapshot's id. When CreateSnapshot failed, its request may still have
    reached EC2 (an answer lost or unparsable): the snapshot is then found by our request
    id, so it is neither lost nor left unreported; else the failure stands."""
    if isinstance(outcome, str):
        return outcome
    try:
        found = E.snapshots_with_request_id(aws.ec2, req.metadata.request_id)
    except NodeagentError:
        found = []
    if not found:
        raise outcome
    log.warning("CreateSnapshot failed, but EC2 has the snapshot: going on with it",
                extra=fields(snapshot_id=found[0], error=str(outcome)))
    return found[0]


def _retag_crash(ec2: Any, snapshot_id: str) -> str:
    with E.aws_call("CreateTags", f"{T.CONSISTENCY}=crash on {snapshot_id}"):
        ec2.create_tags(Resources=[snapshot_id], Tags=[{"Key": T.CONSISTENCY,
                                                        "Value": "crash"}])
    return f"{T.CONSISTENCY}=crash"


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
    """Create the snapshot; wait, enable FSR and publish to SSM as the request says.

    Raises (a NodeagentError) only while no snapshot exists: the checks, the zones,
    CreateSnapshot. From then on every step is attempted and recorded in the result
    (``steps``; ``complete`` says whether all were done), so the caller can always say
    which snapshot exists and what was and was not done."""
    validate(req)
    aws.check_credentials()
    if req.fsr_zones:  # refused before anything is frozen or created
        req = replace(req, fsr_zones=E.check_zones(aws.ec2, aws.region, req.fsr_zones))
    request_id = req.metadata.request_id or uuid.uuid4().hex
    req = replace(req, metadata=replace(req.metadata, request_id=request_id))
    result = CreateResult("", "pending", "")
    _start_snapshot(aws, req, result)
    log.info("snapshot started", extra=fields(
        snapshot_id=result.snapshot_id, volume_id=req.volume_id,
        consistency=result.consistency, freeze_ms=None if result.freeze_seconds is None
        else round(result.freeze_seconds * 1000, 1)))
    result.duplicates = _duplicates(aws, request_id, result.snapshot_id)
    if req.wait:
        _finish(aws, req, result, on_progress)
    return result


def _finish(aws: E.AwsClients, req: CreateRequest, result: CreateResult,
            on_progress: Callable[[str, str, str], None] | None) -> None:
    """Wait, then Fast Snapshot Restore and SSM, each attempted on its own. Both need a
    completed snapshot; neither needs the other. In particular the parameter is written
    even when FSR failed: the snapshot is complete and restores fine without FSR (blocks
    load lazily, `nodeagent hydrate` reads the hot ones first), and holding the id back
    would keep new nodes on an older snapshot; the non-zero exit still says FSR failed."""
    later: list[tuple[str, Callable[[], str]]] = []
    if req.fsr_zones:
        later.append(("fast-restore", lambda: _enable_fsr(aws, req, result)))
    if req.ssm_parameter:
        later.append(("ssm-parameter", lambda: _publish(aws, req, result)))
    completed = _attempt(result, "wait", lambda: _wait(aws, req, result, on_progress))
    for name, action in later:
        if result.interrupted:
            result.steps.append(Step(name, SKIPPED, "interrupted"))
        elif not completed:
            result.steps.append(Step(name, SKIPPED, f"the snapshot is {result.state}, not "
                                                    "completed"))
        else:
            _attempt(result, name, action)


def _attempt(result: CreateResult, name: str, action: Callable[[], str]) -> bool:
    """Run one step, record its outcome; True when it was done. Ctrl-C stops the steps
    but not the report of what exists."""
    try:
        detail = action()
    except NodeagentError as exc:
        result.steps.append(Step(name, FAILED, str(exc)))
    except Exception as exc:  # a bug must not lose the snapshot id either
        log.debug("snapshot step failed", exc_info=True)
        result.steps.append(Step(name, FAILED, f"{name}: unexpected failure "
                                               f"({type(exc).__name__}: {exc})"))
    except KeyboardInterrupt:
        result.interrupted = True
        result.steps.append(Step(name, FAILED, "interrupted"))
    else:
        result.steps.append(Step(name, DONE, detail))
        return True
    log.warning("snapshot step not done", extra=fields(
        snapshot_id=result.snapshot_id, step=name, error=result.steps[-1].detail))
    return False


def _wait(aws: E.AwsClients, req: CreateRequest, result: CreateResult,
          on_progress: Callable[[str, str, str], None] | None) -> str:
    def seen(state: str, pct: str) -> None:
        result.state = state
        if on_progress:
            on_progress(result.snapshot_id, state, pct)

    started = time.monotonic()
    try:
        E.wait_for_snapshot(aws.ec2, result.snapshot_id, req.timeout_s, req.poll_s,
                            on_progress=seen)
    except E.SnapshotFailed:
        result.state = "error"
        raise
    finally:
        result.wait_seconds = time.monotonic() - started
    result.state = "completed"
    return f"completed after {result.wait_seconds:.1f}s"


def _enable_fsr(aws: E.AwsClients, req: CreateRequest, result: CreateResult) -> str:
    enabled, problems = E.enable_fast_snapshot_restore(aws.ec2, result.snapshot_id,
                                                       req.fsr_zones)
    result.fsr_zones = enabled
    if problems:
        raise E.AwsError(f"EnableFastSnapshotRestores for {result.snapshot_id} failed in "
                         + "; ".join(problems))
    log.info("fast snapshot restore enabled", extra=fields(
        snapshot_id=result.snapshot_id, zones=list(enabled)))
    return "enabled in " + ",".join(enabled)


def _publish(aws: E.AwsClients, req: CreateRequest, result: CreateResult) -> str:
    assert req.ssm_parameter
    E.publish_parameter(aws.ssm, req.ssm_parameter, result.snapshot_id)
    result.ssm_parameter = req.ssm_parameter
    log.info("snapshot id published", extra=fields(
        snapshot_id=result.snapshot_id, parameter=req.ssm_parameter))
    return f"{req.ssm_parameter} = {result.snapshot_id}"


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
