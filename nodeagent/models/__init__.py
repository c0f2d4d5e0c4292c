"""Model cache: ML model artifacts from S3 and OCI registries prefetched onto the node's
local disk.

Public API (what the CLI and the agent call)::

    from nodeagent.models import ModelSpec, SyncOptions, sync, entries, gc
    result = sync([ModelSpec("llama-3-8b", "s3://models/llama-3-8b/", priority=10)],
                  SyncOptions(cache_dir=None), reporter=make_reporter())
    result.ok, [(m.name, m.state, m.error) for m in result.models]

spec.py      ModelSpec (name, source, priority, required); its source URL is parsed
             by nodeagent/api/model_source.py
desired.py   the HotModelSets that apply to a node, merged into ModelSpecs
layout.py    the cache dir: default, validation, paths of trees/manifests/staging/trash
source.py    the source interface (list, details, ranged reads); s3.py and oci.py
             implement it, sources.py makes one per model (shared clients)
checksums.py which check an object gets (S3 checksum, MD5 ETag, multipart ETag), CRCs
plan.py      pure: what changed since the published manifest, ranges of an object
hashing.py   hashing a range as it arrives; objects.py one object's file and verification
runner.py    one model's download tasks (retries, resume, re-fetch on bad bytes)
pool.py      the priority worker pool; journal.py the resume journal of a staging dir
publish.py   fsync and atomic swap (renameat2 RENAME_EXCHANGE), trash
manifest.py  <name>.manifest.json beside each model
inuse.py     open files, cwd, mmaps and mounts (all namespaces) of a tree
evict.py     pure eviction plan; cache.py lock, listing, eviction, cleanup
space.py     the image disk guard's high-water rule on the cache filesystem
progress.py  live bars on a terminal, JSON log lines otherwise
options.py   SyncOptions: how a sync runs (cache dir, connections, S3, OCI, stop)
engine.py    sync(): the whole run; keeper.py keeps a list synced from a thread (agent)
gc.py        gc(): evict unlisted models; inventory.py what `models ls` shows
commands.py  `nodeagent models ls|prewarm|gc` (the edge: flags to options)

The names below load on first use, so importing ``nodeagent.models`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Entry": "cache", "entries": "cache",
    "ModelResult": "engine", "SyncResult": "engine", "sync": "engine",
    "SyncOptions": "options",
    "ModelCacheError": "errors", "ModelError": "errors",
    "gc": "gc",
    "CacheLayout": "layout", "resolve_cache_dir": "layout",
    "make_reporter": "progress",
    "ModelSpec": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nodeagent.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nodeagent.models.{module}"), name)
