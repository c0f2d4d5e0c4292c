"""`nodeagent snapshot create|build|list|prune` and `nodeagent hydrate`: flags to options.

The work is elsewhere in the package: create.py (checks, volume, tags, workflow),
build.py (prewarm and verify first), workflow.py (list, prune), hydrate.py, and what is
printed, output.py. `snapshot build` takes prewarm's pull and credential flags.
Standard library and light nodeagent modules only at import time: boto3, grpc and the
prewarm engine load inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.containerd.client import add_address_argument
from nodeagent.credentials.commands import add_credential_arguments
from nodeagent.errors import UsageError
from nodeagent.inputs import number, system_tree
from nodeagent.prewarm.commands import add_engine_arguments, hotlist_files, prewarm_options
from nodeagent.snapshot import aws_names, limits
from nodeagent.snapshot.hydrate_plan import CONTAINERD_ROOT
from nodeagent.snapshot.hydrate_read import parse_rate

if TYPE_CHECKING:
    from nodeagent.models.desired import DesiredModels
    from nodeagent.models.options import SyncOptions
    from nodeagent.prewarm.config import PrewarmOptions
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.snapshot.create import CreateOptions
    from nodeagent.snapshot.ec2 import AwsOptions

log = logging.getLogger("nodeagent.snapshot")

DEFAULT_ROOT = CONTAINERD_ROOT
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"
DEFAULT_KEEP = 3


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
    g.add_argument("--region", type=aws_names.region,
                   help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the AWS config "
                        "file, instance metadata)")
    g.add_argument("--endpoint-url", metavar="URL", type=aws_names.endpoint_url,
                   help="EC2/SSM endpoint (VPC endpoints, tests); AWS_ENDPOINT_URL_EC2 / "
                        "_SSM also work")
    g.add_argument("--max-attempts", type=number(int, *limits.MAX_ATTEMPTS), default=10,
                   metavar="N", help="attempts per AWS call, throttling included (adaptive "
                                     "retry mode; 1-50, default 10)")


def _add_create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--containerd-root", default=DEFAULT_ROOT, metavar="DIR",
                   help=f"containerd's root directory, on the volume to snapshot (default "
                        f"{DEFAULT_ROOT}; Bottlerocket: also {DEFAULT_ROOT}, on /dev/xvdb)")
    p.add_argument("--volume-id", metavar="VOL", type=aws_names.volume_id,
                   help="snapshot this EBS volume instead of discovering it from the root's "
                        "block device (the root's filesystem is still frozen)")
    p.add_argument("--instance-id", metavar="ID", type=aws_names.instance_id,
                   help="this instance (default: instance metadata); tags, Xen xvd* lookup")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                   type=aws_names.tag_value,
                   help="source node recorded in the tags (default: $NODE_NAME or hostname)")
    p.add_argument("--name", default="", type=aws_names.tag_value,
                   help="Name tag of the snapshot (at most 256 characters)")
    p.add_argument("--ssm-parameter", metavar="NAME", type=aws_names.ssm_parameter,
                   help="publish the completed snapshot id to this SSM parameter (String)")
    p.add_argument("--fast-restore-az", action="append", default=[], metavar="AZ",
                   type=aws_names.zones,
                   help="enable Fast Snapshot Restore in AZ, a zone name (us-east-1a) or ID "
                        "(use1-az1), checked against the region's zones before anything is "
                        "created (repeatable or comma-separated; billed per AZ-hour)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once EC2 has the point in time (state pending)")
    p.add_argument("--timeout", type=number(float, *limits.TIMEOUT_S, low_open=True),
                   default=4 * 3600, metavar="S",
                   help="give up waiting for completion after S seconds (0 < S <= 604800, "
                        "7 days; default 14400)")
    p.add_argument("--poll-interval", type=number(float, *limits.POLL_S), default=15.0,
                   metavar="S", help="seconds between progress checks (0.01-3600, default 15)")
    p.add_argument("--no-freeze", action="store_true",
                   help="do not freeze the filesystem: the snapshot is only crash-consistent")
    p.add_argument("--max-freeze-seconds", default=30.0, metavar="S",
                   type=number(float, *limits.MAX_FREEZE_S, low_open=True),
                   help="a watchdog thaws the filesystem after S seconds whatever happens "
                        "(0 < S <= 300, default 30)")
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
    p.add_argument("--models-file", dest="models_files", action="append", type=Path,
                   default=[], metavar="FILE",
                   help="HotModelSet file or directory (repeatable): also download these "
                        "models into the model cache, which must be on the same volume")
    p.add_argument("--model-cache-dir", metavar="DIR",
                   help="the model cache for --models-file (default as `models prewarm`; "
                        "when the volume is mounted at containerd's root: "
                        "/var/lib/containerd/nodeagent-models)")
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
    p.add_argument("--keep", type=number(int, *limits.KEEP), default=DEFAULT_KEEP,
                   metavar="N", help=f"completed snapshots kept per hot-list digest (1-1000, "
                                     f"default {DEFAULT_KEEP})")
    p.add_argument("--ssm-parameter", action="append", default=[], metavar="NAME",
                   type=aws_names.ssm_parameter,
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
                   help="read at most RATE bytes/s, e.g. 200MiB, from 64KiB to 1TiB "
                        "(default: unlimited)")
    p.add_argument("--workers", type=number(int, *limits.WORKERS), default=4, metavar="N",
                   help="files read in parallel (1-64, default 4)")
    p.add_argument("--full-device", nargs="?", const="auto", default=None, metavar="DEVICE",
                   help="afterwards read the whole block device sequentially (default: the "
                        "device mounted at the containerd root)")
    p.add_argument("--progress", choices=["auto", "live", "log"], default="auto")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_address_argument(p)
    p.set_defaults(func=hydrate_handler)


# ---------------------------------------------------------------------- options


def aws_options(args: argparse.Namespace) -> AwsOptions:
    from nodeagent.snapshot.ec2 import AwsOptions

    return AwsOptions(region=args.region, endpoint_url=args.endpoint_url,
                      max_attempts=args.max_attempts)


def create_options(args: argparse.Namespace) -> CreateOptions:
    from nodeagent.snapshot.create import CreateOptions

    zones = tuple(dict.fromkeys(z for given in args.fast_restore_az for z in given))
    refused = system_tree(os.path.abspath(args.containerd_root))
    if refused:  # the filesystem there would be frozen and snapshotted
        raise UsageError(f"--containerd-root {args.containerd_root}: inside the system tree "
                         f"{refused}, not a containerd data volume")
    return CreateOptions(
        node_name=args.node_name, containerd_root=args.containerd_root,
        volume_id=args.volume_id, instance_id=args.instance_id, name=args.name,
        ssm_parameter=args.ssm_parameter, fsr_zones=zones, wait=not args.no_wait,
        timeout_s=args.timeout, poll_s=args.poll_interval, freeze=not args.no_freeze,
        max_freeze_s=args.max_freeze_seconds, kubelet_dir=args.kubelet_dir,
        allow_kubelet_state=args.allow_kubelet_state,
        allow_root_filesystem=args.allow_root_filesystem, aws=aws_options(args),
    )


# ---------------------------------------------------------------------- handlers


def create_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot.create import containerd_facts

    options = create_options(args)
    version, images = asyncio.run(containerd_facts(args.containerd_address))
    if not images:
        log.warning("no image pinned by nodeagent in containerd: the snapshot will not "
                    "record any hot image (run `nodeagent prewarm` or `snapshot build`)")
    return _create(options, images, version, args.output)


def build_handler(args: argparse.Namespace) -> int:
    from nodeagent.credentials.options import build_keyring
    from nodeagent.prewarm.desired import load_desired
    from nodeagent.snapshot.build import prewarm_and_verify, sync_models_and_verify
    from nodeagent.snapshot.create import preflight

    options = create_options(args)
    prewarm = prewarm_options(args)
    desired = load_desired(hotlist_files(args, all_sets=args.node_labels is None))
    if not desired:
        raise UsageError("the hot list selects no image: nothing to build a snapshot of")
    models = _build_models(args, prewarm) if args.models_files else None
    if models is None and args.model_cache_dir:
        raise UsageError("--model-cache-dir needs --models-file (the models to put in it)")
    preflight(options)  # before the prewarm: a typo must not cost a whole build
    keyring = build_keyring(prewarm.credentials)
    version, images = asyncio.run(prewarm_and_verify(args.containerd_address, prewarm.engine,
                                                     desired, keyring))
    names = sync_models_and_verify(*models) if models else []
    return _create(options, images, version, args.output, names)


def _build_models(args: argparse.Namespace, prewarm: PrewarmOptions
                  ) -> tuple[DesiredModels, SyncOptions]:
    """The models of `snapshot build`, every check made before anything is downloaded:
    the list, the cache dir, and that the cache is on the volume being snapshotted."""
    from nodeagent.models.desired import ModelListFiles, load_desired_models
    from nodeagent.models.layout import resolve_cache_dir, validate_cache_dir
    from nodeagent.models.options import SyncOptions
    from nodeagent.prewarm.commands import parse_node_labels
    from nodeagent.snapshot.build import check_cache_on_volume

    cache = (validate_cache_dir(args.model_cache_dir, "--model-cache-dir")
             if args.model_cache_dir else resolve_cache_dir(None))
    check_cache_on_volume(cache, args.containerd_root)
    desired = load_desired_models(ModelListFiles(
        tuple(args.models_files), parse_node_labels(args.node_labels),
        all_sets=args.node_labels is None))
    if not desired.models:
        raise UsageError("--models-file selects no model: leave it out to snapshot images only")
    engine = prewarm.engine
    return desired, SyncOptions(cache_dir=str(cache), high_water_percent=engine.high_water_percent,
                                hosts_dir=engine.hosts_dir, credentials=prewarm.credentials)


def _create(options: CreateOptions, images: list[str], version: str, output: str,
            models: list[str] | None = None) -> int:
    from nodeagent.snapshot.create import create_snapshot
    from nodeagent.snapshot.output import WaitProgress, print_create

    progress = WaitProgress(live=sys.stderr.isatty())
    try:
        result, meta = create_snapshot(options, images, version, on_progress=progress,
                                       models=models or ())
    finally:
        progress.close()
    print_create(result, meta, output)
    if result.complete:
        return 0
    return 130 if result.interrupted else 1


def list_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot import workflow
    from nodeagent.snapshot.ec2 import AwsClients
    from nodeagent.snapshot.output import snapshot_json, snapshot_table

    snapshots = workflow.list_ours(AwsClients(aws_options(args)))
    if args.output == "json":
        print(json.dumps([snapshot_json(s) for s in snapshots], indent=2))
    else:
        print(snapshot_table(snapshots))
    return 0


def prune_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot import workflow
    from nodeagent.snapshot.ec2 import AwsClients
    from nodeagent.snapshot.output import print_prune

    result = workflow.prune(AwsClients(aws_options(args)), args.keep, args.ssm_parameter,
                            execute=args.yes)
    print_prune(result, args.output)
    return 1 if result.failed else 0


def hydrate_handler(args: argparse.Namespace) -> int:
    from nodeagent.snapshot.hydrate import (
        HydrateOptions,
        check_block_device,
        device_of_root,
        images_to_hydrate,
        run_hydrate,
    )
    from nodeagent.snapshot.output import print_hydrate

    rate = parse_rate(args.rate)
    device = args.full_device
    if device not in (None, "auto"):
        check_block_device(device, "--full-device")
    desired: list[DesiredImage] = []
    if args.files:
        from nodeagent.prewarm.desired import load_desired

        desired = load_desired(hotlist_files(args, all_sets=args.node_labels is None))
    images = images_to_hydrate(args.images, desired)
    if device == "auto":
        device = device_of_root(args.containerd_root, args.host_root)
    options = HydrateOptions(containerd_root=args.containerd_root, host_root=args.host_root,
                             workers=args.workers, rate_bps=rate, full_device=device)
    live = {"auto": sys.stderr.isatty(), "live": True, "log": False}[args.progress]
    report = asyncio.run(run_hydrate(args.containerd_address, images, options, live))
    print_hydrate(report, args.output)
    return 1 if report.problems or report.hot.errors else 0
