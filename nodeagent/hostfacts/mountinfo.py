"""Parse /proc/<pid>/mountinfo and /proc/swaps: what is mounted where, what is swap."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# The kernel escapes space, tab, newline and backslash in these files as a backslash and
# three octal digits (\040 \011 \012 \134); anything else is taken literally.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo."""

    devnum: str  # "259:1"
    root: str  # path inside the filesystem that is mounted ("/" or a bind's subdir)
    mountpoint: str
    fstype: str
    source: str
    options: str

    @property
    def major(self) -> int:
        return int(self.devnum.partition(":")[0])

    @property
    def minor(self) -> int:
        return int(self.devnum.partition(":")[2])


def unescape(text: str) -> str:
    """Undo the kernel's octal escapes of mountinfo and swaps fields."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text (proc(5)): optional fields end at the lone "-" separator."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or len(rest) < 2:
            continue
        entries.append(MountEntry(
            devnum=fields[2], root=unescape(fields[3]), mountpoint=unescape(fields[4]),
            fstype=rest[0], source=unescape(rest[1]),
            options=fields[5] + ("," + rest[2] if len(rest) > 2 else ""),
        ))
    return entries


def read_mountinfo(path: Path = Path("/proc/self/mountinfo")) -> list[MountEntry]:
    return parse_mountinfo(Path(path).read_text())


def find_mount(mounts: list[MountEntry], path: str) -> MountEntry | None:
    """The mount that serves an absolute, symlink-free path: longest mount point prefix,
    and among equal mount points the last one mounted (it hides the earlier ones)."""
    best: MountEntry | None = None
    for mount in mounts:
        point = mount.mountpoint.rstrip("/") or "/"
        contains = path == point or path.startswith(point if point == "/" else point + "/")
        if contains and (best is None or len(point) >= len(best.mountpoint.rstrip("/") or "/")):
            best = mount
    return best


def root_devnum(mounts: list[MountEntry]) -> str:
    found = [m for m in mounts if m.mountpoint == "/"]
    return found[-1].devnum if found else ""


def read_swaps(path: Path) -> list[str]:
    """devnums of block devices in use as swap (swap files are skipped)."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    devnums = []
    for line in lines:
        parts = line.split()
        if parts and parts[1:2] == ["partition"]:
            try:
                st = os.stat(unescape(parts[0]))
            except OSError:
                continue
            devnums.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return devnums
