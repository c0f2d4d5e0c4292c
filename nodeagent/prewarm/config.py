"""Prewarm settings: the engine's knobs (EngineConfig) and, with the node's credentials,
the one options object every command that prewarms builds from its flags
(PrewarmOptions: `prewarm`, `snapshot build`, the agent). Light imports only, so the CLI
can show defaults cheaply."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.credentials.options import CredentialOptions
from nodeagent.errors import UsageError
from nodeagent.inputs import Range
from nodeagent.prewarm.diskguard import (
    DEFAULT_UNPACKED_RATIO,
    HIGH_WATER_RANGE,
    default_high_water_percent,
)


def default_concurrency(cpus: int | None = None) -> int:
    """Images pulled at once: CPUs + 1, between 2 and 4.

    containerd unpacks one image's layers one after the other on one core, so parallel
    images are what uses several cores, and one more keeps a download going while the
    cores unpack. bench/prewarm_bench.py on a 2-core machine: concurrency 3 and 4 had
    the best median wall time, 2 the best single run (README "Prewarm benchmark"). The
    cap keeps registries and disks from being flooded on big nodes (CRI already fetches
    up to 3 layers per image).
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 2)
    return max(2, min(4, cpus + 1))


DEFAULT_CONCURRENCY = default_concurrency()
DEFAULT_STALL_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 5
PULL_PATHS = ("auto", "fast", "cri")
PULL_PATH_ENV = "NODEAGENT_PULL_PATH"
# Fast-pull fetch defaults, chosen with bench/pull_bench.py (README "Fast pull benchmark");
# each flag's default can be set by its variable (checked by the flag's range).
DEFAULT_FETCH_CHUNK_MIB = 16
DEFAULT_FETCH_CONNECTIONS_PER_BLOB = 8
DEFAULT_FETCH_CONNECTIONS = 16
FETCH_CHUNK_MIB_ENV = "NODEAGENT_FETCH_CHUNK_MIB"
FETCH_CONNECTIONS_PER_BLOB_ENV = "NODEAGENT_FETCH_CONNECTIONS_PER_BLOB"
FETCH_CONNECTIONS_ENV = "NODEAGENT_FETCH_CONNECTIONS"

# The documented range of each knob: the flags' argparse types and EngineConfig's checks.
CONCURRENCY_RANGE = Range(int, 1, 64)
STALL_TIMEOUT_RANGE = Range(float, 0, 86400, low_open=True)  # NaN would never stall
MAX_RETRIES_RANGE = Range(int, 0, 100)
FETCH_CHUNK_MIB_RANGE = Range(int, 1, 1024)
FETCH_CONNECTIONS_PER_BLOB_RANGE = Range(int, 1, 64)
FETCH_CONNECTIONS_RANGE = Range(int, 1, 256)


def default_pull_path() -> str:
    """auto, unless NODEAGENT_PULL_PATH says otherwise (checked by EngineConfig)."""
    return os.environ.get(PULL_PATH_ENV, "").strip().lower() or "auto"


@dataclass
class EngineConfig:
    """Tuning knobs; the CLI flags and the agent's config map onto these."""

    concurrency: int = DEFAULT_CONCURRENCY  # images pulled at once
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S  # no new byte this long: cancel, retry
    max_retries: int = DEFAULT_MAX_RETRIES  # retries after the first attempt
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    high_water_percent: float = field(default_factory=default_high_water_percent)  # 100: off
    unpacked_ratio: float = DEFAULT_UNPACKED_RATIO
    unpin_removed: bool = True  # unpin images (we pinned) that left the hot list
    remove_unlisted: bool = False  # also remove images we pulled/pinned that left it
    poll_interval_s: float = 1.0  # progress polling (content ListStatuses)
    resync_interval_s: float = 300.0  # watch mode: full reconcile at least this often
    hosts_dir: Path | None = None  # containerd hosts.toml dir, for manifest resolution
    host_root: str = ""  # where the host's / is mounted (agent in a container: /host)
    pull_path: str = field(default_factory=default_pull_path)  # auto | fast | cri
    fetch_chunk_mib: int = DEFAULT_FETCH_CHUNK_MIB  # fast path: bytes per range request
    fetch_connections_per_blob: int = DEFAULT_FETCH_CONNECTIONS_PER_BLOB
    fetch_connections: int = DEFAULT_FETCH_CONNECTIONS  # all blobs of all images together

    def __post_init__(self) -> None:
        if self.pull_path not in PULL_PATHS:
            raise UsageError(f"pull path must be one of {', '.join(PULL_PATHS)} (--pull-path "
                             f"or {PULL_PATH_ENV}), got {self.pull_path!r}")
        for what, value, allowed in (
                ("concurrency", self.concurrency, CONCURRENCY_RANGE),
                ("stall timeout (s)", self.stall_timeout_s, STALL_TIMEOUT_RANGE),
                ("max retries", self.max_retries, MAX_RETRIES_RANGE),
                ("high-water mark (%)", self.high_water_percent, HIGH_WATER_RANGE),
                ("fetch chunk size (MiB)", self.fetch_chunk_mib, FETCH_CHUNK_MIB_RANGE),
                ("fetch connections per blob", self.fetch_connections_per_blob,
                 FETCH_CONNECTIONS_PER_BLOB_RANGE),
                ("fetch connections", self.fetch_connections, FETCH_CONNECTIONS_RANGE)):
            allowed.check(what, value)


@dataclass(frozen=True)
class PrewarmOptions:
    """What a command that prewarms takes from its flags (prewarm/commands.py declares
    them once): the engine's knobs and the node's registry credentials."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    credentials: CredentialOptions = field(default_factory=CredentialOptions)
