"""Parse /proc/<pid>/mountinfo and /proc/swaps (what is in use, and where)."""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent.disks.model import MountEntry


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or len(rest) < 2:
            continue
        entries.append(MountEntry(
            devnum=fields[2], root=_unescape(fields[3]), mountpoint=_unescape(fields[4]),
            fstype=rest[0], source=_unescape(rest[1]),
            options=fields[5] + ("," + rest[2] if len(rest) > 2 else ""),
        ))
    return entries


def read_mountinfo(path: Path) -> list[MountEntry]:
    return parse_mountinfo(path.read_text())


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
                st = os.stat(_unescape(parts[0]))
            except OSError:
                continue
            devnums.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return devnums


def root_devnum(mounts: list[MountEntry]) -> str:
    found = [m for m in mounts if m.mountpoint == "/"]
    return found[-1].devnum if found else ""
