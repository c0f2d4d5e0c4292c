"""Volume discovery: sysfs trees built here shaped like a Nitro
instance's (NVMe EBS / instance store, partitions, md/dm, Xen), and the real mapping of a
loop-mounted XFS (and a bind mount of it) through /proc/self/mountinfo and /sys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support.loopfs import loop_xfs

from nodeagent.hostfacts.mountinfo import find_mount, parse_mountinfo
from nodeagent.hostfacts.nvme import EBS_MODEL, INSTANCE_STORE_MODEL
from nodeagent.snapshot.volume import VolumeError, discover_volume

VOL = "vol0123456789abcdef0"


class FakeSysfs:
    """A sysfs tree with the same links and attribute files the kernel exposes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "dev" / "block").mkdir(parents=True)

    def _link(self, dev: str, target: Path) -> None:
        link = self.root / "dev" / "block" / dev
        link.symlink_to(os.path.relpath(target, link.parent))

    def nvme(self, ctrl: str, dev: str, model: str, serial: str) -> Path:
        ctrl_dir = self.root / "devices/pci0000:00/0000:00:1f.0/nvme" / ctrl
        disk = ctrl_dir / f"{ctrl}n1"
        disk.mkdir(parents=True)
        (ctrl_dir / "model").write_text(model.ljust(40) + "\n")  # the kernel pads with spaces
        (ctrl_dir / "serial").write_text(serial.ljust(20) + "\n")
        (disk / "device").symlink_to(f"../../{ctrl}")
        self._link(dev, disk)
        return disk

    def partition(self, disk: Path, number: int, dev: str) -> None:
        part = disk / f"{disk.name}p{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        self._link(dev, part)

    def virtual(self, name: str, dev: str, slaves: list[Path]) -> None:
        node = self.root / "devices/virtual/block" / name
        (node / "slaves").mkdir(parents=True)
        for slave in slaves:
            (node / "slaves" / slave.name).symlink_to(os.path.relpath(slave, node / "slaves"))
        self._link(dev, node)

    def xen(self, name: str, dev: str) -> None:
        node = self.root / "devices/vbd-51728/block" / name
        node.mkdir(parents=True)
        self._link(dev, node)


def mountinfo_file(tmp_path: Path, mount_point: Path, dev: str, fstype: str = "xfs") -> Path:
    text = (
        "22 1 259:0 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw\n"
        f"40 22 {dev} / {mount_point} rw,noatime shared:9 master:2 - {fstype} /dev/x rw\n"
    )
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var-lib-containerd"
    path.mkdir()
    return path


# ------------------------------------------------------------------ sysfs trees


def test_nvme_ebs_volume(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    sysfs.nvme("nvme1", "259:1", EBS_MODEL, VOL)
    target = discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "259:1"))
    assert target.volume_id == "vol-0123456789abcdef0"
    assert target.device.name == "nvme1n1"
    assert target.mount.mountpoint == str(data_dir)


def test_partition_resolves_to_its_disk(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    disk = sysfs.nvme("nvme1", "259:1", EBS_MODEL, VOL)
    sysfs.partition(disk, 1, "259:2")
    target = discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "259:2"))
    assert target.volume_id == "vol-0123456789abcdef0"


def test_instance_store_is_refused(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    sysfs.nvme("nvme1", "259:1", INSTANCE_STORE_MODEL, "AWS1F2E3D4C5B6A7980")
    with pytest.raises(VolumeError, match=r"/dev/nvme1n1.*instance-store"):
        discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "259:1"))


def test_raid_over_two_volumes_is_refused(sysfs: FakeSysfs, data_dir: Path,
                                          tmp_path: Path) -> None:
    a = sysfs.nvme("nvme1", "259:1", EBS_MODEL, VOL)
    b = sysfs.nvme("nvme2", "259:3", EBS_MODEL, "vol0aaaaaaaaaaaaaaaa0")
    sysfs.virtual("md127", "9:127", [a, b])
    with pytest.raises(VolumeError, match=r"md127, which spans 2 disks"):
        discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "9:127"))


def test_raid_over_instance_store_is_refused(sysfs: FakeSysfs, data_dir: Path,
                                             tmp_path: Path) -> None:
    a = sysfs.nvme("nvme1", "259:1", INSTANCE_STORE_MODEL, "AWS1")
    sysfs.virtual("md127", "9:127", [a])
    with pytest.raises(VolumeError, match="instance-store"):
        discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "9:127"))


def test_lvm_on_one_ebs_volume(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    disk = sysfs.nvme("nvme1", "259:1", EBS_MODEL, VOL)
    sysfs.virtual("dm-0", "253:0", [disk])
    target = discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "253:0"))
    assert target.volume_id == "vol-0123456789abcdef0"


def test_xen_device_needs_ec2_lookup(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    sysfs.xen("xvdb", "202:16")
    target = discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "202:16"))
    assert (target.device.kind, target.device.name, target.volume_id) == ("xen", "xvdb", None)


def test_not_a_block_device(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"overlay.*not a block device"):
        discover_volume(data_dir, sysfs.root,
                        mountinfo_file(tmp_path, data_dir, "0:52", fstype="overlay"))


def test_missing_directory(sysfs: FakeSysfs, tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="no such directory"):
        discover_volume(tmp_path / "absent", sysfs.root, tmp_path / "mountinfo")


# ------------------------------------------------------------------ the real thing


def test_real_loop_mount_maps_through_mountinfo(tmp_path: Path) -> None:
    with loop_xfs(tmp_path) as xfs:
        sub = xfs.mount_point / "var" / "lib" / "containerd"
        sub.mkdir(parents=True)
        mount = find_mount(parse_mountinfo(Path("/proc/self/mountinfo").read_text()), str(sub))
        st = os.stat(sub)
        assert (mount.major, mount.minor) == (os.major(st.st_dev), os.minor(st.st_dev))
        assert mount.mountpoint == str(xfs.mount_point)
        assert mount.source == xfs.device
        with pytest.raises(VolumeError, match=rf"{xfs.device}\b.*not an EBS volume"):
            discover_volume(sub)


def test_real_bind_mount_maps_to_the_same_device(tmp_path: Path) -> None:
    with loop_xfs(tmp_path) as xfs:
        src = xfs.mount_point / "local" / "var-lib-containerd"
        src.mkdir(parents=True)
        bind = tmp_path / "bind"
        bind.mkdir()
        subprocess.run(["mount", "--bind", str(src), str(bind)], check=True)
        try:
            mount = find_mount(parse_mountinfo(Path("/proc/self/mountinfo").read_text()),
                               str(bind))
            assert mount.mountpoint == str(bind)
            assert mount.root == "/local/var-lib-containerd"
            assert mount.source == xfs.device
        finally:
            subprocess.run(["umount", str(bind)], check=True)
