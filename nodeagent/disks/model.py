"""Facts about a node's disks, as discovery finds them (plain data, no I/O).

discover.py fills these in from the host facts (nodeagent/hostfacts: sysfs, mountinfo)
and the device heads (signatures.py); plan.py decides from them alone, so the plan can
be computed (and tested) over a fake sysfs tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.hostfacts.mountinfo import MountEntry
from nodeagent.hostfacts.sysfs import BlockDevice


@dataclass(frozen=True)
class MdMember:
    """An md (Linux software RAID) v1.x superblock found on a disk."""

    array_uuid: str  # "bb78b5ca:af586765:03771903:589fc5ac", mdadm's spelling
    name: str  # stored name, e.g. "any:kubernetes" (homehost:name) or "kubernetes"
    level: int  # 0 = raid0, 10 = raid10, 1 = raid1 ...
    raid_disks: int
    role: int  # slot in the array; 0xffff/0xfffe = spare/faulty
    events: int
    chunk_bytes: int
    version: str  # "1.0" | "1.1" | "1.2"

    @property
    def short_name(self) -> str:
        """The name without its homehost prefix (what --name= was)."""
        return self.name.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class Signature:
    """What the head (and tail) of a device says it holds.

    kind: "blank" (nothing found), "md" (RAID member), "filesystem" (xfs/ext4/... known),
    "other" (anything else blkid recognises: partition table, LVM, LUKS, swap ...).
    """

    kind: str
    fstype: str = ""  # xfs, ext4, linux_raid_member, gpt, LVM2_member, ...
    uuid: str = ""
    label: str = ""
    incomplete: bool = False  # e.g. an XFS superblock still flagged "mkfs in progress"
    md: MdMember | None = None
    source: str = "superblock"  # "superblock" (read directly) or "blkid"

    @property
    def blank(self) -> bool:
        return self.kind == "blank"

    def describe(self) -> str:
        if self.kind == "blank":
            return "no signature"
        if self.md:
            return f"md member of '{self.md.name}' (uuid {self.md.array_uuid})"
        text = self.fstype or self.kind
        if self.label:
            text += f" label '{self.label}'"
        if self.uuid:
            text += f" uuid {self.uuid}"
        if self.incomplete:
            text += " (unfinished mkfs)"
        return text


BLANK = Signature(kind="blank", source="superblock")


@dataclass(frozen=True)
class MdArray:
    """An md device the kernel knows (active or inactive)."""

    name: str  # md127
    devnum: str
    state: str  # array_state: clean, active, inactive, readonly, ...
    level: str  # raid0, raid10, "" when inactive
    raid_disks: int
    members: tuple[str, ...]  # disk names (slaves)
    degraded: int  # missing/failed members (raid10); 0 for raid0
    size_bytes: int
    chunk_bytes: int
    uuid: str = ""  # array uuid in mdadm's spelling, from sysfs or a member superblock
    array_name: str = ""  # stored name from a member superblock ("any:kubernetes")
    filesystem: Signature = BLANK

    @property
    def active(self) -> bool:
        return self.state not in ("inactive", "clear", "")

    @property
    def short_name(self) -> str:
        return self.array_name.rsplit(":", 1)[-1]


@dataclass(frozen=True)
class DirState:
    """A directory to be bound onto the local volume (e.g. /var/lib/containerd)."""

    path: str
    exists: bool
    is_dir: bool
    is_symlink: bool
    mount: MountEntry | None  # what is mounted exactly at this path, if anything


@dataclass(frozen=True)
class Facts:
    """Everything plan() needs, gathered in one pass."""

    disks: tuple[BlockDevice, ...]
    signatures: dict[str, Signature]  # by disk name
    arrays: tuple[MdArray, ...]
    mounts: tuple[MountEntry, ...]
    swaps: tuple[str, ...]  # devnums in use as swap
    root_devnum: str  # devnum of the filesystem mounted at /
    dirs: dict[str, DirState] = field(default_factory=dict)  # bind dirs, by path
    volume_dirs: dict[str, bool] = field(default_factory=dict)  # target path -> complete
    units: dict[str, str] = field(default_factory=dict)  # unit file name -> current text
    # a --mount-path or --bind path -> (its first component that is a symlink, the link's
    # text); the mount path counts itself, a bind dir itself is DirState.is_symlink
    symlinked: dict[str, tuple[str, str]] = field(default_factory=dict)
    services_running: dict[str, bool] = field(default_factory=dict)
    systemd: bool = False  # a running systemd manages the host
    os_id: str = ""  # /etc/os-release ID of the host
    discovery: str = "sysfs"  # "pyudev" or "sysfs": which reader listed the disks

    def disk(self, name: str) -> BlockDevice | None:
        return next((d for d in self.disks if d.name == name), None)

    def mounts_of(self, devnums: set[str]) -> list[MountEntry]:
        return [m for m in self.mounts if m.devnum in devnums]

    def mount_at(self, path: str) -> MountEntry | None:
        # The last entry wins: later mounts stack on top of earlier ones.
        found = [m for m in self.mounts if m.mountpoint == path]
        return found[-1] if found else None
