"""Volume discovery: mountinfo parsing, sysfs trees built here shaped like a Nitro
instance's (NVMe EBS / instance store, partitions, md/dm, Xen), and the real mapping of a
loop-mounted XFS (and a bind mount of it) through /proc/self/mountinfo and /sys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from loopfs import loop_xfs

from nodeagent.snapshot.volume import (
    EBS_MODEL,
    INSTANCE_STORE_MODEL,
    VolumeError,
    discover_volume,
    ebs_volume_id_from_serial,
    find_mount,
    parse_mountinfo,
)

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


# ------------------------------------------------------------------ pure parts


def test_parse_mountinfo_handles_optional_fields_and_escapes() -> None:
    text = (
        "36 35 98:0 /mnt1 /mnt/my\\040disk rw,noatime master:1 shared:3 - ext3 /dev/root rw\n"
        "37 35 0:40 / /run rw - tmpfs tmpfs rw\n"
        "garbage line\n"
    )
    first, second = parse_mountinfo(text)
    assert (first.major, first.minor, first.root) == (98, 0, "/mnt1")
    assert first.mount_point == "/mnt/my disk"
    assert (first.fstype, first.source) == ("ext3", "/dev/root")
    assert second.dev == "0:40"


def test_find_mount_longest_prefix_and_last_mounted_wins() -> None:
    mounts = parse_mountinfo(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "2 1 8:2 / /var/lib rw - xfs /dev/sda2 rw\n"
        "3 1 8:3 / /var/lib/containerd rw - xfs /dev/sdb rw\n"
        "4 1 8:4 / /var/lib/containerd rw - xfs /dev/sdc rw\n"
        "5 1 8:5 / /var/lib/containerd-other rw - xfs /dev/sdd rw\n"
    )
    assert find_mount(mounts, "/var/lib/containerd/io.containerd.content.v1.content").source \
        == "/dev/sdc"
    assert find_mount(mounts, "/var/lib/kubelet").source == "/dev/sda2"
    assert find_mount(mounts, "/etc").source == "/dev/sda1"


def test_serial_to_volume_id() -> None:
    assert ebs_volume_id_from_serial(VOL) == "vol-0123456789abcdef0"
    assert ebs_volume_id_from_serial("vol-0123456789abcdef0 ") == "vol-0123456789abcdef0"
    assert ebs_volume_id_from_serial("AWS1234567890ABCDEF") is None


# ------------------------------------------------------------------ sysfs trees


def test_nvme_ebs_volume(sysfs: FakeSysfs, data_dir: Path, tmp_path: Path) -> None:
    sysfs.nvme("nvme1", "259:1", EBS_MODEL, VOL)
    target = discover_volume(data_dir, sysfs.root, mountinfo_file(tmp_path, data_dir, "259:1"))
    assert target.volume_id == "vol-0123456789abcdef0"
    assert target.device.name == "nvme1n1"
    assert target.mount.mount_point == str(data_dir)


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
        assert mount.mount_point == str(xfs.mount_point)
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
            assert mount.mount_point == str(bind)
            assert mount.root == "/local/var-lib-containerd"
            assert mount.source == xfs.device
        finally:
            subprocess.run(["umount", str(bind)], check=True)
