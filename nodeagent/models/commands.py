"""`nodeagent models ls|prewarm|gc`: the model cache's flags, turned into options.

The sync itself is models/run.py (and engine.py), the listing inventory.py, eviction
gc.py. Every flag, file and path is checked before anything is downloaded, evicted or
created. Light imports only at import time; boto3 and the registry client load when a
sync needs them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.credentials.commands import add_credential_arguments, credential_options
from nodeagent.errors import UsageError
from nodeagent.inputs import Range, listen_port
from nodeagent.models.layout import CACHE_DIR_ENV
from nodeagent.models.options import DEFAULT_CONCURRENCY
from nodeagent.prewarm.commands import DEFAULT_HOSTS_DIR, parse_node_labels
from nodeagent.prewarm.diskguard import HIGH_WATER_ENV, HIGH_WATER_RANGE

if TYPE_CHECKING:
    from nodeagent.models.desired import ModelListFiles

CONCURRENCY_RANGE = Range(int, 1, 128)  # connections shared by all models


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="model cache: ML models from S3 / OCI registries on local disk",
        description="Keep ML model artifacts (S3 prefixes, OCI artifacts) in a cache on the "
                    "node's local disk, listed by HotModelSet files; list and clean it.")
    actions = p.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    _register_ls(actions)
    _register_prewarm(actions)
    _register_gc(actions)


def _cache_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help=f"the model cache (default: ${CACHE_DIR_ENV}, else models/ on the "
                        "local-disk volume `disks setup` mounted, else /var/lib/nodeagent/"
                        "models)")


def _list_arguments(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    p.add_argument("-f", "--file", dest="files", action="append", type=Path,
                   required=required, default=None if required else [], metavar="FILE",
                   help=f"HotModelSet YAML/JSON file or directory (repeatable): {what}")
    p.add_argument("--node-labels", metavar="K=V,...",
                   help="this node's labels, to evaluate each set's nodeSelector")


def _register_ls(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "ls", help="list the cached models",
        description="The cached models: name, size, source, how they were verified, "
                    "whether a process or a pod uses them and, with -f, whether the lists "
                    "name them (every set, unless --node-labels is given).")
    _list_arguments(p, False, "mark the models they list")
    _cache_dir_argument(p)
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=ls_handler)


def _register_prewarm(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "prewarm", help="download the listed models into the cache",
        description="Download the models of HotModelSet files into the cache, highest "
                    "priority first, each verified and published atomically; re-syncs "
                    "fetch only what changed. Exit 0 when every listed model is present, "
                    "1 otherwise (with a summary of what failed and why).")
    _list_arguments(p, True, "the models to keep")
    p.add_argument("--all-sets", action="store_true",
                   help="ignore nodeSelectors: take every set (e.g. on a snapshot builder)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="download what is missing, then exit (default)")
    mode.add_argument("--watch-file", action="store_true",
                      help="keep running: re-read the files when they change, re-sync "
                           "every 5 minutes and after failures")
    _cache_dir_argument(p)
    add_sync_arguments(p)
    add_credential_arguments(p)
    p.add_argument("--metrics-port", type=listen_port, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz on PORT, 1-65535 "
                        "(0: any free port)")
    p.add_argument("--progress", choices=["auto", "live", "log"], default="auto",
                   help="live bars (default on a terminal) or JSON/text log lines")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=prewarm_handler)


def _register_gc(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "gc", help="evict cached models that are no longer listed",
        description="Evict every cached model that the lists do not name (every set, "
                    "unless --node-labels is given) and no process or pod uses; also "
                    "removes stale partial downloads. Listed models and models in use are "
                    "never evicted.")
    _list_arguments(p, False, "the models to keep")
    p.add_argument("--no-list", action="store_true",
                   help="without -f: treat every cached model as unlisted (those in use "
                        "are still kept)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be evicted")
    _cache_dir_argument(p)
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=gc_handler)


def add_sync_arguments(p: argparse.ArgumentParser) -> None:
    """The download knobs (`models prewarm`, `snapshot build --models-file`)."""
    p.add_argument("--concurrency", type=CONCURRENCY_RANGE, default=None, metavar="N",
                   help=f"connections shared by all models, {CONCURRENCY_RANGE} "
                        f"(default {DEFAULT_CONCURRENCY})")
    p.add_argument("--high-water", type=HIGH_WATER_RANGE, default=None, metavar="PERCENT",
                   help=f"never fill the cache filesystem past PERCENT, in {HIGH_WATER_RANGE}; "
                        "unlisted models are evicted to stay below it (env "
                        f"{HIGH_WATER_ENV}; default 80)")
    p.add_argument("--no-evict", action="store_true",
                   help="never evict unlisted models to make room (fail instead)")
    p.add_argument("--hosts-dir", type=Path, metavar="DIR",
                   help=f"containerd registry hosts.toml directory, for oci:// mirrors "
                        f"(default {DEFAULT_HOSTS_DIR} when it exists)")


# ---------------------------------------------------------------------- options


def sync_options(args: argparse.Namespace, cache_dir: str | None = None) -> Any:
    """The flags as SyncOptions, every value checked (the cache dir too)."""
    from nodeagent.models.layout import resolve_cache_dir
    from nodeagent.models.options import SyncOptions
    from nodeagent.prewarm.diskguard import default_high_water_percent

    concurrency = DEFAULT_CONCURRENCY if args.concurrency is None else args.concurrency
    if args.high_water is None:
        default_high_water_percent()  # a bad $NODEAGENT_HIGH_WATER fails now, by name
    hosts_dir = args.hosts_dir
    if hosts_dir is not None and not hosts_dir.is_dir():
        raise UsageError(f"--hosts-dir {hosts_dir}: not a directory")
    if hosts_dir is None and DEFAULT_HOSTS_DIR.is_dir():
        hosts_dir = DEFAULT_HOSTS_DIR
    chosen = cache_dir if cache_dir is not None else args.cache_dir
    resolve_cache_dir(chosen)  # a bad directory fails now, before anything is fetched
    from nodeagent.credentials.options import build_keyring

    credentials = credential_options(args)
    build_keyring(credentials)  # unreadable credential files fail now, too
    return SyncOptions(cache_dir=chosen, concurrency=concurrency,
                       high_water_percent=args.high_water, evict=not args.no_evict,
                       hosts_dir=hosts_dir, credentials=credentials)


def model_list_files(args: argparse.Namespace, all_sets: bool) -> ModelListFiles:
    from nodeagent.models.desired import ModelListFiles

    return ModelListFiles(tuple(args.files), parse_node_labels(args.node_labels), all_sets)


def _listed(args: argparse.Namespace, consequence: str) -> set[str] | None:
    """Names the lists keep: every selected set's models (conflicting names included).
    ``consequence``: what the command did not do when a list is invalid."""
    if not args.files:
        if args.node_labels is not None:  # it would select nothing: say so, not drop it
            raise UsageError("--node-labels needs -f: the HotModelSet files whose "
                             "nodeSelectors it is matched against")
        return None
    from nodeagent.api.hotmodelset import ModelListError, load_hotmodelsets

    labels = parse_node_labels(args.node_labels)
    try:
        sets = load_hotmodelsets(args.files)
    except ModelListError as exc:
        raise exc.saying(consequence) from None
    return {m.name for s in sets if labels is None or s.node_selector.matches(labels)
            for m in s.models}


# ---------------------------------------------------------------------- handlers


def prewarm_handler(args: argparse.Namespace) -> int:
    from nodeagent.models.desired import load_desired_models
    from nodeagent.models.run import ModelsRun, run_models

    if args.all_sets and args.node_labels is not None:
        raise UsageError("--all-sets and --node-labels exclude each other")
    run = ModelsRun(files=model_list_files(args, args.all_sets), sync=sync_options(args),
                    watch=args.watch_file, metrics_port=args.metrics_port,
                    live={"auto": None, "live": True, "log": False}[args.progress],
                    output=args.output)
    desired = load_desired_models(run.files)  # an invalid list fails before any download
    return run_models(run, desired)


def ls_handler(args: argparse.Namespace) -> int:
    from nodeagent.models.inventory import inventory, table
    from nodeagent.models.layout import CacheLayout, resolve_cache_dir

    listed = _listed(args, "no model was listed")
    layout = CacheLayout(resolve_cache_dir(args.cache_dir))
    rows = inventory(layout, listed)
    if args.output == "json":
        print(json.dumps({"cacheDir": str(layout.root),
                          "models": [r.to_json() for r in rows]}, indent=2))
    else:
        print(table(rows, layout.root))
    return 0


def gc_handler(args: argparse.Namespace) -> int:
    from nodeagent.models.gc import gc

    if not args.files and not args.no_list:
        raise UsageError("models gc needs the models to keep: -f FILE (HotModelSet files), "
                         "or --no-list to evict every cached model not in use")
    if args.files and args.no_list:
        raise UsageError("-f and --no-list exclude each other")
    listed = _listed(args, "nothing was evicted") or set()
    report = gc(listed, args.cache_dir, dry_run=args.dry_run)
    if args.output == "json":
        print(json.dumps(gc_json(report), indent=2))
    else:
        print(gc_text(report))
    return 0


def gc_json(report: Any) -> dict:
    return {"cacheDir": str(report.cache_dir), "dryRun": report.dry_run,
            "evicted": [{"name": m.name, "sizeBytes": m.size_bytes, "orphan": m.orphan}
                        for m in report.evicted],
            "freedBytes": report.freed_bytes,
            "keptInUse": [{"name": n, "why": why} for n, why in report.in_use],
            "keptListed": report.listed, "skippedNowInUse": report.skipped}


def gc_text(report: Any) -> str:
    from nodeagent.console import fmt_bytes

    verb = "would evict" if report.dry_run else "evicted"
    lines = [f"models gc in {report.cache_dir}" + (" (dry run)" if report.dry_run else "")]
    for m in report.evicted:
        why = "incomplete, no trusted manifest" if m.orphan else "not listed"
        lines.append(f"  {verb:<11} {m.name} ({fmt_bytes(m.size_bytes)}, {why})")
    lines += [f"  {'kept':<11} {name} ({why})" for name, why in report.in_use]
    lines += [f"  {'kept':<11} {name} (listed)" for name in report.listed]
    lines += [f"  {'kept':<11} {name} (in use by the time it was evicted)"
              for name in report.skipped]
    lines.append(f"{verb} {len(report.evicted)} models, {fmt_bytes(report.freed_bytes)}"
                 if report.evicted else "nothing to evict")
    return "\n".join(lines)
