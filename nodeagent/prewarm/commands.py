"""`nodeagent prewarm` and `nodeagent images`.

Imports only light modules at import time; grpc, prometheus-client and the engine load
inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.console import fmt_bytes
from nodeagent.containerd.client import add_address_argument
from nodeagent.errors import UsageError
from nodeagent.log import fields, redact_text
from nodeagent.prewarm.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    EngineConfig,
)
from nodeagent.prewarm.diskguard import HIGH_WATER_ENV, high_water_override

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.auth import Keyring
    from nodeagent.prewarm.desired import DesiredImage, HotListFiles

log = logging.getLogger("nodeagent.prewarm")

DEFAULT_HOSTS_DIR = Path("/etc/containerd/certs.d")
FILE_POLL_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_prewarm(subparsers)
    _register_images(subparsers)


def _register_prewarm(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prewarm",
        help="pull hot images into containerd (CRI), pin them against kubelet GC",
        description=(
            "Pull the images of HotImageSet files into containerd through CRI, highest "
            "priority first, with live progress; pin them so kubelet image GC keeps them; "
            "unpin images nodeagent pinned that are no longer listed. Exit 0 when every "
            "image is present, 1 otherwise (with a summary of what failed and why)."
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
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"images pulled at once (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT_S,
                   metavar="S", help="cancel and retry a pull after S seconds without a new "
                   f"byte; there is no overall timeout (default {DEFAULT_STALL_TIMEOUT_S:g})")
    p.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES, metavar="N",
                   help=f"retries per image, with exponential backoff (default "
                        f"{DEFAULT_MAX_RETRIES})")
    p.add_argument("--high-water", type=float, default=None,
                   metavar="PERCENT", help="skip a pull that would fill the image filesystem "
                   f"past PERCENT (env {HIGH_WATER_ENV}; default 80; kubelet image GC "
                   "starts at 85; 100 disables the check)")
    p.add_argument("--docker-config", action="append", type=Path, default=[], metavar="FILE",
                   help="registry credentials: docker config.json / .dockerconfigjson "
                        "(repeatable)")
    p.add_argument("--credential-provider-config", type=Path, metavar="FILE",
                   help="kubelet CredentialProviderConfig (e.g. "
                        "/etc/eks/image-credential-provider/config.json)")
    p.add_argument("--credential-provider-bin-dir", type=Path, metavar="DIR",
                   help="directory of the credential provider plugins")
    p.add_argument("--node-labels", metavar="K=V,...",
                   help="this node's labels, to evaluate each set's nodeSelector; without it "
                        "only sets with no nodeSelector apply")
    p.add_argument("--all-sets", action="store_true",
                   help="ignore nodeSelectors: take every set (e.g. on a snapshot builder)")
    p.add_argument("--no-unpin", action="store_true",
                   help="do not unpin images nodeagent pinned that are no longer listed")
    p.add_argument("--remove-unlisted", action="store_true",
                   help="remove images nodeagent pulled or pinned that are no longer listed "
                        "(never touches any other image)")
    p.add_argument("--hosts-dir", type=Path, metavar="DIR",
                   help="containerd registry hosts.toml directory, used to read manifests "
                        f"for progress (default {DEFAULT_HOSTS_DIR} when it exists)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz on PORT")
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


# ---------------------------------------------------------------------- prewarm


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


def build_keyring(args: argparse.Namespace) -> Keyring | None:
    from nodeagent.prewarm import auth

    rings: list[Any] = [auth.DockerConfigKeyring.from_file(p) for p in args.docker_config]
    config, bin_dir = args.credential_provider_config, args.credential_provider_bin_dir
    if (config is None) != (bin_dir is None):
        raise UsageError("--credential-provider-config and --credential-provider-bin-dir "
                         "go together (like kubelet's --image-credential-provider-*)")
    if config is not None:
        rings.append(auth.CredentialProviderKeyring(config, bin_dir))
    if not rings:
        return None
    return rings[0] if len(rings) == 1 else auth.ChainKeyring(rings)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    hosts_dir = args.hosts_dir
    if hosts_dir is None and DEFAULT_HOSTS_DIR.is_dir():
        hosts_dir = DEFAULT_HOSTS_DIR
    return EngineConfig(
        concurrency=args.concurrency, stall_timeout_s=args.stall_timeout,
        max_retries=args.max_retries, **high_water_override(args.high_water),
        unpin_removed=not args.no_unpin, remove_unlisted=args.remove_unlisted,
        hosts_dir=hosts_dir,
    )


def hotlist_files(args: argparse.Namespace, all_sets: bool) -> HotListFiles:
    """The -f/--node-labels pair of `prewarm`, `snapshot build` and `hydrate`."""
    from nodeagent.prewarm.desired import HotListFiles

    return HotListFiles(tuple(args.files), parse_node_labels(args.node_labels), all_sets)


def prewarm_handler(args: argparse.Namespace) -> int:
    from nodeagent.prewarm.desired import load_desired

    config = engine_config(args)  # bad flags fail before anything else
    source = hotlist_files(args, args.all_sets)
    desired = load_desired(source)  # an invalid hot list fails before anything is pulled
    keyring = build_keyring(args)
    return asyncio.run(_prewarm(args, config, source, desired, keyring))


async def _prewarm(
    args: argparse.Namespace, config: EngineConfig, source: HotListFiles,
    desired: list[DesiredImage], keyring: Keyring | None,
) -> int:
    from nodeagent import metrics
    from nodeagent.console import make_reporter
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.engine import PrewarmEngine

    health = metrics.HealthState()
    server = metrics.serve(args.metrics_port, health) if args.metrics_port is not None else None
    if server:
        log.info("serving metrics", extra=fields(port=server.port))
    live = {"auto": None, "live": True, "log": False}[args.progress]
    reporter = make_reporter(sys.stderr, live)
    try:
        async with ContainerdClient(args.containerd_address) as client:
            engine = PrewarmEngine(client, keyring, config, reporter)
            if not args.watch_file:
                summary = await engine.reconcile(desired)
                reporter.close()
                health.set_ready(summary.ok, "all hot images present" if summary.ok
                                 else "some hot images missing")
                print(summary.text())
                return 0 if summary.ok else 1
            return await _watch(source, engine, desired, health, client)
    finally:
        reporter.close()
        if server:
            server.close()


async def _watch(
    source: HotListFiles, engine: Any, desired: list[DesiredImage], health: Any,
    client: ContainerdClient,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine.set_desired(desired)
    health.set_ready(True, "watching")
    watcher = asyncio.create_task(_watch_files(source, engine.set_desired, stop))
    try:
        await engine.run(stop)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    from nodeagent.prewarm.engine import PrewarmSummary

    summary = PrewarmSummary(list(engine.snapshot().values()))
    print(summary.text())
    return 0


def _mtimes(paths: Sequence[Path]) -> dict[str, float | None]:
    """Modification times of the files and directory entries behind ``paths``."""
    out: dict[str, float | None] = {}
    for path in paths:
        items = sorted(path.iterdir()) if path.is_dir() else [path]
        for item in [path, *items]:
            try:
                out[str(item)] = item.stat().st_mtime_ns
            except OSError:
                out[str(item)] = None
    return out


async def _watch_files(
    source: HotListFiles, set_desired: Callable[[list[DesiredImage]], None],
    stop: asyncio.Event,
) -> None:
    """Re-read the hot lists when they change; keep the last good list on errors."""
    from nodeagent.errors import NodeagentError
    from nodeagent.prewarm.desired import load_desired

    seen = _mtimes(source.paths)
    while not stop.is_set():
        await asyncio.sleep(FILE_POLL_S)
        now = _mtimes(source.paths)
        if now == seen:
            continue
        seen = now
        try:
            desired = load_desired(source)
        except NodeagentError as exc:
            log.error("hot list changed but is invalid; keeping the previous list",
                      extra=fields(error=redact_text(str(exc))))
            continue
        log.info("hot list changed", extra=fields(images=len(desired)))
        set_desired(desired)


# ---------------------------------------------------------------------- images


def images_handler(args: argparse.Namespace) -> int:
    hot: list[DesiredImage] | None = None
    if args.files:
        from nodeagent.api.hotimageset import load_hotimagesets
        from nodeagent.prewarm.desired import select_for_node

        hot = select_for_node(load_hotimagesets(args.files), None, all_sets=True)
    rows = asyncio.run(_list_images(args.containerd_address, hot))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(images_table(rows))
    return 0


async def _list_images(address: str, hot: list[DesiredImage] | None) -> list[dict[str, Any]]:
    from nodeagent.containerd.client import ContainerdClient

    async with ContainerdClient(address) as client:
        records = await client.list_image_records()
        cri = await client.list_images()
    return image_rows(records, cri, hot)


def image_rows(records: Sequence[Any], cri: Sequence[Any],
               hot: Sequence[DesiredImage] | None) -> list[dict[str, Any]]:
    """One row per image (records sharing a target digest), enriched with CRI's view."""
    from nodeagent.prewarm import plan

    by_id = {c.id: c for c in cri}
    hot_targets = None
    if hot is not None:
        hot_targets = {plan.find_target(d.reference, records) for d in hot} - {None}
    rows = []
    for target, recs in sorted(plan.group_by_target(records).items(),
                               key=lambda kv: plan.display_name(kv[1])):
        names = sorted(r.name for r in recs)
        image_id = next((n for n in names if n.startswith("sha256:")), None)
        info = by_id.get(image_id) if image_id else None
        labels = [r.labels for r in recs]
        rows.append({
            "image": plan.display_name(recs),
            "references": [n for n in names if not n.startswith("sha256:")],
            "id": image_id,
            "digest": target,
            "size": info.size if info else None,
            "pinned_by_nodeagent": any(lb.get(plan.PINNED_LABEL) == "true" for lb in labels),
            "pin_label": plan.is_pinned(recs),
            "cri_pinned": info.pinned if info else None,
            "pulled_by_nodeagent": any(plan.is_ours(r) for r in recs),
            "hot": None if hot_targets is None else target in hot_targets,
        })
    return rows


def images_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def yes(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "no")

    def pinned(row: Mapping[str, Any]) -> str:
        if row["pinned_by_nodeagent"]:
            return "nodeagent"
        return "other" if row["pin_label"] else "no"

    header = ("IMAGE", "DIGEST", "SIZE", "PINNED", "CRI-PINNED", "HOT")
    table = [header] + [
        (r["image"], r["digest"][:19], fmt_bytes(r["size"]) if r["size"] is not None else "-",
         pinned(r), yes(r["cri_pinned"]), yes(r["hot"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)
