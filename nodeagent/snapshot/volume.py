"""Which EBS volume holds a directory: mount point -> block device -> NVMe serial -> volume id.

The host facts (the mount serving a path, the disk behind a device number, the disks under
md/dm devices) come from ``nodeagent/hostfacts``, whose sysfs root and mountinfo file are
parameters, so tests build their own. The decisions here are pure: what kind of disk a
device is (``classify_device``), and which one EBS disk a path lives on (``pick_ebs_disk``).
Xen instances expose ``xvd*`` devices without a serial: those are resolved through EC2
attachments (see ec2.find_attached_volume).

Also here: the checks ``snapshot create`` makes on the volume before it freezes anything
(not the root filesystem, no kubelet identity on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.errors import NodeagentError, UsageError
from nodeagent.hostfacts import sysfs
from nodeagent.hostfacts.mountinfo import MountEntry, find_mount, read_mountinfo
from nodeagent.hostfacts.nvme import EBS_MODEL, INSTANCE_STORE_MODEL, ebs_volume_id_from_serial

MAX_DEPTH = 8  # md over dm over ... : deeper stacks are not followed


class VolumeError(NodeagentError):
    """The directory is not on a single EBS volume (names the path and device)."""


@dataclass(frozen=True)
class VolumeDisk:
    """A whole disk (partitions are resolved to their disk), with its kind and, for md/dm
    devices, the disks below it."""

    name: str  # kernel name: nvme1n1, xvdb, loop0, md127, dm-0
    kind: str  # "ebs", "instance-store", "xen", "loop", "virtual", "other"
    model: str = ""
    serial: str = ""
    backing: tuple[VolumeDisk, ...] = field(default=())  # slaves of md/dm devices

    @property
    def volume_id(self) -> str | None:
        return ebs_volume_id_from_serial(self.serial) if self.kind == "ebs" else None

    def describe(self) -> str:
        detail = f" (model {self.model!r}, serial {self.serial!r})" if self.model else ""
        return f"/dev/{self.name}{detail}"


@dataclass(frozen=True)
class VolumeTarget:
    """Where a path lives: its mount, the block device and the EBS volume (if known)."""

    path: str
    mount: MountEntry
    device: VolumeDisk  # the EBS disk itself (dm/md with one backing disk resolved)
    volume_id: str | None  # None for Xen devices: resolve through EC2 attachments


# ----------------------------------------------------------------------------- pure parts


def classify_device(name: str, model: str, serial: str, has_slaves: bool) -> str:
    """Kind of a whole disk from its kernel name and NVMe identity."""
    model = model.strip()
    if model.startswith(EBS_MODEL) and ebs_volume_id_from_serial(serial):
        return "ebs"
    if model.startswith(INSTANCE_STORE_MODEL):
        return "instance-store"
    if name.startswith("xvd"):
        return "xen"
    if name.startswith("loop"):
        return "loop"
    if has_slaves or name.startswith(("md", "dm-")):
        return "virtual"
    return "other"


def pick_ebs_disk(device: VolumeDisk, path: str) -> VolumeDisk:
    """The one EBS (or Xen) disk under a device, or a VolumeError saying why not."""
    if device.kind in ("ebs", "xen"):
        return device
    if device.kind == "instance-store":
        raise VolumeError(
            f"{path} is on {device.describe()}, an NVMe instance-store disk: it is wiped on "
            "stop/terminate and cannot be snapshotted; snapshot an EBS data volume instead"
        )
    if device.kind == "virtual" and device.backing:
        if len(device.backing) > 1:
            disks = ", ".join(d.describe() for d in device.backing)
            raise VolumeError(
                f"{path} is on /dev/{device.name}, which spans {len(device.backing)} disks "
                f"({disks}); nodeagent snapshots exactly one EBS volume"
            )
        return pick_ebs_disk(device.backing[0], path)
    raise VolumeError(
        f"{path} is on {device.describe()}, which is not an EBS volume "
        f"(kind {device.kind}); run this on an EC2 node whose containerd root is on EBS"
    )


# -------------------------------------------------------------------------- host effects


def mount_of(path: str, mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo"
             ) -> MountEntry:
    """The mount serving an absolute, symlink-free path."""
    mount = find_mount(read_mountinfo(Path(mountinfo)), path)
    if mount is None:
        raise VolumeError(f"{path}: no mount in mountinfo contains this path")
    return mount


def describe_disk(disk_dir: Path, depth: int = 0) -> VolumeDisk:
    """VolumeDisk for a whole-disk sysfs dir, following md/dm slaves down to real disks."""
    device = sysfs.device_from_dir(disk_dir)
    below = sysfs.slave_dirs(disk_dir) if depth < MAX_DEPTH else []
    backing = tuple(describe_disk(d, depth + 1) for d in below)
    kind = classify_device(device.name, device.model, device.serial, bool(backing))
    return VolumeDisk(name=device.name, kind=kind, model=device.model, serial=device.serial,
                      backing=backing)


def discover_volume(
    path: str | os.PathLike[str],
    sysfs_root: str | os.PathLike[str] = "/sys",
    mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
) -> VolumeTarget:
    """Find the EBS volume that holds ``path`` (e.g. containerd's root)."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise VolumeError(f"{path}: no such directory")
    mount = mount_of(real, mountinfo)
    if mount.major == 0:
        raise VolumeError(
            f"{path} is on {mount.fstype} {mount.source!r} (mounted at {mount.mountpoint}), "
            "which is not a block device; the containerd root must be on an EBS volume"
        )
    disk_dir = sysfs.disk_dir(Path(sysfs_root), mount.devnum)
    if disk_dir is None:
        raise VolumeError(f"block device {mount.devnum} not found under "
                          f"{Path(sysfs_root) / 'dev' / 'block'}")
    disk = pick_ebs_disk(describe_disk(disk_dir), str(path))
    return VolumeTarget(path=real, mount=mount, device=disk, volume_id=disk.volume_id)


def mounted_device(
    path: str | os.PathLike[str],
    sysfs_root: str | os.PathLike[str] = "/sys",
    mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
) -> str:
    """The /dev node of the block device mounted where ``path`` lives (partition or disk)."""
    mount = mount_of(os.path.realpath(path), mountinfo)
    if mount.major == 0:
        raise VolumeError(f"{path} is on {mount.fstype}, which is not a block device")
    uevent = Path(sysfs_root) / "dev" / "block" / mount.devnum / "uevent"
    for line in sysfs.read_attr(uevent).splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return "/dev/" + value
    raise VolumeError(f"{path}: no device name for block device {mount.devnum} in {uevent}")


# ------------------------------------------------------------------ checks before create


def check_not_root_filesystem(root: str, allow_root: bool) -> None:
    """Refuse to snapshot (and freeze) the root filesystem unless asked to."""
    if not os.path.isdir(root):
        raise VolumeError(f"--containerd-root {root}: no such directory")
    mount = mount_of(os.path.realpath(root))
    if mount.mountpoint == "/" and not allow_root:
        raise UsageError(
            f"{root} is on the root filesystem: snapshot a separate data volume (Bottlerocket "
            "/dev/xvdb, or a secondary EBS volume mounted at /var/lib/containerd on AL2023); "
            "--allow-root-filesystem overrides"
        )


def check_volume_contents(root: str, kubelet_dir: str, allow_kubelet: bool) -> None:
    """Refuse to clone this node's kubelet identity onto every node booted from it."""
    pki = Path(kubelet_dir) / "pki"
    if allow_kubelet or not pki.is_dir():
        return
    if os.stat(pki).st_dev == os.stat(root).st_dev:
        raise UsageError(
            f"{pki} (this node's kubelet credentials) is on the same volume as {root}: every "
            "node restored from the snapshot would carry them. Build snapshots on a builder "
            "instance that never joined the cluster (`nodeagent snapshot build`), or pass "
            "--allow-kubelet-state if you clean the restored volume yourself"
        )
