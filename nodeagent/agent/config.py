"""What `nodeagent agent` was told: one typed object, built by agent/commands.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nodeagent.disks.options import Options as DisksOptions
from nodeagent.kube.taint import TaintSpec
from nodeagent.kube.watch import Backoff, WatchTiming
from nodeagent.prewarm.config import PrewarmOptions


@dataclass(frozen=True)
class DisksSetup:
    """`nodeagent disks setup` as the agent runs it (in a child process, while the node
    carries the startup taint): its arguments, and the options they mean (the array name
    and mount path the agent's disk metrics read)."""

    args: tuple[str, ...]
    options: DisksOptions


@dataclass(frozen=True)
class ModelsConfig:
    """The agent's model cache: HotModelSets -> <cache dir>/<name>/ on this node."""

    cache_dir: str | None = None  # None: $NODEAGENT_MODEL_CACHE_DIR, disks mount, fallback
    resync_s: float = 600.0  # re-list the sources (new versions, a deleted model) this often
    retry_initial_s: float = 30.0  # after a failed pass, doubling to retry_max_s
    retry_max_s: float = 600.0
    concurrency: int = 16  # connections shared by all models


@dataclass
class AgentConfig:
    node_name: str
    containerd_address: str
    kubeconfig: str | None = None  # None: in-cluster service account, else $KUBECONFIG
    kube_server: str | None = None  # the API server's URL (tests, port-forwards)
    prewarm: PrewarmOptions = field(default_factory=PrewarmOptions)
    metrics_port: int | None = 9464
    metrics_host: str = "0.0.0.0"
    startup_taint: TaintSpec | None = None
    startup_taint_timeout_s: float = 900.0
    rollout_limit: int = 0  # 0: off
    # images with a registry mirror: the limit holds back only this many seed nodes, then
    # everyone pulls through the mirror (None: as many as rollout_limit; 0: no seed wave)
    rollout_seed_nodes: int | None = None
    lease_namespace: str = "nodeagent"
    lease_duration_s: int = 30
    disks_setup: DisksSetup | None = None  # None: the agent never sets disks up
    models: ModelsConfig | None = field(default_factory=ModelsConfig)  # None: no model cache
    disks_status_interval_s: float = 60.0
    heartbeat_s: float = 600.0
    status_min_interval_s: float = 10.0
    secret_ttl_s: float = 300.0
    watch_timing: WatchTiming = field(default_factory=WatchTiming)
    backoff: Callable[[], Backoff] = Backoff

    @property
    def disks(self) -> DisksOptions:
        """The disks options the agent's status and metrics use."""
        return self.disks_setup.options if self.disks_setup else DisksOptions()
