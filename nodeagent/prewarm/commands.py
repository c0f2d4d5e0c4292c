"""`nodeagent prewarm` and `nodeagent images`, and the pull flags every prewarming command
shares (`snapshot build` and `agent` add them with ``add_engine_arguments`` and the
credential flags, and read them back with ``prewarm_options``).

Flags become typed options here (PrewarmOptions, HotListFiles, PrewarmRun); the run
itself is prewarm/run.py, the `images` rows prewarm/inventory.py. Imports only light
modules at import time; grpc, prometheus-client and the engine load inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.containerd.client import add_address_argument
from nodeagent.credentials.commands import add_credential_arguments, credential_options
from nodeagent.errors import UsageError
from nodeagent.inputs import env_default, listen_port
from nodeagent.prewarm.config import (
    CONCURRENCY_RANGE,
    DEFAULT_CONCURRENCY,
    DEFAULT_FETCH_CHUNK_MIB,
    DEFAULT_FETCH_CONNECTIONS,
    DEFAULT_FETCH_CONNECTIONS_PER_BLOB,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    FETCH_CHUNK_MIB_ENV,
    FETCH_CHUNK_MIB_RANGE,
    FETCH_CONNECTIONS_ENV,
    FETCH_CONNECTIONS_PER_BLOB_ENV,
    FETCH_CONNECTIONS_PER_BLOB_RANGE,
    FETCH_CONNECTIONS_RANGE,
    MAX_RETRIES_RANGE,
    PULL_PATH_ENV,
    PULL_PATHS,
    STALL_TIMEOUT_RANGE,
    EngineConfig,
    PrewarmOptions,
    default_pull_path,
)
from nodeagent.prewarm.diskguard import HIGH_WATER_ENV, HIGH_WATER_RANGE, high_water_override

if TYPE_CHECKING:
    from nodeagent.prewarm.desired import DesiredImage, HotListFiles

DEFAULT_HOSTS_DIR = Path("/etc/containerd/certs.d")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_prewarm(subparsers)
    _register_images(subparsers)


def _register_prewarm(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prewarm",
        help="pull hot images into containerd, pin them against kubelet GC",
        description=(
            "Pull the images of HotImageSet files into containerd (nodeagent's fast pull "
            "where the node allows it, else CRI PullImage), highest priority first, with "
            "live progress; pin them so kubelet image GC keeps them; "
            "unpin images nodeagent pinned that are no longer listed. Exit 0 when every "
            "image is present (and, with --remove-unlisted, every removal was done), 1 "
            "otherwise (with a summary of what failed and why)."
        ),
    )
    p.add_argument("-f", "--file", dest="files", action="append", type=Path, required=True,
                   metavar="FILE", help="HotImageSet YAML file or directory (repeatable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="pull what is missing, then exit (default)")
    mode.add_argument("--watch-file", action="store_true",
                      help="keep running: re-read the files when they change and pull "
                           "again any hot image deleted from containerd (self-heal)")
    add_engine_arguments(p)
    add_credential_arguments(p)
    p.add_argument("--node-labels", metavar="K=V,...",
                   help="this node's labels, to evaluate each set's nodeSelector; without it "
                        "only sets with no nodeSelector apply")
    p.add_argument("--all-sets", action="store_true",
                   help="ignore nodeSelectors: take every set (e.g. on a snapshot builder)")
    p.add_argument("--remove-unlisted", action="store_true",
                   help="remove images nodeagent pulled or pinned that are no longer listed "
                        "(never touches any other image)")
    p.add_argument("--metrics-port", type=listen_port, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz on PORT, 1-65535 "
                        "(0: any free port, logged)")
    p.add_argument("--progress", choices=["auto", "live", "log"], default="auto",
                   help="live bars (default on a terminal) or JSON/text log lines")
    add_address_argument(p)
    p.set_defaults(func=prewarm_handler)


def _register_images(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "images",
        help="list the images cached in containerd (pinned? hot?)",
        description="List containerd's CRI images (namespace k8s.io): references, digest, "
                    "size, whether nodeagent pinned it, whether containerd reports it pinned "
                    "and, with -f, whether a hot list names it.",
    )
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("-f", "--file", dest="files", action="append", type=Path, default=[],
                   metavar="FILE", help="hot list(s): mark the images they name (all sets)")
    add_address_argument(p)
    p.set_defaults(func=images_handler)


# ---------------------------------------------------------------------- shared pull flags


def add_engine_arguments(p: argparse.ArgumentParser, *, hosts_dir: str | None = None) -> None:
    """The engine's knobs, declared once for `prewarm`, `snapshot build` and `agent`.

    ``hosts_dir``: a default for --hosts-dir (the agent's comes from its environment).
    """
    p.add_argument("--concurrency", type=CONCURRENCY_RANGE, default=DEFAULT_CONCURRENCY,
                   metavar="N", help=f"images pulled at once, {CONCURRENCY_RANGE} (default "
                                     f"{DEFAULT_CONCURRENCY})")
    p.add_argument("--stall-timeout", type=STALL_TIMEOUT_RANGE,
                   default=DEFAULT_STALL_TIMEOUT_S, metavar="S",
                   help=f"cancel and retry a pull after S seconds without a new byte, S in "
                        f"{STALL_TIMEOUT_RANGE}; there is no overall timeout (default "
                        f"{DEFAULT_STALL_TIMEOUT_S:g})")
    p.add_argument("--max-retries", type=MAX_RETRIES_RANGE, default=DEFAULT_MAX_RETRIES,
                   metavar="N", help=f"retries per image, with exponential backoff, "
                                     f"{MAX_RETRIES_RANGE} (default {DEFAULT_MAX_RETRIES})")
    p.add_argument("--high-water", type=HIGH_WATER_RANGE, default=None,
                   metavar="PERCENT", help="skip a pull that would fill the image filesystem "
                   f"past PERCENT, in {HIGH_WATER_RANGE} (env {HIGH_WATER_ENV}; default 80; "
                   "kubelet image GC starts at 85; 100 disables the check)")
    p.add_argument("--hosts-dir", type=Path, default=hosts_dir, metavar="DIR",
                   help="containerd registry hosts.toml directory (registry mirrors), used to "
                        f"read manifests for progress (default {DEFAULT_HOSTS_DIR} when it "
                        "exists)")
    p.add_argument("--no-unpin", action="store_true",
                   help="do not unpin images nodeagent pinned that are no longer listed")
    p.add_argument("--pull-path", default=None, metavar="|".join(PULL_PATHS),
                   help="auto: nodeagent's fast pull where the node allows it, else CRI "
                        "PullImage, per image; fast: only the fast pull; cri: only CRI "
                        f"(env {PULL_PATH_ENV}; default auto)")
    p.add_argument("--fetch-chunk-mib", type=FETCH_CHUNK_MIB_RANGE,
                   default=env_default(FETCH_CHUNK_MIB_ENV, str(DEFAULT_FETCH_CHUNK_MIB)),
                   metavar="N",
                   help=f"fast pull: size of each HTTP range request, {FETCH_CHUNK_MIB_RANGE} "
                        f"MiB (env {FETCH_CHUNK_MIB_ENV}; default {DEFAULT_FETCH_CHUNK_MIB})")
    p.add_argument("--fetch-connections-per-blob", type=FETCH_CONNECTIONS_PER_BLOB_RANGE,
                   default=env_default(FETCH_CONNECTIONS_PER_BLOB_ENV,
                                       str(DEFAULT_FETCH_CONNECTIONS_PER_BLOB)), metavar="N",
                   help="fast pull: range requests in flight for one blob, "
                        f"{FETCH_CONNECTIONS_PER_BLOB_RANGE} (env "
                        f"{FETCH_CONNECTIONS_PER_BLOB_ENV}; default "
                        f"{DEFAULT_FETCH_CONNECTIONS_PER_BLOB})")
    p.add_argument("--fetch-connections", type=FETCH_CONNECTIONS_RANGE,
                   default=env_default(FETCH_CONNECTIONS_ENV, str(DEFAULT_FETCH_CONNECTIONS)),
                   metavar="N",
                   help=f"fast pull: connections to registries for the whole node, "
                        f"{FETCH_CONNECTIONS_RANGE} (env {FETCH_CONNECTIONS_ENV}; default "
                        f"{DEFAULT_FETCH_CONNECTIONS})")


def prewarm_options(args: argparse.Namespace, *, provider_optional: bool = False,
                    **engine: Any) -> PrewarmOptions:
    """The shared pull flags as PrewarmOptions; ``engine``: EngineConfig fields a command
    sets itself (--remove-unlisted of `prewarm`, --host-root of `agent`)."""
    hosts_dir = args.hosts_dir
    if hosts_dir is None and DEFAULT_HOSTS_DIR.is_dir():
        hosts_dir = DEFAULT_HOSTS_DIR
    config = EngineConfig(
        concurrency=args.concurrency, stall_timeout_s=args.stall_timeout,
        max_retries=args.max_retries, **high_water_override(args.high_water),
        unpin_removed=not args.no_unpin, hosts_dir=hosts_dir,
        pull_path=(args.pull_path or default_pull_path()).strip().lower(),
        fetch_chunk_mib=args.fetch_chunk_mib,
        fetch_connections_per_blob=args.fetch_connections_per_blob,
        fetch_connections=args.fetch_connections, **engine,
    )
    return PrewarmOptions(config, credential_options(args, provider_optional=provider_optional))


def parse_node_labels(text: str | None) -> dict[str, str] | None:
    """"k=v,k2=v2" -> dict; None when not given."""
    if text is None:
        return None
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--node-labels: {item!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def hotlist_files(args: argparse.Namespace, all_sets: bool) -> HotListFiles:
    """-f and --node-labels (of `prewarm`, `snapshot build` and `hydrate`)."""
    from nodeagent.prewarm.desired import HotListFiles

    return HotListFiles(tuple(args.files), parse_node_labels(args.node_labels), all_sets)


# ---------------------------------------------------------------------- handlers


def prewarm_handler(args: argparse.Namespace) -> int:
    from nodeagent.credentials.options import build_keyring
    from nodeagent.prewarm.desired import load_desired
    from nodeagent.prewarm.run import PrewarmRun, run_prewarm

    if args.all_sets and args.node_labels is not None:  # one of them would be dropped
        raise UsageError("--all-sets and --node-labels exclude each other")
    options = prewarm_options(args, remove_unlisted=args.remove_unlisted)  # bad flags first
    run = PrewarmRun(
        hotlist=hotlist_files(args, args.all_sets), prewarm=options,
        containerd_address=args.containerd_address, watch=args.watch_file,
        metrics_port=args.metrics_port,
        live={"auto": None, "live": True, "log": False}[args.progress],
    )
    desired = load_desired(run.hotlist)  # an invalid hot list fails before anything is pulled
    keyring = build_keyring(options.credentials)
    return asyncio.run(run_prewarm(run, desired, keyring))


def images_handler(args: argparse.Namespace) -> int:
    from nodeagent.prewarm.inventory import images_table, list_images

    hot: list[DesiredImage] | None = None
    if args.files:
        from nodeagent.api.hotimageset import HotListError, load_hotimagesets
        from nodeagent.prewarm.desired import select_for_node

        try:
            sets = load_hotimagesets(args.files)
        except HotListError as exc:
            raise exc.saying("no image was listed") from None
        hot = select_for_node(sets, None, all_sets=True)
    rows = asyncio.run(list_images(args.containerd_address, hot))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(images_table(rows))
    return 0
