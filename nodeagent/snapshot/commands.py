"""`nodeagent snapshot create|build|list|prune` and `nodeagent hydrate`.

Standard library and light nodeagent modules only at import time: boto3, grpc and the
prewarm engine load inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.console import fmt_bytes
from nodeagent.containerd.client import add_address_argument
from nodeagent.credentials.commands import add_credential_arguments
from nodeagent.errors import NodeagentError, UsageError
from nodeagent.log import fields
from nodeagent.prewarm.commands import add_engine_arguments, hotlist_files, prewarm_options
from nodeagent.snapshot import tags as T
from nodeagent.snapshot.hydrate import parse_rate

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.snapshot.ec2 import AwsClients
    from nodeagent.snapshot.retention import PruneDecision, SnapshotInfo
    from nodeagent.snapshot.workflow import CreateResult

log = logging.getLogger("nodeagent.snapshot")

DEFAULT_ROOT = "/var/lib/containerd"
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"
DEFAULT_KEEP = 3
ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def register(subparsers: argparse._SubParsersAction) -> None:
    snap = subparsers.add_parser(
        "snapshot", help="EBS snapshots of the prewarmed containerd data volume",
        description="Snapshot the EBS volume holding containerd's root so new nodes boot "
                    "with the hot images on disk; list and prune those snapshots.",
    )
    actions = snap.add_subparsers(dest="snapshot_action", metavar="ACTION", required=True)
    _register_create(actions)
    _register_build(actions)
    _register_list(actions)
    _register_prune(actions)
    _register_hydrate(subparsers)


# ---------------------------------------------------------------------- arguments


def _add_aws_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AWS")
    g.add_argument("--region", help="AWS region (default: AWS_REGION, config, instance "
                                    "metadata)")
    g.add_argument("--endpoint-url", metavar="URL",
                   help="EC2/SSM endpoint (VPC endpoints, tests); AWS_ENDPOINT_URL_EC2 / "
                        "_SSM also work")
    g.add_argument("--max-attempts", type=int, default=10, metavar="N",
                   help="attempts per AWS call, throttling included (adaptive retry mode; "
                        "default 10)")


def _add_create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--containerd-root", default=DEFAULT_ROOT, metavar="DIR",
                   help=f"containerd's root directory, on the volume to snapshot (default "
                        f"{DEFAULT_ROOT}; Bottlerocket: also {DEFAULT_ROOT}, on /dev/xvdb)")
    p.add_argument("--volume-id", metavar="VOL",
                   help="snapshot this EBS volume instead of discovering it from the root's "
                        "block device (the root's filesystem is still frozen)")
    p.add_argument("--instance-id", metavar="ID",
                   help="this instance (default: instance metadata); tags, Xen xvd* lookup")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   help="source node recorded in the tags (default: $NODE_NAME or hostname)")
    p.add_argument("--name", default="", help="Name tag of the snapshot")
    p.add_argument("--ssm-parameter", metavar="NAME",
                   help="publish the completed snapshot id to this SSM parameter (String)")
    p.add_argument("--fast-restore-az", action="append", default=[], metavar="AZ",
                   help="enable Fast Snapshot Restore in AZ (repeatable or comma-separated; "
                        "billed per AZ-hour)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once EC2 has the point in time (state pending)")
    p.add_argument("--timeout", type=float, default=4 * 3600, metavar="S",
                   help="give up waiting for completion after S seconds (default 14400)")
    p.add_argument("--poll-interval", type=float, default=15.0, metavar="S",
                   help="seconds between progress checks (default 15)")
    p.add_argument("--no-freeze", action="store_true",
                   help="do not freeze the filesystem: the snapshot is only crash-consistent")
    p.add_argument("--max-freeze-seconds", type=float, default=30.0, metavar="S",
                   help="a watchdog thaws the filesystem after S seconds whatever happens "
                        "(default 30)")
    p.add_argument("--kubelet-dir", default=DEFAULT_KUBELET_DIR, metavar="DIR",
                   help=f"kubelet's state directory (default {DEFAULT_KUBELET_DIR})")
    p.add_argument("--allow-kubelet-state", action="store_true",
                   help="snapshot even when kubelet's state (its node credentials) is on the "
                        "same volume; new nodes would inherit it")
    p.add_argument("--allow-root-filesystem", action="store_true",
                   help="allow snapshotting (and freezing) the root filesystem")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _add_aws_arguments(p)
    add_address_argument(p)


def _register_create(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "create", help="snapshot the containerd data volume of this node",
        description="Find the EBS volume holding containerd's root, freeze its filesystem "
                    "just for the CreateSnapshot call, tag the snapshot (hot-list digest, "
                    "images, architecture, containerd version, node, time), wait for it "
                    "with progress, then optionally enable Fast Snapshot Restore and publish "
                    "the id to SSM. The images recorded are those nodeagent pinned.",
    )
    _add_create_arguments(p)
    p.set_defaults(func=create_handler)


def _register_build(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "build", help="builder mode: prewarm a hot list, verify, then snapshot",
        description="On a builder node or instance: pull and pin every image of the hot "
                    "list (as `nodeagent prewarm`), verify each one is present and pinned, "
                    "then snapshot as `snapshot create`. Takes every set of the files "
                    "unless --node-labels is given.",
    )
    p.add_argument("-f", "--file", dest="files", action="append", type=Path, required=True,
                   metavar="FILE", help="HotImageSet YAML file or directory (repeatable)")
    p.add_argument("--node-labels", metavar="K=V,...",
                   help="evaluate nodeSelectors against these labels instead of taking all")
    add_engine_arguments(p)
    add_credential_arguments(p)
    _add_create_arguments(p)
    p.set_defaults(func=build_handler)


def _register_list(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("list", help="list nodeagent's snapshots (by tag)",
                           description="Snapshots tagged nodeagent.io/managed-by=nodeagent "
                                       "in this account and region, newest first.")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _add_aws_arguments(p)
    p.set_defaults(func=list_handler)


def _register_prune(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "prune", help="delete old snapshots (dry run unless --yes)",
        description="Keep the newest --keep completed snapshots of each hot-list digest and "
                    "any snapshot that a launch template ($Latest or $Default version) or a "
                    "given SSM parameter names; pending snapshots are kept; older and failed "
                    "ones are deleted. Shows the plan and deletes nothing unless --yes.",
    )
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, metavar="N",
                   help=f"completed snapshots kept per hot-list digest (default {DEFAULT_KEEP})")
    p.add_argument("--ssm-parameter", action="append", default=[], metavar="NAME",
                   help="SSM parameter whose snapshot must be kept (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--yes", action="store_true", help="really delete")
    mode.add_argument("--dry-run", action="store_true",
                      help="only show the plan (the default; for explicit scripts)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _add_aws_arguments(p)
    p.set_defaults(func=prune_handler)


def _register_hydrate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "hydrate", help="read the hot images' blocks after a restore from snapshot",
        description="A volume restored from an EBS snapshot loads each block from S3 on "
                    "first read. Read containerd's metadata, then each hot image's unpacked "
                    "layers and blobs (highest priority first, several files in parallel), "
                    "then optionally the whole device, with a rate limit, so the first pod "
                    "start does not pay that latency. Images: --image and -f, else every "
                    "image nodeagent pinned.",
    )
    p.add_argument("-f", "--file", dest="files", action="append", type=Path, default=[],
                   metavar="FILE", help="HotImageSet file(s): their images and priorities")
    p.add_argument("--node-labels", metavar="K=V,...",
                   help="evaluate the sets' nodeSelectors (default: take every set)")
    p.add_argument("--image", dest="images", action="append", default=[], metavar="REF",
                   help="an image to hydrate (repeatable; earlier ones first, before -f)")
    p.add_argument("--containerd-root", default=DEFAULT_ROOT, metavar="DIR",
                   help=f"containerd's root directory (default {DEFAULT_ROOT})")
    p.add_argument("--host-root", default="", metavar="DIR",
                   help="where the host's / is mounted, when running in a container")
    p.add_argument("--rate", default="", metavar="RATE",
                   help="read at most RATE bytes/s, e.g. 200MiB (default: unlimited)")
    p.add_argument("--workers", type=int, default=4, metavar="N",
                   help="files read in parallel (default 4)")
    p.add_argument("--full-device", nargs="?", const="auto", default=None, metavar="DEVICE",
                   help="afterwards read the whole block device sequentially (default: the "
                        "device mounted at the containerd root)")
    p.add_argument("--progress", choices=["auto", "live", "log"], default="auto")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_address_argument(p)
    p.set_defaults(func=hydrate_handler)


# ---------------------------------------------------------------------- shared helpers


def _aws(args: argparse.Namespace) -> AwsClients:
    from nodeagent.snapshot.ec2 import AwsClients, AwsOptions

    if args.max_attempts < 1:
        raise UsageError(f"--max-attempts must be at least 1 (got {args.max_attempts})")
    return AwsClients(AwsOptions(region=args.region, endpoint_url=args.endpoint_url,
                                 max_attempts=args.max_attempts))


def _zones(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(z.strip() for v in values for z in v.split(",") if z.strip())


def architecture() -> str:
    machine = platform.machine().lower()
    return ARCHITECTURES.get(machine, machine)


def hot_image_names(records: Sequence[Any]) -> list[str]:
    """One display name per image that nodeagent pinned (what the volume is for)."""
    from nodeagent.prewarm import plan

    names = []
    for recs in plan.group_by_target(records).values():
        if any(r.labels.get(plan.PINNED_LABEL) == plan.MARKER_VALUE for r in recs):
            names.append(plan.display_name(recs))
    return sorted(set(names))


def _resolve_volume(args: argparse.Namespace, aws: AwsClients) -> str:
    from nodeagent.snapshot import imds
    from nodeagent.snapshot.ec2 import find_attached_volume
    from nodeagent.snapshot.volume import discover_volume

    if args.volume_id:
        return str(args.volume_id)
    target = discover_volume(args.containerd_root)
    if target.volume_id:
        return target.volume_id
    instance = args.instance_id or imds.instance_id()
    if not instance:
        raise UsageError(f"/dev/{target.device.name} is a Xen device without a volume serial: "
                         "pass --instance-id (instance metadata is unreachable) or --volume-id")
    return find_attached_volume(aws.ec2, instance, target.device.name)


async def _containerd_facts(address: str) -> tuple[str, list[Any]]:
    from nodeagent.containerd.client import ContainerdClient

    async with ContainerdClient(address) as client:
        version = await client.version()
        records = await client.list_image_records()
    return version.version, records


class WaitProgress:
    """Snapshot completion: one redrawn line on a terminal, a log line per poll otherwise."""

    def __init__(self, live: bool) -> None:
        from nodeagent.console import LiveDisplay

        self.display = LiveDisplay(sys.stderr) if live else None
        if self.display:
            self.display.hook_logging()
        self.started = time.monotonic()

    def __call__(self, snapshot_id: str, state: str, progress: str) -> None:
        from nodeagent.console import bar, fmt_duration

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


def _run_create(args: argparse.Namespace, images: list[str], containerd_version: str) -> int:
    from nodeagent.snapshot import imds, workflow
    from nodeagent.snapshot.volume import check_not_root_filesystem, check_volume_contents

    check_not_root_filesystem(args.containerd_root, args.allow_root_filesystem)
    check_volume_contents(args.containerd_root, args.kubelet_dir, args.allow_kubelet_state)
    aws = _aws(args)
    volume_id = _resolve_volume(args, aws)
    meta = T.SnapshotMetadata(
        hotlist_digest=T.hotlist_digest(images), images=tuple(images),
        architecture=architecture(), containerd_version=containerd_version,
        source_node=args.node_name, created_at=datetime.now(UTC),
        source_instance=args.instance_id or imds.instance_id() or "",
    )
    req = workflow.CreateRequest(
        volume_id=volume_id, metadata=meta,
        freeze_path=None if args.no_freeze else args.containerd_root,
        name=args.name, wait=not args.no_wait, timeout_s=args.timeout,
        poll_s=args.poll_interval, max_freeze_s=args.max_freeze_seconds,
        ssm_parameter=args.ssm_parameter, fsr_zones=_zones(args.fast_restore_az),
    )
    workflow.validate(req)
    progress = WaitProgress(live=sys.stderr.isatty())
    try:
        result = workflow.create(aws, req, on_progress=progress)
    finally:
        progress.close()
    _print_create(result, meta, args.output)
    return 0


def _print_create(result: CreateResult, meta: T.SnapshotMetadata, output: str) -> None:
    if output == "json":
        print(json.dumps({
            "snapshotId": result.snapshot_id, "state": result.state,
            "consistency": result.consistency,
            "freezeSeconds": result.freeze_seconds, "waitSeconds": round(result.wait_seconds, 1),
            "hotlistDigest": meta.hotlist_digest, "images": list(meta.images),
            "fastRestoreZones": list(result.fsr_zones), "ssmParameter": result.ssm_parameter,
            "duplicates": result.duplicates,
        }, indent=2))
        return
    print(result.snapshot_id)


# ---------------------------------------------------------------------- handlers


def create_handler(args: argparse.Namespace) -> int:
    version, records = asyncio.run(_containerd_facts(args.containerd_address))
    images = hot_image_names(records)
    if not images:
        log.warning("no image pinned by nodeagent in containerd: the snapshot will not "
                    "record any hot image (run `nodeagent prewarm` or `snapshot build`)")
    return _run_create(args, images, version)


def build_handler(args: argparse.Namespace) -> int:
    from nodeagent.credentials.options import build_keyring
    from nodeagent.prewarm.desired import load_desired

    options = prewarm_options(args)
    desired = load_desired(hotlist_files(args, all_sets=args.node_labels is None))
    if not desired:
        raise UsageError("the hot list selects no image: nothing to build a snapshot of")
    keyring = build_keyring(options.credentials)
    version, images = asyncio.run(_prewarm_and_verify(args, options.engine, desired, keyring))
    return _run_create(args, images, version)


async def _prewarm_and_verify(args: argparse.Namespace, config: Any,
                              desired: list[DesiredImage], keyring: Any) -> tuple[str, list[str]]:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.display import make_reporter
    from nodeagent.prewarm.engine import PrewarmEngine

    reporter = make_reporter(sys.stderr)
    try:
        async with ContainerdClient(args.containerd_address) as client:
            summary = await PrewarmEngine(client, keyring, config, reporter).reconcile(desired)
            reporter.close()
            print(summary.text(), file=sys.stderr)
            problems = await verify_present_and_pinned(client, desired)
            if problems:
                raise NodeagentError("not snapshotting: " + "; ".join(problems))
            version = await client.version()
            records = await client.list_image_records()
    finally:
        reporter.close()
    return version.version, hot_image_names(records)


async def verify_present_and_pinned(client: ContainerdClient,
                                    desired: Sequence[DesiredImage]) -> list[str]:
    """Problems with the desired images on disk (absent, or not pinned when pin: true)."""
    from nodeagent.prewarm import plan

    records = await client.list_image_records()
    groups = plan.group_by_target(records)
    problems = []
    for image in desired:
        target = plan.find_target(image.reference, records)
        if target is None:
            problems.append(f"{image.reference} is not in containerd")
        elif image.pin and not plan.is_pinned(groups[target]):
            problems.append(f"{image.reference} is present but not pinned")
    return problems


def list_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot import workflow

    snapshots = workflow.list_ours(_aws(args))
    if args.output == "json":
        print(json.dumps([snapshot_json(s) for s in snapshots], indent=2))
    else:
        print(snapshot_table(snapshots))
    return 0


def prune_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot import workflow

    result = workflow.prune(_aws(args), args.keep, args.ssm_parameter, execute=args.yes)
    if args.output == "json":
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
    return 1 if result.failed else 0


# ---------------------------------------------------------------------- output


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


# ---------------------------------------------------------------------- hydrate

def hydrate_images(args: argparse.Namespace) -> list[Any] | None:
    """Images from --image then -f (priorities kept above every -f one), or None: pinned."""
    from nodeagent.snapshot.hydrate import HydrateImage

    images: list[HydrateImage] = []
    desired: list[DesiredImage] = []
    if args.files:
        from nodeagent.prewarm.desired import load_desired

        desired = load_desired(hotlist_files(args, all_sets=args.node_labels is None))
    top = max((d.priority for d in desired), default=0)
    count = len(args.images)
    images += [HydrateImage(ref, top + count - i) for i, ref in enumerate(args.images)]
    images += [HydrateImage(str(d.reference), d.priority) for d in desired]
    return images or None


async def _pinned_images(client: ContainerdClient) -> list[Any]:
    from nodeagent.prewarm import plan
    from nodeagent.snapshot.hydrate import HydrateImage

    records = await client.list_image_records()
    images = []
    for target, recs in sorted(plan.group_by_target(records).items(),
                               key=lambda kv: plan.display_name(kv[1])):
        if any(r.labels.get(plan.PINNED_LABEL) == plan.MARKER_VALUE for r in recs):
            images.append(HydrateImage(plan.display_name(recs), 0, target))
    return images


def hydrate_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot.hydrate import HydrateOptions
    from nodeagent.snapshot.volume import mounted_device

    rate = parse_rate(args.rate)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {args.workers})")
    images = hydrate_images(args)
    device = args.full_device
    if device == "auto":
        device = mounted_device(args.host_root + args.containerd_root
                                if args.host_root else args.containerd_root)
    options = HydrateOptions(containerd_root=args.containerd_root, host_root=args.host_root,
                             workers=args.workers, rate_bps=rate, full_device=device)
    live = {"auto": sys.stderr.isatty(), "live": True, "log": False}[args.progress]
    report = asyncio.run(_hydrate(args.containerd_address, images, options, live))
    _print_hydrate(report, args.output)
    return 1 if report.problems or report.hot.errors else 0


async def _hydrate(address: str, images: list[Any] | None, options: Any, live: bool) -> Any:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.snapshot.hydrate import hydrate
    from nodeagent.snapshot.hydrate_progress import make_progress

    progress = make_progress(live)
    try:
        async with ContainerdClient(address) as client:
            if images is None:
                images = await _pinned_images(client)
                if not images:
                    log.warning("no image pinned by nodeagent: only containerd's metadata "
                                "is read (pass --image or -f)")
            return await hydrate(client, images, options, progress)
    finally:
        progress.close()


def _print_hydrate(report: Any, output: str) -> None:
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
