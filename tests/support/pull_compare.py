"""Compare unpacked layers path by path: what the fast pull committed against what
containerd's own unpack committed, in two private containerd instances."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from nodeagent.containerd.client import ContainerdClient


def describe_tree(root: str, recent_since: float) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, size, content sha256 | link target | rdev, xattrs,
    mtime or None, hard-link group). Directory mtimes newer than ``recent_since`` were set
    by the unpack itself (implicit parents, directories that gained files) and are left
    out: they depend on when the unpack ran, not on the image."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            entries[rel] = _describe(path, info, recent_since)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                inodes.setdefault(info.st_ino, []).append(rel)
    for group in inodes.values():
        for rel in group:
            entries[rel] = (*entries[rel], tuple(sorted(group)))
    return entries


def _describe(path: str, info: os.stat_result, recent_since: float) -> tuple:
    kind = stat.S_IFMT(info.st_mode)
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as file:
            detail: object = hashlib.sha256(file.read()).hexdigest()
    elif stat.S_ISLNK(info.st_mode):
        detail = os.readlink(path)
    elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
        detail = (os.major(info.st_rdev), os.minor(info.st_rdev))
    else:
        detail = None
    xattrs = {name: os.getxattr(path, name, follow_symlinks=False)
              for name in sorted(os.listxattr(path, follow_symlinks=False))}
    mtime = info.st_mtime_ns
    if stat.S_ISDIR(info.st_mode) and mtime / 1e9 >= recent_since:
        mtime = None
    if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
        mtime = None  # an overlayfs whiteout: created at unpack time, no time in the tar
    return (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid,
            info.st_size if not stat.S_ISDIR(info.st_mode) else None, detail, xattrs, mtime)


async def layer_dirs(client: ContainerdClient, chain_ids: list[str]) -> dict[str, str]:
    """chain ID -> the committed snapshot's own directory."""
    return {chain: (await client.snapshot_mount_dirs(chain))[0] for chain in chain_ids}


def tree_differences(ours: dict[str, tuple], theirs: dict[str, tuple]) -> list[str]:
    problems = []
    for path in sorted(set(ours) | set(theirs)):
        if ours.get(path) != theirs.get(path):
            problems.append(f"{path}: fast pull {ours.get(path)} != containerd "
                            f"{theirs.get(path)}")
    return problems


def root_of(snapshot_dir: str) -> Path:
    return Path(snapshot_dir)
