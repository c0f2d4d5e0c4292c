"""Can the fast path run on this node? Checked once, against the live containerd.

The fast path writes what containerd's CRI pull would write, so it needs: the CRI plugin
unpacking with the overlayfs snapshotter (the EKS and Bottlerocket default), the
snapshotter's and content store's directories reachable from where nodeagent runs (the
node's root, or the host mounted at ``host_root`` in the DaemonSet), proven by preparing
a throwaway snapshot and finding its directory, and no user namespace (there containerd
applies layers differently). Any miss is a reason, logged and counted, and pulls go
through CRI ``PullImage`` as before. The content sharing policy is read too: with
``isolated`` blobs are streamed to containerd instead of linked (``content``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from nodeagent.containerd.model import ContainerdError
from nodeagent.containerd.store import ContainerdStore
from nodeagent.pull.staging import Staging

SNAPSHOTTER = "overlayfs"


class FastPathUnavailable(Exception):
    """The message is the reason; ``code`` a bounded label for metrics."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FastPathSetup:
    snapshotter: str
    snapshot_root: str  # containerd's path
    content_root: str
    host_root: str  # prefix that turns containerd's paths into ours ("" on the node)
    hosts_dir: str | None  # CRI's registry config_path, as we see it
    discard_unpacked_layers: bool
    staging: Staging
    shared_content: bool = True  # containerd's content sharing policy is "shared"

    def view(self, path: str) -> str:
        """A path containerd reports, as this process sees it."""
        return view_path(self.host_root, path)


def view_path(host_root: str, path: str) -> str:
    return os.path.join(host_root, path.lstrip("/")) if host_root else path


async def check_fast_path(store: ContainerdStore, host_root: str = "") -> FastPathSetup:
    """The node's fast-path setup, or FastPathUnavailable with the reason."""
    if _in_user_namespace():
        raise FastPathUnavailable("nodeagent runs in a user namespace, where containerd "
                                  "unpacks layers differently", "user_namespace")
    try:
        cri = await store.cri_config()
        snapshot_exports = await store.plugin_exports("io.containerd.snapshotter.v1",
                                                      cri.snapshotter or SNAPSHOTTER)
        content_exports = await store.plugin_exports("io.containerd.content.v1", "content")
        metadata_exports = await store.plugin_exports("io.containerd.metadata.v1", "bolt")
    except ContainerdError as exc:
        raise FastPathUnavailable(f"cannot read containerd's configuration: {exc}",
                                  "containerd_config") from None
    if cri.snapshotter != SNAPSHOTTER:
        raise FastPathUnavailable(f'the CRI plugin unpacks with the "{cri.snapshotter}" '
                                  f'snapshotter; the fast path writes "{SNAPSHOTTER}" '
                                  "snapshots", "snapshotter")
    snapshot_root = (snapshot_exports or {}).get("root", "")
    content_root = (content_exports or {}).get("root", "")
    if not snapshot_root or not content_root:
        raise FastPathUnavailable("containerd does not say where its overlayfs snapshotter "
                                  "and content store keep their files", "containerd_config")
    host_root = host_root.rstrip("/")
    setup = FastPathSetup(
        SNAPSHOTTER, snapshot_root, content_root, host_root,
        view_path(host_root, cri.config_path) if cri.config_path else None,
        cri.discard_unpacked_layers,
        Staging(view_path(host_root, content_root), view_path(host_root, snapshot_root)),
        shared_content=(metadata_exports or {}).get("policy", "shared") != "isolated")
    await _probe(store, setup)
    problem = setup.staging.problem()
    if problem:
        raise FastPathUnavailable(problem, "staging")
    return setup


async def _probe(store: ContainerdStore, setup: FastPathSetup) -> None:
    """Prepare a throwaway snapshot and look for its directory where we think the
    snapshotter keeps it: proves that path is the live store, not a stale copy."""
    key = f"nodeagent-probe-{uuid.uuid4().hex}"
    try:
        mounts = await store.prepare(setup.snapshotter, key, "", {}, lease="")
    except ContainerdError as exc:
        raise FastPathUnavailable(f"cannot prepare a snapshot: {exc}", "containerd_config"
                                  ) from None
    try:
        source = mounts[0].source if mounts else ""
        if not source.startswith(setup.snapshot_root + "/") or not os.path.isdir(
                setup.view(source)):
            raise FastPathUnavailable(
                f"containerd's snapshot directory {setup.snapshot_root} is not reachable "
                f"here (looked for {setup.view(source) or 'a mount'}); in a container, mount "
                "the host's /var/lib/containerd at the same path or set the host root",
                "not_reachable")
    finally:
        await store.remove_snapshot(setup.snapshotter, key)


def _in_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as file:
            fields = file.read().split()
    except OSError:
        return False
    return fields[:3] != ["0", "0", "4294967295"]
