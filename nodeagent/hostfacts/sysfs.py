"""Block devices from sysfs: through pyudev when it is installed, directly otherwise.

Both readers take the same attributes from the same sysfs files, without asking a running
udevd anything (udev's database is stale right after an EC2 stop/start and absent in many
containers). pyudev needs libudev.so.1 through ctypes; the single-file zipapp and minimal
hosts have neither pyudev nor always libudev, so the direct reader is the fallback, and
the only reader that can be pointed at a fake sysfs tree (tests do that). A VM test checks
that both readers report the same devices.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512


@dataclass(frozen=True)
class BlockDevice:
    """One whole disk (or md/dm device) as sysfs shows it."""

    name: str  # kernel name: nvme1n1, md127, vda
    devnum: str  # "259:1"
    size_bytes: int
    model: str = ""
    serial: str = ""
    readonly: bool = False
    removable: bool = False
    hidden: bool = False
    partitions: tuple[str, ...] = ()  # kernel names of partitions
    partition_devnums: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()  # devices built on top: md127, dm-0 (of disk or partitions)
    slaves: tuple[str, ...] = ()  # for md/dm: the devices below

    @property
    def is_nvme(self) -> bool:
        # nvme<ctrl>n<ns>; the nvme<c>c<x>n<ns> multipath paths are hidden and skipped.
        name = self.name
        return name.startswith("nvme") and "c" not in name[4:] and "n" in name[4:]

    @property
    def is_virtual(self) -> bool:
        return self.name.startswith(("loop", "ram", "zram", "md", "dm-", "nbd", "sr"))


def read_attr(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _int_attr(path: Path) -> int:
    text = read_attr(path)
    return int(text) if text.isdigit() else 0


def _partitions(disk_dir: Path) -> list[Path]:
    # Partitions are subdirectories carrying a "partition" attribute (nvme1n1p1/partition).
    try:
        entries = sorted(disk_dir.iterdir())
    except OSError:
        return []
    return [e for e in entries if (e / "partition").exists()]


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _identity(disk_dir: Path, attr: str) -> str:
    # NVMe and SCSI keep model/serial on the parent device; virtio-blk on the disk itself.
    return read_attr(disk_dir / "device" / attr) or read_attr(disk_dir / attr)


def device_from_dir(disk_dir: Path, model: str = "", serial: str = "") -> BlockDevice:
    """Build a BlockDevice from one whole-disk sysfs directory (/sys/block/<name>)."""
    parts = _partitions(disk_dir)
    holders = set(_listdir(disk_dir / "holders"))
    for part in parts:
        holders.update(_listdir(part / "holders"))
    return BlockDevice(
        name=disk_dir.name,
        devnum=read_attr(disk_dir / "dev"),
        size_bytes=_int_attr(disk_dir / "size") * SECTOR,
        model=model or _identity(disk_dir, "model"),
        serial=serial or _identity(disk_dir, "serial"),
        readonly=read_attr(disk_dir / "ro") == "1",
        removable=read_attr(disk_dir / "removable") == "1",
        hidden=read_attr(disk_dir / "hidden") == "1",
        partitions=tuple(p.name for p in parts),
        partition_devnums=tuple(read_attr(p / "dev") for p in parts),
        holders=tuple(sorted(holders)),
        slaves=tuple(_listdir(disk_dir / "slaves")),
    )


def read_sysfs(sysfs_root: Path) -> list[BlockDevice]:
    """Whole disks and md/dm devices under <sysfs_root>/block."""
    block = sysfs_root / "block"
    return [device_from_dir(block / name) for name in _listdir(block)]


def read_pyudev() -> list[BlockDevice]:
    """The same list through pyudev (libudev enumerates /sys; no udevd involved)."""
    import pyudev  # imported here: optional dependency, absent from the zipapp

    context = pyudev.Context()
    devices = []
    for dev in context.list_devices(subsystem="block", DEVTYPE="disk"):
        # An NVMe namespace's model and serial are its controller's attributes.
        ctrl = dev.find_parent("nvme")
        attrs = ctrl.attributes if ctrl is not None else None
        devices.append(device_from_dir(
            Path(dev.sys_path),
            model=_udev_attr(attrs, "model") if attrs else "",
            serial=_udev_attr(attrs, "serial") if attrs else "",
        ))
    return sorted(devices, key=lambda d: d.name)


def _udev_attr(attrs: object, name: str) -> str:
    try:
        return attrs.asstring(name).strip()  # type: ignore[attr-defined]
    except (KeyError, UnicodeDecodeError):
        return ""


def read_block_devices(sysfs_root: Path, prefer_pyudev: bool = True) -> tuple[
        list[BlockDevice], str]:
    """(devices, reader): pyudev on the real /sys when importable, else direct reads."""
    if prefer_pyudev and sysfs_root == Path("/sys"):
        # ImportError: no pyudev (zipapp, minimal host); OSError: pyudev without
        # libudev.so.1. Either way the same data is read directly below.
        with contextlib.suppress(ImportError, OSError):
            return read_pyudev(), "pyudev"
    return read_sysfs(sysfs_root), "sysfs"


def _whole_disk(node: Path) -> Path:
    """A partition's sysfs directory sits inside its disk's, with a "partition" file."""
    return node.parent if (node / "partition").exists() else node


def disk_dir(sysfs_root: Path, devnum: str) -> Path | None:
    """The whole-disk (or md/dm) sysfs directory of a device number, e.g. "259:3"."""
    try:
        target = (sysfs_root / "dev" / "block" / devnum).resolve(strict=True)
    except OSError:
        return None
    return _whole_disk(target)


def resolve_devnum(sysfs_root: Path, devnum: str) -> str | None:
    """The whole-disk (or md/dm) name for a devnum, e.g. "259:3" -> "nvme1n1"."""
    found = disk_dir(sysfs_root, devnum)
    return found.name if found is not None else None


def slave_dirs(disk: Path) -> list[Path]:
    """The whole-disk directories under an md/dm device (its slaves; partitions resolved
    to their disks), one level down."""
    found = []
    for name in _listdir(disk / "slaves"):
        with contextlib.suppress(OSError):
            found.append(_whole_disk((disk / "slaves" / name).resolve(strict=True)))
    return found


def lower_disks(sysfs_root: Path, name: str, seen: Iterable[str] = ()) -> set[str]:
    """The physical disks under a device: itself, or the slaves of md/dm, recursively."""
    slaves = _listdir(sysfs_root / "block" / name / "slaves")
    if not slaves:
        return {name}
    found: set[str] = set()
    for slave in slaves:
        if slave in seen:
            continue
        disk = _disk_of(sysfs_root, slave)
        found |= lower_disks(sysfs_root, disk, (*seen, name))
    return found


def _disk_of(sysfs_root: Path, name: str) -> str:
    """A partition's disk (nvme1n1p1 -> nvme1n1); other names unchanged."""
    entry = sysfs_root / "class" / "block" / name
    try:
        target = entry.resolve(strict=True)
    except OSError:
        # No class/block link: look for it as a partition directory of some disk.
        matches = list((sysfs_root / "block").glob(f"*/{name}/partition"))
        return matches[0].parent.parent.name if matches else name
    return _whole_disk(target).name
