"""`snapshot create`, and the end of `snapshot build`: this node's containerd volume to a
tagged EBS snapshot.

The volume is checked first (not the root filesystem, no kubelet identity on it:
volume.py), its EBS volume id found (NVMe serial, else EC2 attachments for Xen devices),
what it holds recorded in the tags (tags.py), then the workflow runs (freeze,
CreateSnapshot, thaw, wait, Fast Snapshot Restore, SSM: workflow.py). Imports boto3
through ``ec2``: load this module inside command handlers only.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeagent.errors import UsageError
from nodeagent.snapshot import imds, workflow
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.ec2 import AwsClients, AwsOptions, check_zones, find_attached_volume
from nodeagent.snapshot.hydrate_plan import CONTAINERD_ROOT
from nodeagent.snapshot.volume import (
    check_not_root_filesystem,
    check_volume_contents,
    discover_volume,
)

ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class CreateOptions:
    """What `snapshot create` (and `snapshot build`) was told about the snapshot."""

    node_name: str  # recorded in the tags
    containerd_root: str = CONTAINERD_ROOT
    volume_id: str | None = None  # None: the volume holding containerd_root
    instance_id: str | None = None  # None: instance metadata
    name: str = ""
    ssm_parameter: str | None = None
    fsr_zones: tuple[str, ...] = ()
    wait: bool = True
    timeout_s: float = 4 * 3600.0
    poll_s: float = 15.0
    freeze: bool = True
    max_freeze_s: float = 30.0
    kubelet_dir: str = "/var/lib/kubelet"
    allow_kubelet_state: bool = False
    allow_root_filesystem: bool = False
    aws: AwsOptions = field(default_factory=AwsOptions)


def architecture() -> str:
    machine = platform.machine().lower()
    return ARCHITECTURES.get(machine, machine)


def hot_image_names(records: Sequence[Any]) -> list[str]:
    """One display name per image that nodeagent pinned (what the volume is for)."""
    from nodeagent.prewarm.plan import pinned_images

    return sorted({name for name, _ in pinned_images(records)})


async def containerd_facts(address: str) -> tuple[str, list[str]]:
    """containerd's version and the images nodeagent pinned (recorded in the tags)."""
    from nodeagent.containerd.client import ContainerdClient

    async with ContainerdClient(address) as client:
        version = await client.version()
        records = await client.list_image_records()
    return version.version, hot_image_names(records)


def resolve_volume_id(options: CreateOptions, aws: AwsClients) -> str:
    if options.volume_id:
        return options.volume_id
    target = discover_volume(options.containerd_root)
    if target.volume_id:
        return target.volume_id
    instance = options.instance_id or imds.instance_id()
    if not instance:
        raise UsageError(f"/dev/{target.device.name} is a Xen device without a volume serial: "
                         "pass --instance-id (instance metadata is unreachable) or --volume-id")
    return find_attached_volume(aws.ec2, instance, target.device.name)


def preflight(options: CreateOptions) -> None:
    """What `snapshot build` checks before its prewarm, which is long and changes the node:
    the volume, the flags, the region, credentials and the fast-restore zones (create
    checks them all again before it freezes anything)."""
    _check_volume(options)
    aws = AwsClients(options.aws)
    aws.check_credentials()
    if options.fsr_zones:
        check_zones(aws.ec2, aws.region, options.fsr_zones)


def _check_volume(options: CreateOptions) -> None:
    check_not_root_filesystem(options.containerd_root, options.allow_root_filesystem)
    check_volume_contents(options.containerd_root, options.kubelet_dir,
                          options.allow_kubelet_state)
    workflow.check_wait(options.wait, options.ssm_parameter, options.fsr_zones)


def create_snapshot(options: CreateOptions, images: list[str], containerd_version: str,
                    on_progress: Callable[[str, str, str], None], models: Sequence[str] = ()
                    ) -> tuple[workflow.CreateResult, T.SnapshotMetadata]:
    """The snapshot and what was done after it (see workflow.create: raises only while no
    snapshot exists)."""
    _check_volume(options)
    aws = AwsClients(options.aws)
    volume_id = resolve_volume_id(options, aws)
    meta = T.SnapshotMetadata(
        hotlist_digest=T.hotlist_digest(images, models), images=tuple(images),
        architecture=architecture(), containerd_version=containerd_version,
        source_node=options.node_name, created_at=datetime.now(UTC),
        source_instance=options.instance_id or imds.instance_id() or "",
        models=tuple(models),
    )
    req = workflow.CreateRequest(
        volume_id=volume_id, metadata=meta,
        freeze_path=options.containerd_root if options.freeze else None,
        name=options.name, wait=options.wait, timeout_s=options.timeout_s,
        poll_s=options.poll_s, max_freeze_s=options.max_freeze_s,
        ssm_parameter=options.ssm_parameter, fsr_zones=options.fsr_zones,
    )
    workflow.validate(req)
    return workflow.create(aws, req, on_progress=on_progress), meta
