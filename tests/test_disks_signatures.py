"""The disk code's readers on this host: superblock parsing against real tools (mdadm,
blkid, mkfs, mkswap), and the sysfs readers (pyudev and direct) against this host's
/sys and fake sysfs trees. (The RAID work itself is proven in the VM:
tests/test_disks_vm.py.)
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from support.disks_fakes import INSTANCE_STORE, MIB, FakeNode, md_superblock

from nodeagent.disks import signatures
from nodeagent.hostfacts import sysfs


def image(tmp_path: Path, name: str, size: int = 64 * MIB) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# ------------------------------------------------------------------ signatures


def test_md_superblock_fixture_is_what_mdadm_and_blkid_read(tmp_path):
    """The md superblocks the fake nodes use are real: mdadm and libblkid accept them."""
    path = image(tmp_path, "m.img")
    set_uuid = uuid.uuid4().bytes
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(md_superblock("any:kubernetes", 0, 4, 2, set_uuid, 64 * MIB, events=7))
    out = subprocess.run(["mdadm", "--examine", "--export", str(path)], check=True,
                         capture_output=True, text=True).stdout
    exported = dict(line.split("=", 1) for line in out.splitlines())
    assert exported["MD_NAME"] == "any:kubernetes"
    assert exported["MD_LEVEL"] == "raid0" and exported["MD_DEVICES"] == "4"
    sig = signatures.probe(str(path), 64 * MIB)
    assert sig.md is not None
    assert sig.md.array_uuid == exported["MD_UUID"]
    assert (sig.md.short_name, sig.md.role, sig.md.events, sig.md.raid_disks) == (
        "kubernetes", 2, 7, 4)
    assert sig.md.chunk_bytes == 256 * 1024
    assert signatures.blkid_probe(str(path))["TYPE"] == "linux_raid_member"


def test_md_superblock_with_bad_checksum_is_not_trusted(tmp_path):
    path = image(tmp_path, "m.img")
    sb = bytearray(md_superblock("any:kubernetes", 0, 2, 0, uuid.uuid4().bytes, 64 * MIB))
    sb[40] ^= 0xFF  # corrupt the name
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(sb)
    # Never taken for ours (the name could be anything); blkid still sees a RAID member,
    # so the plan treats the disk as holding foreign data and refuses it.
    sig = signatures.probe(str(path), 64 * MIB)
    assert sig.md is None
    assert (sig.kind, sig.fstype, sig.source) == ("other", "linux_raid_member", "blkid")


def test_md_v10_superblock_at_the_end_is_found(tmp_path):
    size = 64 * MIB
    path = image(tmp_path, "m.img", size)
    sectors = size // 512
    with open(path, "r+b") as f:
        f.seek(((sectors - 16) & ~7) * 512)
        f.write(md_superblock("any:kubernetes", 0, 2, 1, uuid.uuid4().bytes, size))
    sig = signatures.probe(str(path), size)
    assert sig.md is not None and sig.md.version == "1.0" and sig.md.role == 1


@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_filesystems_made_by_mkfs_are_parsed(tmp_path, fstype):
    node = FakeNode(tmp_path)
    node.add_disk("nvme1n1", size_mib=320)
    fs_uuid = node.mkfs("nvme1n1", fstype, label="k8s-disks-0")
    sig = signatures.probe(str(node.image("nvme1n1")), 320 * MIB)
    assert (sig.kind, sig.fstype, sig.uuid, sig.label, sig.source) == (
        "filesystem", fstype, fs_uuid, "k8s-disks-0", "superblock")


def test_unknown_signatures_come_from_blkid(tmp_path):
    path = image(tmp_path, "swap.img")
    subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
    sig = signatures.probe(str(path), 64 * MIB)
    assert (sig.kind, sig.fstype, sig.source) == ("other", "swap", "blkid")
    assert signatures.probe(str(image(tmp_path, "blank.img")), 64 * MIB).blank


def test_missing_device_is_a_clear_error(tmp_path):
    with pytest.raises(signatures.ProbeError, match=r"cannot read .*nvme9n1"):
        signatures.probe(str(tmp_path / "nvme9n1"), MIB)


# ------------------------------------------------------------------ discovery readers


def test_pyudev_and_direct_sysfs_readers_agree_on_this_host():
    pytest.importorskip("pyudev")
    direct = [d for d in sysfs.read_sysfs(Path("/sys"))]
    through_udev, reader = sysfs.read_block_devices(Path("/sys"))
    assert reader == "pyudev"
    assert through_udev == direct


def test_fake_sysfs_partitions_holders_and_devnums(tmp_path):
    node = FakeNode(tmp_path)
    node.add_disk("nvme1n1", serial="AWS1", partitions=2)
    (node.sys / "block/nvme1n1/nvme1n1p2/holders/dm-3").write_text("")
    [disk] = sysfs.read_sysfs(node.sys)
    assert disk.model == INSTANCE_STORE and disk.serial == "AWS1"
    assert disk.partitions == ("nvme1n1p1", "nvme1n1p2")
    assert disk.holders == ("dm-3",)
    assert sysfs.resolve_devnum(node.sys, disk.partition_devnums[0]) == "nvme1n1"
