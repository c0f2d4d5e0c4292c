"""Model cache: ML model artifacts from S3 prefetched onto the node's local disk.

Public API (what the CLI and the agent call)::

    from nodeagent.models import ModelSpec, SyncOptions, sync, entries, gc
    result = sync([ModelSpec("llama-3-8b", "s3://models/llama-3-8b/", priority=10)],
                  SyncOptions(cache_dir=None), reporter=make_reporter())
    result.ok, [(m.name, m.state, m.error) for m in result.models]

spec.py      ModelSpec (name, source, priority, required) and s3:// parsing
layout.py    the cache dir: default, validation, paths of trees/manifests/staging/trash
source.py    the source interface (list, details, ranged reads); s3.py implements it
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
engine.py    sync(): the whole run
"""

from nodeagent.models.cache import Entry, entries
from nodeagent.models.engine import ModelResult, SyncOptions, SyncResult, sync
from nodeagent.models.errors import ModelCacheError, ModelError
from nodeagent.models.gc import gc
from nodeagent.models.layout import CacheLayout, resolve_cache_dir
from nodeagent.models.progress import make_reporter
from nodeagent.models.spec import ModelSpec

__all__ = [
    "CacheLayout",
    "Entry",
    "ModelCacheError",
    "ModelError",
    "ModelResult",
    "ModelSpec",
    "SyncOptions",
    "SyncResult",
    "entries",
    "gc",
    "make_reporter",
    "resolve_cache_dir",
    "sync",
]
