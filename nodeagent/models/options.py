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

DEFAULT_CONCURRENCY = 16  # connections; measured: 16-24 fill a 400 MiB/s link of 40 MiB/s streams


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
