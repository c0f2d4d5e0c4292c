"""Publishing a complete version atomically, and getting rid of old ones.

A new version is built in the staging dir, made durable (every file and directory
fsynced), then swapped with the published tree by one ``renameat2(RENAME_EXCHANGE)``:
a reader sees the old tree or the new one, never a mix and never nothing. Where the
filesystem cannot exchange (EINVAL), the old tree is renamed away first and the new one
renamed in (a moment without the directory, still never a partial tree). The old tree
goes to the trash, which is emptied of trees nobody uses (inuse.py).

The manifest travels with its tree: it is written (naming the new tree's inode) into the
staging dir before the swap and renamed beside the tree after it. A crash between the two
renames leaves a published tree whose manifest is still in the staging dir: the pair is
recognised (``trusted_manifest``) and completed under the cache lock
(``finish_interrupted``), so the next sync does not download the model again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import time
from pathlib import Path

from nodeagent.models import manifest
from nodeagent.models.layout import CacheLayout

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


def publish(layout: CacheLayout, name: str, new: manifest.Manifest) -> Path | None:
    """Swap the staged tree in with its manifest; returns where the old tree went."""
    manifest.write(layout.pending_manifest(name), new)
    old_tree = swap_in(layout.staging(name) / "tree", layout.tree(name), layout.trash)
    _promote(layout, name)
    return old_tree


def _promote(layout: CacheLayout, name: str) -> None:
    os.replace(layout.pending_manifest(name), layout.manifest(name))
    fsync_dir(layout.root)


def trusted_manifest(layout: CacheLayout, name: str) -> manifest.Manifest | None:
    """The manifest of the tree published now: beside it, or still in the staging dir
    when a crash came between the swap and the manifest's rename."""
    tree = layout.tree(name)
    return (manifest.load_trusted(layout.manifest(name), tree)
            or manifest.load_trusted(layout.pending_manifest(name), tree))


def finish_interrupted(layout: CacheLayout) -> list[str]:
    """Complete publishes a crash cut after the swap (the staged manifest names the
    published tree): the manifest goes beside the tree, the old tree to the trash.
    A staged manifest naming another tree is from before the swap: it is dropped, the
    staged tree and journal stay to resume. Call with the cache lock held."""
    finished = []
    try:
        staged = [p for p in layout.staging_root.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return finished
    for staging in staged:
        name = staging.name
        pending = layout.pending_manifest(name)
        if not pending.exists():
            continue
        if manifest.load_trusted(pending, layout.tree(name)) is None:
            pending.unlink()
            continue
        _promote(layout, name)
        if (staging / "tree").is_dir():  # the old version, exchanged out of place
            move_to_trash(staging / "tree", layout.trash)
        remove_tree(staging)
        finished.append(name)
    return finished
