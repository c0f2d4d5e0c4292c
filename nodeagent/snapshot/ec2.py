"""EC2 and SSM calls for snapshots, with retries and errors a user can act on.

Throttling and transient errors are retried by botocore (adaptive mode: exponential
backoff with jitter plus client-side rate limiting); the snapshot waiter also rides out
errors that outlast those retries until its own deadline. Everything else becomes an
AwsError naming the API action, the resource and what to do about it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config

from nodeagent import __version__
from nodeagent.errors import UsageError
from nodeagent.inputs import check_number
from nodeagent.log import fields
from nodeagent.snapshot import aws_names, imds, limits
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.aws_errors import (
    NO_CREDENTIALS,
    AwsError,
    SnapshotFailed,
    aws_call,
    error_code,
    is_transient,
)
from nodeagent.snapshot.aws_reads import RereadingClient
from nodeagent.snapshot.retention import SnapshotInfo

__all__ = ["AwsClients", "AwsError", "AwsOptions", "SnapshotFailed", "aws_call"]

log = logging.getLogger(__name__)

# Where the region comes from, first found wins (botocore itself reads only
# AWS_DEFAULT_REGION, then the config file; the AWS CLI v2 and SDKs also read AWS_REGION).
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class AwsOptions:
    region: str | None = None
    endpoint_url: str | None = None  # also honoured: AWS_ENDPOINT_URL(_EC2|_SSM) env vars
    max_attempts: int = 10
    retry_mode: str = "adaptive"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check_number("--max-attempts", self.max_attempts, *limits.MAX_ATTEMPTS)


# ---------------------------------------------------------------------------- clients


def resolve_region(flag: str | None, session: boto3.session.Session) -> str:
    """--region, else AWS_REGION, else AWS_DEFAULT_REGION, else the AWS config file (the
    session's profile), else instance metadata; a name that is not a region is refused,
    naming where it came from."""
    found = [("--region", flag), *((env, os.environ.get(env)) for env in REGION_ENV),
             ("the AWS config file", session.region_name)]
    source, region = next(((s, r) for s, r in found if r), ("instance metadata", None))
    region = region or imds.region()
    if not region:
        raise AwsError("no AWS region: pass --region or set AWS_REGION (not in the "
                       "environment, the AWS config file or instance metadata)")
    problem = aws_names.region_problem(region)
    if problem:
        raise UsageError(f"region {region!r} (from {source}): {problem}")
    return region


class AwsClients:
    """A boto3 session with resolved region and credentials, and clients made from it."""

    def __init__(self, options: AwsOptions) -> None:
        self.options = options
        # botocore reads AWS_PROFILE and the config files here (a missing profile, a file
        # that does not parse): one line naming what was being read, not a traceback
        with aws_call("reading the AWS configuration", "(AWS_PROFILE, AWS_CONFIG_FILE, "
                      "AWS_SHARED_CREDENTIALS_FILE)"):
            self.region = resolve_region(options.region, boto3.session.Session())
            self.session = boto3.session.Session(region_name=self.region)
        self._clients: dict[tuple[str, int, float | None], Any] = {}

    def check_credentials(self) -> None:
        """Resolve credentials now (and refresh temporary ones), so a later call cannot
        stall on the credential chain, e.g. while the filesystem is frozen."""
        with aws_call("resolving credentials"):
            creds = self.session.get_credentials()
            if creds is None:
                raise AwsError(NO_CREDENTIALS)
            creds.get_frozen_credentials()

    def client(self, service: str, max_attempts: int | None = None,
               timeout_s: float | None = None) -> Any:
        """A client; ``max_attempts``/``timeout_s`` override the options (e.g. a short budget
        inside the freeze window)."""
        attempts = max_attempts or self.options.max_attempts
        key = (service, attempts, timeout_s)
        if key not in self._clients:
            self._clients[key] = self._make_client(service, attempts, timeout_s)
        return self._clients[key]

    def _make_client(self, service: str, attempts: int, timeout_s: float | None) -> Any:
        # An endpoint URL from the environment (AWS_ENDPOINT_URL_EC2) is only checked here.
        with aws_call(f"creating the {service} client"):
            config = Config(
                region_name=self.region,
                # total_max_attempts counts the first try (plain max_attempts does not)
                retries={"total_max_attempts": attempts, "mode": self.options.retry_mode},
                connect_timeout=min(self.options.connect_timeout_s, timeout_s or 1e9),
                read_timeout=timeout_s or self.options.read_timeout_s,
                user_agent_extra=f"nodeagent/{__version__}",
            )
            return RereadingClient(self.session.client(
                service, config=config, endpoint_url=self.options.endpoint_url))

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def ssm(self) -> Any:
        return self.client("ssm")


# ---------------------------------------------------------------------------- volumes


def find_attached_volume(ec2: Any, instance_id: str, kernel_name: str) -> str:
    """Volume id of a Xen device (``xvdb``) from the instance's EC2 attachments."""
    letters = kernel_name.removeprefix("xvd")
    names = [f"/dev/xvd{letters}", f"/dev/sd{letters}"]
    with aws_call("DescribeVolumes", f"attached to {instance_id} as {'/'.join(names)}"):
        resp = ec2.describe_volumes(Filters=[
            {"Name": "attachment.instance-id", "Values": [instance_id]},
            {"Name": "attachment.device", "Values": names},
        ])
        volumes = [str(v["VolumeId"]) for v in resp.get("Volumes", [])]
    if len(volumes) != 1:
        raise AwsError(
            f"/dev/{kernel_name}: found {len(volumes)} EBS volumes attached to {instance_id} "
            f"as {' or '.join(names)}; expected exactly one"
        )
    return volumes[0]


# ---------------------------------------------------------------------------- snapshots


def create_snapshot(ec2: Any, volume_id: str, description: str,
                    tags: Sequence[dict[str, str]]) -> str:
    """CreateSnapshot; returns as soon as EC2 has the point in time (state pending)."""
    with aws_call("CreateSnapshot", f"of {volume_id}"):
        resp = ec2.create_snapshot(
            VolumeId=volume_id, Description=description[:255],
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": list(tags)}],
        )
        return str(resp["SnapshotId"])


def snapshots_with_request_id(ec2: Any, request_id: str) -> list[str]:
    """All snapshots carrying our request id (more than one: a retry created duplicates)."""
    with aws_call("DescribeSnapshots", f"with {T.REQUEST_ID}={request_id}"):
        resp = ec2.describe_snapshots(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{T.REQUEST_ID}", "Values": [request_id]}],
        )
        return sorted(s["SnapshotId"] for s in resp.get("Snapshots", []))


def _describe_one(ec2: Any, snapshot_id: str) -> dict[str, Any] | None:
    resp = ec2.describe_snapshots(SnapshotIds=[snapshot_id])
    found = resp.get("Snapshots", [])
    return found[0] if found else None


def wait_for_snapshot(
    ec2: Any,
    snapshot_id: str,
    timeout_s: float,
    poll_s: float = 15.0,
    on_progress: Callable[[str, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until completed; SnapshotFailed on state error, AwsError past the deadline.

    Transient errors (throttling beyond botocore's retries, a dropped connection, the
    snapshot not yet visible right after CreateSnapshot) back off and poll again.
    """
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        snap: dict[str, Any] | None = None
        try:
            snap = _describe_one(ec2, snapshot_id)
        except Exception as exc:
            if not (is_transient(exc) or error_code(exc) == "InvalidSnapshot.NotFound"):
                with aws_call("DescribeSnapshots", snapshot_id):
                    raise
            failures += 1
        if snap is not None:
            failures = 0
            state, progress = snap.get("State", "?"), snap.get("Progress", "")
            if on_progress:
                on_progress(state, progress)
            if state == "completed":
                return snap
            if state == "error":
                detail = snap.get("StateMessage") or "no reason given"
                raise SnapshotFailed(
                    f"snapshot {snapshot_id} of {snap.get('VolumeId', '?')} failed "
                    f"(state error: {detail}); it was not published; "
                    "`nodeagent snapshot prune --yes` removes failed snapshots"
                )
        if time.monotonic() >= deadline:
            state = snap.get("State") if snap else "unknown"
            raise AwsError(
                f"snapshot {snapshot_id} is still {state} after {timeout_s:.0f}s; it "
                "continues in EC2 (see `nodeagent snapshot list`); raise --timeout to wait"
            )
        delay = poll_s
        if failures:  # exponential backoff with jitter while AWS keeps failing
            delay = min(poll_s * 2 ** min(failures, 5), 300.0) * random.uniform(0.5, 1.0)
        sleep(min(delay, max(deadline - time.monotonic(), 0.0)))


def availability_zones(ec2: Any) -> list[aws_names.Zone]:
    """Every zone of the region (AZs, Local and Wavelength Zones, opted in or not)."""
    with aws_call("DescribeAvailabilityZones"):
        resp = ec2.describe_availability_zones(AllAvailabilityZones=True)
        return [aws_names.Zone(name=z["ZoneName"], zone_id=z.get("ZoneId", ""),
                               state=z.get("State", "available"),
                               opt_in=z.get("OptInStatus", ""))
                for z in resp.get("AvailabilityZones", [])]


def check_zones(ec2: Any, region: str, zones: Sequence[str]) -> tuple[str, ...]:
    """The names of the given zone names or IDs; a UsageError naming every zone the
    region does not have (asked before anything is frozen or created)."""
    names, problems = aws_names.match_zones(zones, region, availability_zones(ec2))
    if problems:
        raise UsageError("--fast-restore-az: " + "; ".join(problems))
    return names


def enable_fast_snapshot_restore(ec2: Any, snapshot_id: str, zones: Sequence[str]
                                 ) -> tuple[tuple[str, ...], list[str]]:
    """EnableFastSnapshotRestores: (zones EC2 confirmed, one problem per other zone)."""
    with aws_call("EnableFastSnapshotRestores", f"for {snapshot_id} in {','.join(zones)}"):
        resp = ec2.enable_fast_snapshot_restores(
            AvailabilityZones=list(zones), SourceSnapshotIds=[snapshot_id]
        )
        confirmed = {item["AvailabilityZone"] for item in resp.get("Successful", [])}
        failed = {
            item.get("AvailabilityZone", "?"): f"{item.get('Error', {}).get('Code', '?')}: "
                                               f"{item.get('Error', {}).get('Message', '')}"
            for entry in resp.get("Unsuccessful", [])
            for item in entry.get("FastSnapshotRestoreStateErrors", [])
        }
    problems = [f"{zone}: {failed.get(zone, 'not confirmed in the answer')}"
                for zone in zones if zone not in confirmed]
    problems += [f"{zone}: {why}" for zone, why in failed.items() if zone not in zones]
    return tuple(z for z in zones if z in confirmed), problems


def publish_parameter(ssm: Any, name: str, snapshot_id: str) -> None:
    with aws_call("PutParameter", name):
        ssm.put_parameter(
            Name=name, Value=snapshot_id, Type="String", Overwrite=True,
            Description="EBS snapshot of the prewarmed containerd data volume (nodeagent)",
        )


def list_snapshots(ec2: Any) -> list[SnapshotInfo]:
    """Our snapshots (tagged managed-by=nodeagent) in this account and region."""
    found = []
    with aws_call("DescribeSnapshots", f"tagged {T.MANAGED_BY}={T.MANAGED_BY_VALUE}"):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"],
            Filters=[{"Name": f"tag:{T.MANAGED_BY}", "Values": [T.MANAGED_BY_VALUE]}],
        )
        for page in pages:
            found.extend(_snapshot_info(s) for s in page.get("Snapshots", []))
    return found


def _snapshot_info(raw: dict[str, Any]) -> SnapshotInfo:
    start = raw.get("StartTime")
    return SnapshotInfo(
        snapshot_id=raw["SnapshotId"], state=raw.get("State", "?"),
        start_time=start if isinstance(start, datetime) else datetime.min.replace(tzinfo=UTC),
        volume_id=raw.get("VolumeId", ""), volume_size_gib=int(raw.get("VolumeSize", 0)),
        progress=raw.get("Progress", ""), tags=T.tag_map(raw.get("Tags")),
    )


def delete_snapshot(ec2: Any, snapshot_id: str) -> None:
    with aws_call("DeleteSnapshot", snapshot_id):
        ec2.delete_snapshot(SnapshotId=snapshot_id)


# ---------------------------------------------------------------------------- references


def launch_template_references(ec2: Any) -> dict[str, list[str]]:
    """Snapshot ids named by the $Latest and $Default versions of every launch template."""
    refs: dict[str, list[str]] = {}
    with aws_call("DescribeLaunchTemplates"):
        templates = [
            (t["LaunchTemplateId"], t.get("LaunchTemplateName", ""))
            for page in ec2.get_paginator("describe_launch_templates").paginate()
            for t in page.get("LaunchTemplates", [])
        ]
    for lt_id, name in templates:
        with aws_call("DescribeLaunchTemplateVersions", f"{name} ({lt_id})"):
            versions = ec2.describe_launch_template_versions(
                LaunchTemplateId=lt_id, Versions=["$Latest", "$Default"]
            ).get("LaunchTemplateVersions", [])
        for version in versions:
            label = f"launch template {name} ({lt_id}) version {version.get('VersionNumber')}"
            for mapping in version.get("LaunchTemplateData", {}).get("BlockDeviceMappings", []):
                snap = mapping.get("Ebs", {}).get("SnapshotId")
                if snap and label not in refs.get(snap, []):
                    refs.setdefault(snap, []).append(label)
    return refs


def parameter_references(ssm: Any, names: Sequence[str]) -> dict[str, list[str]]:
    """Snapshot ids held by the given SSM parameters (missing parameters name nothing)."""
    refs: dict[str, list[str]] = {}
    missing: list[str] = []
    for start in range(0, len(names), 10):  # GetParameters takes at most 10 names
        batch = list(names[start:start + 10])
        with aws_call("GetParameters", ",".join(batch)):
            resp = ssm.get_parameters(Names=batch)
            for param in resp.get("Parameters", []):
                refs.setdefault(param["Value"].strip(), []).append(
                    f"SSM parameter {param['Name']}"
                )
            missing.extend(resp.get("InvalidParameters", []))
    if missing:  # a typo protects nothing: say so
        log.warning("SSM parameters not found: they protect no snapshot",
                    extra=fields(parameters=missing))
    return refs
