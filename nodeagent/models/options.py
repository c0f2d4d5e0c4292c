"""``SyncOptions``: how one model-cache sync runs (the models concern's typed options).

Built by the edge (``models/commands.py``, ``snapshot/commands.py``) and the agent from
their flags and configuration, read by the engine and the sources.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.models import plan

if TYPE_CHECKING:
    from nodeagent.credentials.options import CredentialOptions

# Connections shared by all models. One S3 stream is far slower than a GPU node's NIC, so
# the default is set by the per-stream share: measured (bench/models_bench.py, 2 GiB,
# 400 MiB/s total) 64 connections give 336 MiB/s at 40 MiB/s a stream (16: 314) and
# 282 MiB/s at 10 MiB/s a stream (16: 136, 32: 231); peak RSS 124 MiB (16: 75).
DEFAULT_CONCURRENCY = 64


@dataclass
class SyncOptions:
    cache_dir: str | None = None  # else $NODEAGENT_MODEL_CACHE_DIR, the disks mount, ...
    concurrency: int = DEFAULT_CONCURRENCY
    range_bytes: int = plan.RANGE_BYTES
    high_water_percent: float | None = None  # else $NODEAGENT_HIGH_WATER, else 80
    evict: bool = True  # may evict unlisted models to make room
    # fsync every file before publishing (writeback starts as ranges finish). False leaves
    # it to the kernel: faster where the disk is slower than the network, but a crash in
    # the ~30 s before writeback can leave holes in a model published as complete.
    durable: bool = True
    region: str | None = None  # S3
    endpoint_url: str | None = None  # S3
    hosts_dir: Path | None = None  # OCI: containerd's hosts.toml dir (registry mirrors)
    credentials: CredentialOptions | None = None  # OCI: the node's registry credentials
    stop: threading.Event = field(default_factory=threading.Event)
