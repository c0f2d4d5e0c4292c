"""Publishing a complete version atomically, and getting rid of old ones.

A new version is built in the staging dir, made durable (every file and directory
fsynced), then swapped with the published tree by one ``renameat2(RENAME_EXCHANGE)``:
a reader sees the old tree or the new one, never a mix and never nothing. Where the
filesystem cannot exchange (EINVAL), the old tree is renamed away first and the new one
renamed in (a moment without the directory, still never a partial tree). The old tree
goes to the trash, which is emptied of trees nobody uses (inuse.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import time
from pathlib import Path

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (both must exist)."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b),
                       RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below root (so a power cut cannot publish holes)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(new_tree: Path, published: Path, trash: Path) -> Path | None:
    """Make new_tree the published one; returns where the old tree went (in trash)."""
    if not published.exists():
        os.rename(new_tree, published)
        fsync_dir(published.parent)
        return None
    try:
        exchange(new_tree, published)
        old_at = new_tree
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        old_at = trash_path(trash, published.name)
        os.rename(published, old_at)
        os.rename(new_tree, published)
    fsync_dir(published.parent)
    if old_at.parent != trash:
        moved = trash_path(trash, published.name)
        os.rename(old_at, moved)
        old_at = moved
    return old_at


def trash_path(trash: Path, name: str) -> Path:
    trash.mkdir(parents=True, exist_ok=True)
    return trash / f"{name}.{time.time_ns()}"


def move_to_trash(tree: Path, trash: Path) -> Path:
    target = trash_path(trash, tree.name)
    os.rename(tree, target)
    return target


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
