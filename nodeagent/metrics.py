"""Prometheus metrics for nodeagent, and the small HTTP server that exposes them.

Every metric lives on the module-level ``REGISTRY`` (not the global default registry, so
tests and embedding stay clean). Labels are bounded: no per-image or per-node label; an
image's own status goes to the Node/HotImageSet status, not to metrics.

``serve(port, health)`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on one port
from a daemon thread (``metrics_http``); the agent and ``nodeagent prewarm
--metrics-port`` both use it.

Other concerns append their own metrics below, each in a delimited block.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from nodeagent import __version__
from nodeagent.metrics_http import HealthState, MetricsServer, serve_registry

__all__ = ["REGISTRY", "HealthState", "MetricsServer", "generate_latest", "serve"]  # + metrics

REGISTRY = CollectorRegistry(auto_describe=True)



def serve(port: int, health: HealthState | None = None, host: str = "0.0.0.0") -> MetricsServer:
    """Serve every metric below, and the health probes, on ``host:port`` (0: any free
    port) from a daemon thread. Without ``health`` both probes answer 200."""
    return serve_registry(REGISTRY, port, health, host)


BUILD_INFO = Info("nodeagent_build", "nodeagent version", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# ------------------------------------------------------------------ prewarm (engine)
IMAGE_STATES = ("pending", "pulling", "backoff", "present", "failed", "skipped")
# Why a pull attempt failed or was not made. Anything else is counted as "other".
FAILURE_REASONS = (
    "auth",  # registry refused the credentials (or none were found)
    "not_found",  # image or tag does not exist
    "registry_unreachable",  # connection refused / DNS / TLS
    "no_space",  # containerd ran out of disk
    "stalled",  # no byte progress for --stall-timeout: cancelled and retried
    "containerd_unavailable",  # containerd down or restarting
    "disk_guard",  # skipped: would pass the image filesystem high-water mark
    "cancelled",
    "other",
)

PREWARM_IMAGES = Gauge(
    "nodeagent_prewarm_images", "Hot images for this node by state", ["state"],
    registry=REGISTRY,
)
PREWARM_PINNED_IMAGES = Gauge(
    "nodeagent_prewarm_pinned_images", "Images pinned by nodeagent against kubelet GC",
    registry=REGISTRY,
)
PREWARM_PULLED_BYTES = Counter(
    "nodeagent_prewarm_pulled_bytes",
    "Compressed layer bytes downloaded by prewarm pulls (each shared layer once)",
    registry=REGISTRY,
)
PREWARM_PULL_DURATION = Histogram(
    "nodeagent_prewarm_pull_duration_seconds",
    "Wall time of successful prewarm pulls, retries included",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 2700, 3600, float("inf")),
    registry=REGISTRY,
)
PREWARM_PULL_FAILURES = Counter(
    "nodeagent_prewarm_pull_failures",
    "Failed or skipped prewarm pull attempts by reason", ["reason"], registry=REGISTRY,
)
PREWARM_RETRIES = Counter(
    "nodeagent_prewarm_pull_retries", "Pull attempts retried after a failure",
    registry=REGISTRY,
)
PREWARM_RECONCILES = Counter(
    "nodeagent_prewarm_reconciles", "Completed reconcile passes", registry=REGISTRY,
)
PREWARM_LAST_RECONCILE = Gauge(
    "nodeagent_prewarm_last_reconcile_timestamp_seconds",
    "Unix time of the last completed reconcile pass", registry=REGISTRY,
)
# How images were pulled: nodeagent's fast path or CRI PullImage (prewarm/pullpath.py).
PULL_PATHS = ("fast", "cri")
FALLBACK_REASONS = (
    "snapshotter",  # CRI unpacks with another snapshotter than overlayfs
    "not_reachable",  # containerd's directories are not reachable from nodeagent
    "user_namespace",
    "staging",  # no staging space beside containerd's stores
    "busy",  # another nodeagent process holds the fast path
    "containerd_config",  # containerd's configuration could not be read
    "media_type",  # the image has layers the fast path does not unpack
    "other",
)
PREWARM_PULLS = Counter(
    "nodeagent_prewarm_pulls", "Successful prewarm pulls by the path taken", ["path"],
    registry=REGISTRY,
)
PREWARM_PULL_FALLBACKS = Counter(
    "nodeagent_prewarm_pull_fallbacks",
    "Images pulled through CRI because the fast path could not take them, by reason",
    ["reason"], registry=REGISTRY,
)
PREWARM_UNPACKED_BYTES = Counter(
    "nodeagent_prewarm_unpacked_bytes",
    "Uncompressed layer bytes the fast path wrote into snapshots", registry=REGISTRY,
)
IMAGE_FS_USED = Gauge(
    "nodeagent_image_fs_used_bytes",
    "Used bytes of the image filesystem (statvfs, as kubelet counts)", registry=REGISTRY,
)
IMAGE_FS_CAPACITY = Gauge(
    "nodeagent_image_fs_capacity_bytes", "Size of the image filesystem", registry=REGISTRY,
)
IMAGE_FS_CONTAINERD_USED = Gauge(
    "nodeagent_image_fs_containerd_used_bytes",
    "Bytes containerd's snapshots use on the image filesystem (CRI ImageFsInfo)",
    registry=REGISTRY,
)
for _state in IMAGE_STATES:
    PREWARM_IMAGES.labels(state=_state)
for _reason in FAILURE_REASONS:
    PREWARM_PULL_FAILURES.labels(reason=_reason)


for _path in PULL_PATHS:
    PREWARM_PULLS.labels(path=_path)
for _reason in FALLBACK_REASONS:
    PREWARM_PULL_FALLBACKS.labels(reason=_reason)


def fallback_reason(reason: str | None) -> str:
    return reason if reason in FALLBACK_REASONS else "other"


def failure_reason(reason: str | None) -> str:
    """Map any reason string onto the bounded label set."""
    return reason if reason in FAILURE_REASONS else "other"


def set_image_states(states: Iterable[str]) -> None:
    """Set the by-state gauge from the current states of all hot images."""
    counts = dict.fromkeys(IMAGE_STATES, 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    for state, count in counts.items():
        PREWARM_IMAGES.labels(state=state).set(count)
# ------------------------------------------------------------------ end prewarm

# ------------------------------------------------------------------ kube (agent DaemonSet)
KUBE_API_ERRORS = Counter(
    "nodeagent_kube_api_errors",
    "Failed Kubernetes API calls (list/watch retried with backoff) by resource",
    ["resource"], registry=REGISTRY,
)
KUBE_WATCH_RELISTS = Counter(
    "nodeagent_kube_watch_relists",
    "Watches that expired (410 Gone) and re-listed, by resource", ["resource"],
    registry=REGISTRY,
)
AGENT_HOTIMAGESETS = Gauge(
    "nodeagent_agent_hotimagesets",
    "HotImageSets seen by the agent: selected for this node, not selected, invalid",
    ["state"], registry=REGISTRY,
)
AGENT_CONDITION_TRUE = Gauge(
    "nodeagent_agent_images_prewarmed",
    "1 when the node condition ImagesPrewarmed is True, else 0", registry=REGISTRY,
)
AGENT_STATUS_PATCHES = Counter(
    "nodeagent_agent_node_status_patches",
    "Patches of the node's ImagesPrewarmed condition by outcome", ["outcome"],
    registry=REGISTRY,
)
AGENT_EVENTS = Counter(
    "nodeagent_agent_events",
    "Kubernetes Events for the node: sent, deduplicated, rate_limited, failed", ["outcome"],
    registry=REGISTRY,
)
AGENT_STARTUP_TAINT_REMOVED = Counter(
    "nodeagent_agent_startup_taint_removals",
    "Startup taint removals by why: ready or timeout", ["why"], registry=REGISTRY,
)
ROLLOUT_LEASE_WAIT = Histogram(
    "nodeagent_rollout_lease_wait_seconds",
    "Time waiting for a cluster-wide pull slot (rollout limit) before pulling",
    buckets=(0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, float("inf")), registry=REGISTRY,
)
ROLLOUT_LEASES_HELD = Gauge(
    "nodeagent_rollout_leases_held", "Pull slots (Leases) this node holds now",
    registry=REGISTRY,
)
for _outcome in ("sent", "deduplicated", "rate_limited", "failed"):
    AGENT_EVENTS.labels(outcome=_outcome)
for _outcome in ("patched", "failed"):
    AGENT_STATUS_PATCHES.labels(outcome=_outcome)
for _state in ("selected", "not_selected", "invalid"):
    AGENT_HOTIMAGESETS.labels(state=_state)
# ------------------------------------------------------------------ end kube

# ------------------------------------------------------------------ disks (agent export)
# Set by the agent from nodeagent.disks.status.disk_metrics_snapshot() (sysfs + statvfs).
DISKS_ARRAYS = Gauge(
    "nodeagent_disks_arrays", "nodeagent's md arrays present on the node", registry=REGISTRY,
)
DISKS_ARRAYS_HEALTHY = Gauge(
    "nodeagent_disks_arrays_healthy",
    "Of those, arrays running (clean/active) with no degraded member", registry=REGISTRY,
)
DISKS_ARRAY_MEMBERS = Gauge(
    "nodeagent_disks_array_members", "Member disks of nodeagent's arrays", registry=REGISTRY,
)
DISKS_ARRAY_DEGRADED = Gauge(
    "nodeagent_disks_array_degraded_members",
    "Missing or failed members of nodeagent's arrays (0 when healthy)", registry=REGISTRY,
)
DISKS_VOLUME_CAPACITY = Gauge(
    "nodeagent_disks_volume_capacity_bytes", "Size of each local volume", ["mountpoint"],
    registry=REGISTRY,
)
DISKS_VOLUME_FREE = Gauge(
    "nodeagent_disks_volume_free_bytes", "Free bytes of each local volume", ["mountpoint"],
    registry=REGISTRY,
)
DISKS_SETUP_DURATION = Gauge(
    "nodeagent_disks_setup_duration_seconds", "Wall time of the last disks setup on this boot",
    registry=REGISTRY,
)
DISKS_SETUP_CONVERGED = Gauge(
    "nodeagent_disks_setup_converged",
    "1 when the last disks setup left the node as planned, 0 if not, -1 if it never ran",
    registry=REGISTRY,
)
_HEALTHY_MD_STATES = ("clean", "active", "active-idle", "write-pending", "read-auto")


def set_disk_metrics(snapshot: dict) -> None:
    """Export a ``disk_metrics_snapshot()`` result."""
    arrays = snapshot.get("arrays") or []
    DISKS_ARRAYS.set(len(arrays))
    DISKS_ARRAYS_HEALTHY.set(sum(1 for a in arrays if a.get("state") in _HEALTHY_MD_STATES
                                 and not a.get("degraded")))
    DISKS_ARRAY_MEMBERS.set(sum(int(a.get("members") or 0) for a in arrays))
    DISKS_ARRAY_DEGRADED.set(sum(int(a.get("degraded") or 0) for a in arrays))
    DISKS_VOLUME_CAPACITY.clear()
    DISKS_VOLUME_FREE.clear()
    for mount in snapshot.get("mounts") or []:
        DISKS_VOLUME_CAPACITY.labels(mountpoint=mount["mountpoint"]).set(mount["capacity_bytes"])
        DISKS_VOLUME_FREE.labels(mountpoint=mount["mountpoint"]).set(mount["free_bytes"])
    duration = snapshot.get("setup_duration_seconds")
    DISKS_SETUP_DURATION.set(float(duration) if duration is not None else 0.0)
    converged = snapshot.get("setup_converged")
    DISKS_SETUP_CONVERGED.set(-1 if converged is None else int(bool(converged)))
# ------------------------------------------------------------------ end disks (agent export)

# ------------------------------------------------------------------ hydrate (snapshot)
HYDRATE_PHASES = ("hot", "device")  # hot images' files; then the whole block device
HYDRATE_READ_BYTES = Counter(
    "nodeagent_hydrate_read_bytes",
    "Bytes read ahead after a restore from snapshot, by phase", ["phase"], registry=REGISTRY,
)
HYDRATE_READ_FILES = Counter(
    "nodeagent_hydrate_read_files", "Files read ahead by hydration, by phase", ["phase"],
    registry=REGISTRY,
)
HYDRATE_DURATION = Gauge(
    "nodeagent_hydrate_duration_seconds", "Wall time of the last hydration, by phase",
    ["phase"], registry=REGISTRY,
)
HYDRATE_COMPLETED = Gauge(
    "nodeagent_hydrate_completed_timestamp_seconds",
    "When the last hydration phase finished (unix time), by phase", ["phase"],
    registry=REGISTRY,
)
for _phase in HYDRATE_PHASES:
    HYDRATE_READ_BYTES.labels(phase=_phase)
    HYDRATE_READ_FILES.labels(phase=_phase)


def record_hydration(phase: str, read_bytes: int, files: int, seconds: float) -> None:
    HYDRATE_READ_BYTES.labels(phase=phase).inc(read_bytes)
    HYDRATE_READ_FILES.labels(phase=phase).inc(files)
    HYDRATE_DURATION.labels(phase=phase).set(seconds)
    HYDRATE_COMPLETED.labels(phase=phase).set(time.time())
# ------------------------------------------------------------------ end hydrate


# ------------------------------------------------------------------ models (model cache)
MODEL_FAILURE_REASONS = ("no_credentials", "access_denied", "not_found", "unreachable",
                         "no_space", "disk_guard", "corrupt", "invalid_source",
                         "source_changed", "cancelled", "other")
MODEL_STATES = ("pending", "downloading", "present", "failed", "skipped")
_M = {"registry": REGISTRY}
MODELS_DOWNLOADED_BYTES = Counter(
    "nodeagent_models_downloaded_bytes",
    "Bytes of model objects received from S3/OCI, counted as they arrive (bytes fetched "
    "again after a broken connection or a failed check count again)", **_M)
MODELS_RESUMED_BYTES = Counter(
    "nodeagent_models_resumed_bytes",
    "Bytes of interrupted downloads reused from the staging dir instead of downloaded", **_M)
MODELS_SYNC_DURATION = Histogram(
    "nodeagent_models_sync_duration_seconds",
    "Wall time of model syncs that published a new version (list, download, verify)",
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")), **_M)
MODELS_FAILURES = Counter("nodeagent_models_failures", "Model syncs that failed, by reason",
                          ["reason"], **_M)
MODELS_CORRUPT_DOWNLOADS = Counter(
    "nodeagent_models_corrupt_downloads",
    "Objects whose downloaded bytes did not match their checksum/ETag (then re-fetched)", **_M)
MODELS_CACHE_BYTES = Gauge("nodeagent_models_cache_bytes",
                           "Bytes of the published models in the cache", **_M)
MODELS_CACHED = Gauge("nodeagent_models_cached", "Published models in the cache", **_M)
MODELS_EVICTIONS = Counter("nodeagent_models_evictions",
                           "Models evicted from the cache to make room", **_M)
MODELS_EVICTED_BYTES = Counter("nodeagent_models_evicted_bytes",
                               "Bytes freed by evicting models", **_M)
MODELS_BY_STATE = Gauge("nodeagent_models", "Listed models for this node by state (agent, "
                        "--watch-file)", ["state"], **_M)
AGENT_HOTMODELSETS = Gauge("nodeagent_agent_hotmodelsets", "HotModelSets seen by the agent: "
                           "selected for this node, not selected, invalid", ["state"], **_M)
AGENT_MODELS_PREWARMED = Gauge("nodeagent_agent_models_prewarmed",
                               "1 when the node condition ModelsPrewarmed is True", **_M)
for _reason in MODEL_FAILURE_REASONS:
    MODELS_FAILURES.labels(reason=_reason)
for _state in ("selected", "not_selected", "invalid"):
    AGENT_HOTMODELSETS.labels(state=_state)


def set_model_states(states: Iterable[str]) -> None:
    counts = dict.fromkeys(MODEL_STATES, 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    for state, count in counts.items():
        MODELS_BY_STATE.labels(state=state).set(count)


set_model_states(())
# ------------------------------------------------------------------ end models
