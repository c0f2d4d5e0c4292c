"""What the user asked for (`nodeagent disks plan|setup|status` flags), validated.

Everything here is pure and runs when Options is made, before any disk, mount or
directory is looked at, so `plan`, `setup` and the agent (which validates its disks setup
arguments at start) refuse the same inputs with the same message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nodeagent.disks.units import bind_target_name
from nodeagent.errors import UsageError
from nodeagent.hostfacts.nvme import INSTANCE_STORE_MODEL
from nodeagent.inputs import SYSTEM_DIRS, overlaps, system_tree

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
# Virtual trees: a unit file written there is not one systemd will ever read.
KERNEL_TREES = ("/proc", "/sys", "/dev")


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
        _check_paths(self)
        object.__setattr__(self, "mount_path", _normal(self.mount_path))
        object.__setattr__(self, "units_dir", _normal(self.units_dir))
        object.__setattr__(self, "binds", tuple(_normal(b) for b in self.binds))

    def owners(self, path: str) -> tuple[str, ...]:
        return DIR_OWNERS.get(path, ())

    def volume_mountpoint(self, index: int) -> str:
        return str(PurePosixPath(self.mount_path) / str(index))


def _check(opts: Options) -> None:
    if opts.strategy not in STRATEGIES:
        raise UsageError(f"--strategy {opts.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if opts.filesystem not in FILESYSTEMS:
        raise UsageError(f"--filesystem {opts.filesystem!r}: choose xfs or ext4")
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


def _check_paths(opts: Options) -> None:
    named = [("--mount-path", opts.mount_path), ("--units-dir", opts.units_dir),
             *(("--bind", b) for b in opts.binds)]
    for flag, path in named:
        if not path.startswith("/") or "\n" in path or "\0" in path:
            raise UsageError(f"{flag} {path!r}: must be an absolute path (one line)"
                              if "\n" in path or "\0" in path else
                              f"{flag} {path}: must be an absolute path")
    if problem := _system_problem(opts.mount_path, "mount the volumes below it",
                                  DEFAULT_MOUNT_PATH):
        raise UsageError(f"--mount-path {opts.mount_path}: {problem}")
    for bind in opts.binds:
        if problem := _system_problem(bind, "move it onto the volume and bind it back",
                                      DEFAULT_BINDS[0]):
            raise UsageError(f"--bind {bind}: {problem}")
    binds = _bound(opts)
    _check_mount_path(opts, binds)
    _check_binds(binds)
    _check_units_dir(opts, binds)


def _system_problem(path: str, use: str, example: str) -> str | None:
    tree = system_tree(path)
    if tree is None:
        return None
    if tree in SYSTEM_DIRS:  # the directory itself: those below it are fine
        return (f"is the system directory {tree} itself: refusing to {use} (a directory "
                f"below it, such as {example}, is fine)")
    return (f"in {tree}, a kernel or operating-system tree: refusing to {use} (the host "
            "needs it as it is)")


def _bound(opts: Options) -> list[tuple[str, str]]:
    """(how the user named it, normalized path) of each directory setup may bind."""
    if opts.strategy == "mount":
        return []
    if opts.binds_given:
        return [(f"--bind {b}", _normal(b)) for b in opts.binds]
    return [*((f"--bind {b} (a default bind)", b) for b in opts.binds),
            (f"--bind {SOCI_DIR} (bound by default when present)", SOCI_DIR)]


def _check_mount_path(opts: Options, binds: list[tuple[str, str]]) -> None:
    mount = _normal(opts.mount_path)
    for label, path in binds:
        if _within(mount, path) and mount != path:
            raise UsageError(f"--mount-path {opts.mount_path}: lies inside {label}: the "
                             "volume would be mounted in a directory that is itself moved "
                             "onto the volume and bound over")
        if _within(path, mount):
            raise UsageError(f"{label}: is or lies inside --mount-path {opts.mount_path}, "
                             "where the volumes are mounted: a directory cannot be moved "
                             "onto the volume that holds it")


def _check_binds(binds: list[tuple[str, str]]) -> None:
    for i, (label, path) in enumerate(binds):
        for other_label, other in binds[:i]:
            if path == other:
                raise UsageError(f"{label}: given twice")
            if overlaps(path, other):
                inner, outer = (label, other_label) if _within(path, other) else (
                    other_label, label)
                raise UsageError(f"{inner}: lies inside {outer}: moving the outer one "
                                 "moves it too, and binding both would hide one copy; "
                                 "bind only one of them")
            if bind_target_name(path) == bind_target_name(other):
                raise UsageError(f"{label} and {other_label} would both be kept in "
                                 f"{bind_target_name(path)} on the volume, mixing their "
                                 "content: bind only one of them")


def _check_units_dir(opts: Options, binds: list[tuple[str, str]]) -> None:
    units = _normal(opts.units_dir)
    for tree in KERNEL_TREES:
        if _within(units, tree):
            raise UsageError(f"--units-dir {opts.units_dir}: in {tree}, where systemd "
                             "reads no units")
    holders = [("--mount-path " + opts.mount_path, _normal(opts.mount_path)), *binds]
    for label, path in holders:
        if _within(units, path):
            raise UsageError(f"--units-dir {opts.units_dir}: lies inside {label}: the "
                             "units that mount the volume would be on the volume")


def _normal(path: str) -> str:
    """/a/./b/../c/ -> /a/c; a leading // (kept by normpath) is / on Linux."""
    norm = os.path.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def _within(path: str, tree: str) -> bool:
    """Whether normalized ``path`` is ``tree`` or lies below it."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def effective_binds(opts: Options, soci_present: bool) -> tuple[str, ...]:
    """The bind list: default (+ the SOCI dir when it exists) unless --bind was given."""
    if opts.strategy == "mount":
        return ()
    binds = tuple(os.path.normpath(b) for b in opts.binds)
    if not opts.binds_given and soci_present and SOCI_DIR not in binds:
        binds += (SOCI_DIR,)
    return binds
