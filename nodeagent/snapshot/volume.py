"""Which EBS volume holds a directory: mount point -> block device -> NVMe serial -> volume id.

The pure parts (mountinfo parsing, mount lookup, serial -> volume id, classification) take
text and values; the effectful parts read ``/proc/self/mountinfo`` and a sysfs tree whose
root is a parameter, so tests can build one. On Nitro instances every EBS volume is an
NVMe namespace whose controller has model "Amazon Elastic Block Store" and serial
``vol0123...`` (the volume id without its dash); instance store disks say
"Amazon EC2 NVMe Instance Storage". Xen instances expose ``xvd*`` devices without a
serial: those are resolved through EC2 attachments (see ec2.find_attached_volume).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.errors import NodeagentError

EBS_MODEL = "Amazon Elastic Block Store"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"
_EBS_SERIAL = re.compile(r"^vol-?([0-9a-f]{8,17})$")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class VolumeError(NodeagentError):
    """The directory is not on a single EBS volume (names the path and device)."""


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo."""

    mount_id: int
    major: int
    minor: int
    root: str  # path inside the filesystem that is mounted here (bind mounts)
    mount_point: str
    fstype: str
    source: str

    @property
    def dev(self) -> str:
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True)
class BlockDevice:
    """A whole disk (partitions are resolved to their disk) as sysfs describes it."""

    name: str  # kernel name: nvme1n1, xvdb, loop0, md127, dm-0
    kind: str  # "ebs", "instance-store", "xen", "loop", "virtual", "other"
    model: str = ""
    serial: str = ""
    backing: tuple[BlockDevice, ...] = field(default=())  # slaves of md/dm devices

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
    mount: MountInfo
    device: BlockDevice  # the EBS disk itself (dm/md with one backing disk resolved)
    volume_id: str | None  # None for Xen devices: resolve through EC2 attachments


# ----------------------------------------------------------------------------- pure parts


def _unescape(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse mountinfo text (proc(5)): optional fields end at the lone "-" separator."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        major, minor = parts[2].split(":")
        mounts.append(MountInfo(
            mount_id=int(parts[0]), major=int(major), minor=int(minor),
            root=_unescape(parts[3]), mount_point=_unescape(parts[4]),
            fstype=parts[sep + 1], source=_unescape(parts[sep + 2]),
        ))
    return mounts


def find_mount(mounts: list[MountInfo], path: str) -> MountInfo:
    """The mount that serves an absolute, symlink-free path: longest mount point prefix,
    and among equal mount points the last one mounted (it hides the earlier ones)."""
    best: MountInfo | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        contains = path == point or path.startswith(point if point == "/" else point + "/")
        if contains and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    if best is None:
        raise VolumeError(f"{path}: no mount in mountinfo contains this path")
    return best


def ebs_volume_id_from_serial(serial: str) -> str | None:
    """NVMe serial "vol0123456789abcdef0" -> EBS volume id "vol-0123456789abcdef0"."""
    match = _EBS_SERIAL.match(serial.strip())
    return f"vol-{match.group(1)}" if match else None


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


def pick_ebs_disk(device: BlockDevice, path: str) -> BlockDevice:
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


# -------------------------------------------------------------------------- sysfs effects


def _read_attr(directory: Path, name: str) -> str:
    try:
        return (directory / name).read_text().strip()
    except OSError:
        return ""


def _disk_dir(sysfs: Path, major: int, minor: int) -> Path:
    link = sysfs / "dev" / "block" / f"{major}:{minor}"
    if not link.exists():
        raise VolumeError(f"block device {major}:{minor} not found under {link.parent}")
    node = link.resolve()
    # A partition's sysfs dir sits inside its disk's dir and has a "partition" file.
    return node.parent if (node / "partition").exists() else node


def describe_disk(disk_dir: Path, depth: int = 0) -> BlockDevice:
    """BlockDevice for a whole-disk sysfs dir, following md/dm slaves down to real disks."""
    name = disk_dir.name
    identity = disk_dir / "device"  # NVMe namespace -> controller or subsystem dir
    model, serial = _read_attr(identity, "model"), _read_attr(identity, "serial")
    slaves_dir = disk_dir / "slaves"
    slaves = sorted(slaves_dir.iterdir()) if slaves_dir.is_dir() and depth < 8 else []
    backing = []
    for slave in slaves:
        node = slave.resolve()
        disk = node.parent if (node / "partition").exists() else node
        backing.append(describe_disk(disk, depth + 1))
    kind = classify_device(name, model, serial, bool(backing))
    return BlockDevice(name=name, kind=kind, model=model, serial=serial, backing=tuple(backing))


def discover_volume(
    path: str | os.PathLike[str],
    sysfs: str | os.PathLike[str] = "/sys",
    mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
) -> VolumeTarget:
    """Find the EBS volume that holds ``path`` (e.g. containerd's root)."""
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise VolumeError(f"{path}: no such directory")
    mount = find_mount(parse_mountinfo(Path(mountinfo).read_text()), real)
    if mount.major == 0:
        raise VolumeError(
            f"{path} is on {mount.fstype} {mount.source!r} (mounted at {mount.mount_point}), "
            "which is not a block device; the containerd root must be on an EBS volume"
        )
    device = describe_disk(_disk_dir(Path(sysfs), mount.major, mount.minor))
    disk = pick_ebs_disk(device, str(path))
    return VolumeTarget(path=real, mount=mount, device=disk, volume_id=disk.volume_id)


def mounted_device(
    path: str | os.PathLike[str],
    sysfs: str | os.PathLike[str] = "/sys",
    mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo",
) -> str:
    """The /dev node of the block device mounted where ``path`` lives (partition or disk)."""
    real = os.path.realpath(path)
    mount = find_mount(parse_mountinfo(Path(mountinfo).read_text()), real)
    if mount.major == 0:
        raise VolumeError(f"{path} is on {mount.fstype}, which is not a block device")
    uevent = Path(sysfs) / "dev" / "block" / mount.dev / "uevent"
    for line in _read_attr(uevent.parent, "uevent").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return "/dev/" + value
    raise VolumeError(f"{path}: no device name for block device {mount.dev} in {uevent}")
