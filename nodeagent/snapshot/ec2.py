"""EC2 and SSM calls for snapshots, with retries and errors a user can act on.

Throttling and transient errors are retried by botocore (adaptive mode: exponential
backoff with jitter plus client-side rate limiting); the snapshot waiter also rides out
errors that outlast those retries until its own deadline. Everything else becomes an
AwsError naming the API action, the resource and what to do about it.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from nodeagent import __version__
from nodeagent.errors import NodeagentError, UsageError
from nodeagent.snapshot import imds
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.retention import SnapshotInfo

TRANSIENT_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "ServiceUnavailable",
    "Unavailable", "InternalError", "InternalFailure", "InternalServerError",
})
PERMISSION_CODES = frozenset({
    "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
    "ExpiredTokenException", "SignatureDoesNotMatch",
})
POLICY_HINT = "see daemonset/examples/iam-policy-snapshot.json for the permissions needed"
NO_CREDENTIALS = (
    "no AWS credentials found (looked in the environment, ~/.aws, web identity/IRSA, "
    "EKS Pod Identity and the instance profile); give the node or the pod an IAM role"
)


class AwsError(NodeagentError):
    """An AWS call failed; the message names the action and the resource."""


class SnapshotFailed(AwsError):
    """EC2 reported the snapshot in state "error"."""


@dataclass(frozen=True)
class AwsOptions:
    region: str | None = None
    endpoint_url: str | None = None  # also honoured: AWS_ENDPOINT_URL(_EC2|_SSM) env vars
    max_attempts: int = 10
    retry_mode: str = "adaptive"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"--max-attempts must be at least 1 (got {self.max_attempts})")


# ---------------------------------------------------------------------------- errors


def _client_error(exc: ClientError, action: str, subject: str) -> AwsError:
    err = exc.response.get("Error", {})
    code, message = err.get("Code", "Unknown"), err.get("Message", "")
    where = f"{action} {subject}".strip()
    if code in PERMISSION_CODES:
        return AwsError(f"{where}: not permitted ({code}: {message}); {POLICY_HINT}")
    if code in TRANSIENT_CODES:
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        return AwsError(
            f"{where}: AWS still answered {code} after {attempts} attempts; "
            "try again later or raise the account's API rate limits"
        )
    return AwsError(f"{where}: {code}: {message}")


@contextlib.contextmanager
def aws_call(action: str, subject: str = "") -> Iterator[None]:
    """Translate botocore exceptions raised inside into AwsError."""
    where = f"{action} {subject}".strip()
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise AwsError(f"{where}: {NO_CREDENTIALS}") from exc
    except ClientError as exc:
        raise _client_error(exc, action, subject) from exc
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError,
            ReadTimeoutError) as exc:
        raise AwsError(
            f"{where}: cannot reach AWS ({exc}); check the node's network, VPC endpoints "
            "or --endpoint-url"
        ) from exc
    except ParamValidationError as exc:
        raise AwsError(f"{where}: invalid request: {exc}") from exc
    except BotoCoreError as exc:
        raise AwsError(f"{where}: {exc}") from exc


def _error_code(exc: Exception) -> str | None:
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        return _error_code(exc) in TRANSIENT_CODES
    return isinstance(exc, EndpointConnectionError | ConnectTimeoutError
                      | ConnectionClosedError | ReadTimeoutError)


# ---------------------------------------------------------------------------- clients


class AwsClients:
    """A boto3 session with resolved region and credentials, and clients made from it."""

    def __init__(self, options: AwsOptions) -> None:
        self.options = options
        self.session = boto3.session.Session(region_name=options.region)
        region = self.session.region_name or imds.region()
        if not region:
            raise AwsError("no AWS region: pass --region or set AWS_REGION")
        self.region = region
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
            config = Config(
                region_name=self.region,
                # total_max_attempts counts the first try (plain max_attempts does not)
                retries={"total_max_attempts": attempts, "mode": self.options.retry_mode},
                connect_timeout=min(self.options.connect_timeout_s, timeout_s or 1e9),
                read_timeout=timeout_s or self.options.read_timeout_s,
                user_agent_extra=f"nodeagent/{__version__}",
            )
            self._clients[key] = self.session.client(
                service, config=config, endpoint_url=self.options.endpoint_url
            )
        return self._clients[key]

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
    volumes = resp.get("Volumes", [])
    if len(volumes) != 1:
        raise AwsError(
            f"/dev/{kernel_name}: found {len(volumes)} EBS volumes attached to {instance_id} "
            f"as {' or '.join(names)}; expected exactly one"
        )
    return str(volumes[0]["VolumeId"])


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
            if not (is_transient(exc) or _error_code(exc) == "InvalidSnapshot.NotFound"):
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


def enable_fast_snapshot_restore(ec2: Any, snapshot_id: str, zones: Sequence[str]) -> None:
    with aws_call("EnableFastSnapshotRestores", f"for {snapshot_id} in {','.join(zones)}"):
        resp = ec2.enable_fast_snapshot_restores(
            AvailabilityZones=list(zones), SourceSnapshotIds=[snapshot_id]
        )
    problems = [
        f"{item.get('AvailabilityZone', '?')}: {item.get('Error', {}).get('Code', '?')}: "
        f"{item.get('Error', {}).get('Message', '')}"
        for failed in resp.get("Unsuccessful", [])
        for item in failed.get("FastSnapshotRestoreStateErrors", [])
    ]
    if problems:
        raise AwsError(
            f"EnableFastSnapshotRestores for {snapshot_id} failed in " + "; ".join(problems)
        )


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
            t for page in ec2.get_paginator("describe_launch_templates").paginate()
            for t in page.get("LaunchTemplates", [])
        ]
    for template in templates:
        lt_id, name = template["LaunchTemplateId"], template.get("LaunchTemplateName", "")
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
    for start in range(0, len(names), 10):  # GetParameters takes at most 10 names
        batch = list(names[start:start + 10])
        with aws_call("GetParameters", ",".join(batch)):
            resp = ssm.get_parameters(Names=batch)
        for param in resp.get("Parameters", []):
            refs.setdefault(param["Value"].strip(), []).append(
                f"SSM parameter {param['Name']}"
            )
    return refs
