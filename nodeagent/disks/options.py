"""What the user asked for (`nodeagent disks plan|setup|status` flags), validated."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nodeagent.errors import UsageError
from nodeagent.hostfacts.nvme import INSTANCE_STORE_MODEL

DEFAULT_MODEL = INSTANCE_STORE_MODEL
STRATEGIES = ("raid0", "raid10", "mount", "none")
FILESYSTEMS = ("xfs", "ext4")
DEFAULT_MOUNT_PATH = "/mnt/k8s-disks"
DEFAULT_ARRAY_NAME = "kubernetes"  # same as the EKS AMI's setup-local-disks: its arrays
# are recognised and reused rather than refused as foreign.
LABEL_PREFIX = "k8s-disks-"  # filesystem labels: k8s-disks-0, -1 ... (XFS allows 12 chars)
SOCI_DIR = "/var/lib/soci-snapshotter-grpc"
DEFAULT_BINDS = ("/var/lib/containerd", "/var/lib/kubelet", "/var/log/pods")
# 256 KiB: the largest chunk for which the XFS log stripe unit (which mkfs.xfs takes from
# the RAID chunk, max 256 KiB) stays valid; it is also what Bottlerocket uses.
DEFAULT_CHUNK_KIB = 256
XFS_MAX_LOG_SU_KIB = 256

# Services that write into each bind directory: they must be stopped while it moves.
DIR_OWNERS = {
    "/var/lib/containerd": ("containerd.service",),
    "/var/lib/kubelet": ("kubelet.service",),
    "/var/log/pods": ("kubelet.service", "containerd.service"),
    SOCI_DIR: ("soci-snapshotter.service", "containerd.service"),
}
# Stop in this order, start in the reverse one (kubelet talks to containerd).
SERVICE_ORDER = ("kubelet.service", "soci-snapshotter.service", "containerd.service")


@dataclass(frozen=True)
class Options:
    strategy: str = "raid0"
    instance_store_model: str = DEFAULT_MODEL
    mount_path: str = DEFAULT_MOUNT_PATH
    binds: tuple[str, ...] = DEFAULT_BINDS
    binds_given: bool = False  # --bind replaces the default list (and its SOCI addition)
    filesystem: str = "xfs"
    force: tuple[str, ...] = ()  # disk names, /dev paths or serials
    only: tuple[str, ...] = ()  # --disk: restrict to these disks
    array_name: str = DEFAULT_ARRAY_NAME
    chunk_kib: int = DEFAULT_CHUNK_KIB
    units_dir: str = "/etc/systemd/system"
    restart_services: bool = False
    verify: str = "content"  # "content" (byte compare) or "metadata"
    model_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "model_re", re.compile(self.instance_store_model))
        except re.error as exc:
            raise UsageError(f"--instance-store-model {self.instance_store_model!r} is not "
                             f"a valid regular expression: {exc}") from exc
        _check(self)

    def owners(self, path: str) -> tuple[str, ...]:
        return DIR_OWNERS.get(path, ())

    def volume_mountpoint(self, index: int) -> str:
        return str(PurePosixPath(self.mount_path) / str(index))


def _check(opts: Options) -> None:
    if opts.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {opts.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if opts.filesystem not in FILESYSTEMS:
        raise UsageError(f"--filesystem {opts.filesystem!r}: choose xfs or ext4")
    named = [("--mount-path", opts.mount_path), ("--units-dir", opts.units_dir),
             *(("--bind", b) for b in opts.binds)]
    for flag, path in named:
        if not path.startswith("/") or "\n" in path:
            raise UsageError(f"{flag} {path}: must be an absolute path")
    for path in opts.binds:
        if os.path.normpath(path) in ("/", "/var", "/usr", "/etc"):
            raise UsageError(f"--bind {path}: refusing to move a system directory")
    if opts.binds and opts.strategy == "mount" and opts.binds_given:
        raise UsageError("--bind needs a single volume: use --strategy raid0 or raid10 "
                         "(the mount strategy only mounts each disk)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", opts.array_name):
        raise UsageError(f"--array-name {opts.array_name!r}: use 1-32 letters, digits, . _ -")
    chunk = opts.chunk_kib
    if chunk < 4 or chunk & (chunk - 1):
        raise UsageError(f"--chunk-kib {chunk}: must be a power of two, at least 4")
    if opts.filesystem == "xfs" and chunk > XFS_MAX_LOG_SU_KIB:
        raise UsageError(f"--chunk-kib {chunk}: XFS's log stripe unit follows the chunk and "
                         f"may not exceed {XFS_MAX_LOG_SU_KIB} KiB")
    if opts.verify not in ("content", "metadata"):
        raise UsageError(f"--verify {opts.verify!r}: choose content or metadata")


def effective_binds(opts: Options, soci_present: bool) -> tuple[str, ...]:
    """The bind list: default (+ the SOCI dir when it exists) unless --bind was given."""
    if opts.strategy == "mount":
        return ()
    binds = tuple(os.path.normpath(b) for b in opts.binds)
    if not opts.binds_given and soci_present and SOCI_DIR not in binds:
        binds += (SOCI_DIR,)
    return binds
