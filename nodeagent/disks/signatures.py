"""What a device holds, read from its own superblocks (no udev, no caches).

The signatures nodeagent itself writes (md v1.x RAID members, XFS, ext4) are parsed
directly from the device head/tail: cheap (no subprocess, which keeps an idempotent
re-run fast) and independent of udev's database, which still describes the disks as they
were before an EC2 stop/start. A device whose first and last MiB are all zeros is blank.
Anything else goes to `blkid -p` (libblkid's low-level probe, which knows every
filesystem, partition table, LVM, LUKS, swap ...): nodeagent never calls a disk blank
while either finds something on it.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import subprocess
import uuid
from collections.abc import Callable

from nodeagent.disks.model import BLANK, MdMember, Signature
from nodeagent.errors import NodeagentError

log = logging.getLogger(__name__)

MD_MAGIC = 0xA92B4EFC
XFS_MAGIC = b"XFSB"
EXT_MAGIC = 0xEF53
ALIGN = 4096  # O_DIRECT alignment that works on every block device we meet
EDGE = 1 << 20  # bytes read at each end of a device

# Probes a device for signatures nodeagent does not parse itself; returns blkid's
# key=value export, or {} when it finds nothing. Tests may pass their own.
BlkidProbe = Callable[[str], dict[str, str]]


class ProbeError(NodeagentError):
    """A device could not be read or probed."""


def probe(path: str, size_bytes: int, blkid: BlkidProbe | None = None) -> Signature:
    """Signature of the device at `path` (a block device or, in tests, an image file)."""
    try:
        head, tail = _read_head_tail(path, size_bytes)
    except OSError as exc:
        raise ProbeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    found = parse_superblocks(head, tail, size_bytes)
    if found is not None:
        return found
    if _all_zero(head) and _all_zero(tail):
        # Every signature libblkid knows lives in the first or last MiB (partition tables
        # and their backups, LVM, LUKS, ZFS labels, md 1.0, DDF ...): zeros there mean
        # blank, as instance store arrives, without a blkid run per disk.
        return Signature(kind="blank", source="zeros")
    probe_other = blkid if blkid is not None else blkid_probe
    return from_blkid(probe_other(path))


def _all_zero(data: bytes) -> bool:
    return not data.strip(b"\0")


def parse_superblocks(head: bytes, tail: bytes, size_bytes: int) -> Signature | None:
    """md / XFS / ext2-4 from the first and the last MiB of a device."""
    md = _md_from_head(head) or _md_from_tail(tail, size_bytes)
    if md is not None:
        return Signature(kind="md", fstype="linux_raid_member", uuid=md.array_uuid,
                         label=md.name, md=md)
    return _xfs(head) or _ext(head)


def _read_head_tail(path: str, size_bytes: int) -> tuple[bytes, bytes]:
    tail_len = min(EDGE, size_bytes)
    tail_off = max(0, (size_bytes - tail_len) // ALIGN * ALIGN)
    fd = _open_uncached(path)
    try:
        head = _pread(fd, EDGE, 0)
        tail = _pread(fd, size_bytes - tail_off, tail_off) if size_bytes else b""
    finally:
        os.close(fd)
    return head, tail


def _open_uncached(path: str) -> int:
    # O_DIRECT: the kernel's md driver writes member superblocks with bios that bypass
    # the block device's page cache, so a buffered read could return a stale (blank)
    # head. Regular files on tmpfs refuse O_DIRECT; they have no such problem.
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _pread(fd: int, length: int, offset: int) -> bytes:
    rounded = max(ALIGN, -(-length // ALIGN) * ALIGN)
    buf = mmap.mmap(-1, rounded)  # page aligned, as O_DIRECT requires
    try:
        got = os.preadv(fd, [buf], offset)
        return bytes(buf[: min(got, length)])
    finally:
        buf.close()


# md v1.x superblock (struct mdp_superblock_1 in the kernel's md_p.h).
_MD_OFFSETS_HEAD = {"1.1": 0, "1.2": 4096}


def _md_from_head(head: bytes) -> MdMember | None:
    for version, off in _MD_OFFSETS_HEAD.items():
        member = _md_parse(head[off:], version)
        if member:
            return member
    return None


def _md_from_tail(tail: bytes, size_bytes: int) -> MdMember | None:
    # v1.0 sits 8-16 KiB before the end, 4 KiB aligned.
    sectors = size_bytes // 512
    sb_off = ((sectors - 16) & ~7) * 512 if sectors > 16 else -1
    tail_start = size_bytes - len(tail)
    if sb_off < tail_start:
        return None
    return _md_parse(tail[sb_off - tail_start:], "1.0")


def _md_parse(sb: bytes, version: str) -> MdMember | None:
    if len(sb) < 256 or struct.unpack_from("<I", sb, 0)[0] != MD_MAGIC:
        return None
    if struct.unpack_from("<I", sb, 4)[0] != 1:
        return None  # 0.90 metadata lives elsewhere; blkid reports it as foreign
    max_dev = struct.unpack_from("<I", sb, 220)[0]
    if max_dev > 1920 or 256 + 2 * max_dev > len(sb) or not _md_csum_ok(sb, max_dev):
        return None
    set_uuid = sb[16:32].hex()
    name = sb[32:64].split(b"\0", 1)[0].decode("utf-8", "replace")
    level = struct.unpack_from("<i", sb, 72)[0]
    chunk = struct.unpack_from("<I", sb, 88)[0] * 512
    raid_disks = struct.unpack_from("<I", sb, 92)[0]
    dev_number = struct.unpack_from("<I", sb, 160)[0]
    events = struct.unpack_from("<Q", sb, 200)[0]
    role = 0xFFFF
    if dev_number < max_dev:
        role = struct.unpack_from("<H", sb, 256 + 2 * dev_number)[0]
    return MdMember(array_uuid=md_uuid_text(set_uuid), name=name, level=level,
                    raid_disks=raid_disks, role=role, events=events, chunk_bytes=chunk,
                    version=version)


def _md_csum_ok(sb: bytes, max_dev: int) -> bool:
    length = 256 + 2 * max_dev
    data = bytearray(sb[:length])
    stored = struct.unpack_from("<I", data, 216)[0]
    struct.pack_into("<I", data, 216, 0)
    if length % 4:
        data += b"\0" * (4 - length % 4)
    total = sum(struct.unpack(f"<{len(data) // 4}I", data))
    total = (total & 0xFFFFFFFF) + (total >> 32)
    return (total & 0xFFFFFFFF) == stored


def md_uuid_text(hex32: str) -> str:
    """mdadm's spelling of an array uuid: four colon-separated 8-digit groups."""
    h = hex32.replace("-", "").replace(":", "").lower()
    return ":".join(h[i:i + 8] for i in range(0, 32, 8))


def _xfs(head: bytes) -> Signature | None:
    if head[:4] != XFS_MAGIC or len(head) < 128:
        return None
    label = head[108:120].split(b"\0", 1)[0].decode("utf-8", "replace")
    return Signature(kind="filesystem", fstype="xfs", uuid=str(uuid.UUID(bytes=head[32:48])),
                     label=label, incomplete=head[126] != 0)


def _ext(head: bytes) -> Signature | None:
    sb = head[1024:2048]
    if len(sb) < 256 or struct.unpack_from("<H", sb, 56)[0] != EXT_MAGIC:
        return None
    compat, incompat = struct.unpack_from("<II", sb, 92)
    # extents/64bit/flex_bg make it ext4; has_journal alone ext3.
    journal = "ext3" if compat & 0x4 else "ext2"
    fstype = "ext4" if incompat & (0x40 | 0x80 | 0x200) else journal
    label = sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")
    return Signature(kind="filesystem", fstype=fstype, uuid=str(uuid.UUID(bytes=sb[104:120])),
                     label=label)


def blkid_probe(path: str) -> dict[str, str]:
    """`blkid -p`: libblkid's low-level probe of the device itself (ignores its cache)."""
    try:
        proc = subprocess.run(["blkid", "-p", "-o", "export", path], capture_output=True,
                              text=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise ProbeError("blkid (util-linux) is needed to check disks for existing data; "
                         "install util-linux") from exc
    if proc.returncode == 2:
        return {}  # nothing found
    if proc.returncode == 8:
        return {"TYPE": "ambivalent", "DETAIL": proc.stderr.strip()}
    if proc.returncode != 0:
        raise ProbeError(f"blkid -p {path} failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip()}")
    pairs = (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def from_blkid(found: dict[str, str]) -> Signature:
    if not found:
        return BLANK
    fstype = found.get("TYPE") or found.get("PTTYPE") or "unknown"
    if "PTTYPE" in found and "TYPE" not in found:
        fstype = f"{found['PTTYPE']} partition table"
    kind = "filesystem" if found.get("USAGE") == "filesystem" else "other"
    return Signature(kind=kind, fstype=fstype, uuid=found.get("UUID", ""),
                     label=found.get("LABEL", ""), source="blkid")
