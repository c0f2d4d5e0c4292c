"""A fake node for the disk code's unit tests: a sysfs tree, /dev files and /proc files.

The sysfs tree mirrors the kernel's layout (block/<disk>/{dev,size,device/model,holders,
slaves,<partition>/partition}, class/block and dev/block links, md/ attributes). Device
"nodes" are sparse image files; their signatures are written by the real tools (mkfs.xfs,
mkfs.ext4) or, for md superblocks (no md driver on this host), by `md_superblock`, whose
output the tests check with the real `mdadm --examine` and `blkid -p`.
"""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.disks.host import Host

INSTANCE_STORE = "Amazon EC2 NVMe Instance Storage"
EBS = "Amazon Elastic Block Store"
MIB = 1 << 20


def md_superblock(name: str, level: int, raid_disks: int, role: int, set_uuid: bytes,
                  size_bytes: int, events: int = 1, chunk_kib: int = 256) -> bytes:
    """An md v1.2 superblock (struct mdp_superblock_1) with a valid checksum."""
    max_dev = 384
    sb = bytearray(256 + max_dev * 2)
    struct.pack_into("<IIII", sb, 0, 0xA92B4EFC, 1, 0, 0)
    sb[16:32] = set_uuid
    sb[32:64] = name.encode().ljust(32, b"\0")
    struct.pack_into("<Q", sb, 64, 1700000000)
    struct.pack_into("<iI", sb, 72, level, 2 if level == 10 else 0)
    data_offset = 2048
    data_size = size_bytes // 512 - data_offset
    struct.pack_into("<Q", sb, 80, data_size)
    struct.pack_into("<II", sb, 88, chunk_kib * 2, raid_disks)
    struct.pack_into("<QQQ", sb, 128, data_offset, data_size, 8)
    struct.pack_into("<I", sb, 160, role)
    sb[168:184] = uuid.uuid4().bytes
    struct.pack_into("<QQ", sb, 192, 1700000000, events)
    struct.pack_into("<Q", sb, 208, 2**64 - 1)
    struct.pack_into("<I", sb, 220, max_dev)
    for i in range(max_dev):
        struct.pack_into("<H", sb, 256 + 2 * i, i if i < raid_disks else 0xFFFF)
    total = sum(struct.unpack(f"<{len(sb) // 4}I", sb))
    total = (total & 0xFFFFFFFF) + (total >> 32)
    struct.pack_into("<I", sb, 216, total & 0xFFFFFFFF)
    return bytes(sb)


def mbr_with_one_partition() -> bytes:
    mbr = bytearray(512)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 20480)
    struct.pack_into("<I", mbr, 440, 0x1234ABCD)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


@dataclass
class FakeNode:
    base: Path
    minor: int = 0
    mountinfo: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for sub in ("sys/block", "sys/class/block", "sys/dev/block", "dev", "root", "proc"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "proc" / "swaps").write_text("Filename Type Size Used Priority\n")
        self.mount("254:1", "/", fstype="ext4", source="/dev/vda1")

    @property
    def sys(self) -> Path:
        return self.base / "sys"

    @property
    def root(self) -> Path:
        return self.base / "root"

    def host(self) -> Host:
        self._write_mountinfo()
        return Host(root=self.root, sysfs=self.sys, dev=self.base / "dev",
                    proc_mountinfo=self.base / "proc" / "mountinfo",
                    proc_swaps=self.base / "proc" / "swaps",
                    state_file="/run/nodeagent/disks-setup.json")

    def _devnum(self) -> str:
        self.minor += 1
        return f"259:{self.minor}"

    def _attrs(self, d: Path, **attrs: object) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for key, value in attrs.items():
            (d / key).write_text(f"{value}\n")

    def _link(self, kind: str, name: str, target: Path) -> None:
        link = self.sys / kind / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))

    def add_disk(self, name: str, model: str = INSTANCE_STORE, serial: str = "",
                 size_mib: int = 512, partitions: int = 0) -> str:
        """A whole disk with a blank sparse image at dev/<name>; returns its devnum."""
        d = self.sys / "block" / name
        devnum = self._devnum()
        self._attrs(d, dev=devnum, size=size_mib * MIB // 512, ro=0, removable=0)
        self._attrs(d / "device", model=f"{model:<40}", serial=f"{serial or name:<20}")
        (d / "holders").mkdir()
        (d / "slaves").mkdir()
        self._link("class/block", name, d)
        self._link("dev/block", devnum, d)
        with open(self.base / "dev" / name, "wb") as f:
            f.truncate(size_mib * MIB)
        for i in range(1, partitions + 1):
            self.add_partition(name, f"{name}p{i}" if name[-1].isdigit() else f"{name}{i}")
        if partitions:
            self.write(name, 0, mbr_with_one_partition())
        return devnum

    def add_partition(self, disk: str, part: str) -> str:
        d = self.sys / "block" / disk / part
        devnum = self._devnum()
        self._attrs(d, dev=devnum, size=20480, partition=1)
        (d / "holders").mkdir()
        self._link("class/block", part, d)
        self._link("dev/block", devnum, d)
        return devnum

    def devnum(self, name: str) -> str:
        entry = (self.sys / "class" / "block" / name).resolve()
        return (entry / "dev").read_text().strip()

    def write(self, name: str, offset: int, data: bytes) -> None:
        with open(self.base / "dev" / name, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def image(self, name: str) -> Path:
        return self.base / "dev" / name

    def mkfs(self, name: str, fstype: str = "xfs", label: str = "") -> str:
        """Real mkfs on the image; returns the filesystem UUID."""
        path = str(self.image(name))
        label_args = ["-L", label] if label else []
        if fstype == "xfs":
            argv = ["mkfs.xfs", "-q", "-f", *label_args, path]
        else:
            argv = ["mkfs.ext4", "-q", "-F", *label_args, path]
        subprocess.run(argv, check=True, capture_output=True)
        out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", path],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def add_md_members(self, names: list[str], array_name: str = "any:kubernetes",
                       level: int = 0, raid_disks: int | None = None,
                       set_uuid: bytes | None = None) -> str:
        set_uuid = set_uuid or uuid.uuid4().bytes
        for role, name in enumerate(names):
            size = os.path.getsize(self.image(name))
            self.write(name, 4096, md_superblock(array_name, level, raid_disks or len(names),
                                                 role, set_uuid, size))
        h = set_uuid.hex()
        return ":".join(h[i:i + 8] for i in range(0, 32, 8))

    def add_md(self, name: str, members: list[str], level: str = "raid0",
               state: str = "clean", size_mib: int = 1024) -> str:
        """An md device the kernel runs over members (their holders point at it)."""
        d = self.sys / "block" / name
        devnum = f"9:{127 - len(list(self.sys.glob('block/md*')))}"
        self._attrs(d, dev=devnum, size=size_mib * MIB // 512 if state != "inactive" else 0,
                    ro=0, removable=0)
        self._attrs(d / "md", array_state=state, level=level if state != "inactive" else "",
                    raid_disks=len(members), chunk_size=256 * 1024)
        (d / "holders").mkdir()
        (d / "slaves").mkdir()
        for m in members:
            (d / "slaves" / m).write_text("")
            (self.sys / "block" / m / "holders" / name).write_text("")
        self._link("class/block", name, d)
        self._link("dev/block", devnum, d)
        with open(self.base / "dev" / name, "wb") as f:
            f.truncate(size_mib * MIB if state != "inactive" else 0)
        return devnum

    def mount(self, devnum: str, mountpoint: str, root: str = "/", fstype: str = "xfs",
              source: str = "/dev/x") -> None:
        n = len(self.mountinfo) + 20
        self.mountinfo.append(f"{n} 1 {devnum} {root} {mountpoint} rw,noatime shared:{n} - "
                              f"{fstype} {source} rw")
        self._write_mountinfo()

    def _write_mountinfo(self) -> None:
        (self.base / "proc" / "mountinfo").write_text("\n".join(self.mountinfo) + "\n")

    def mkdir(self, host_path: str, files: dict[str, bytes] | None = None) -> Path:
        p = self.root / host_path.lstrip("/")
        p.mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            (p / name).write_bytes(data)
        return p

    def running(self, *process_names: str) -> None:
        for i, name in enumerate(process_names, start=100):
            d = self.root / "proc" / str(i)
            d.mkdir(parents=True, exist_ok=True)
            (d / "comm").write_text(name + "\n")
