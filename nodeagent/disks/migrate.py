"""Copy a directory onto the volume, prove the copy, and only then make it visible.

`cp -a` does the copy (owners, modes, timestamps, xattrs/ACLs, hard links, holes); the
check below walks both trees and compares what cp promises, because cp does not fail when
it cannot preserve xattrs. The copy goes to a hidden staging directory that is renamed
into place after the check, so a run killed halfway leaves no half-copied target that a
later run could mistake for a finished one. The source is never modified.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nodeagent.disks.host import Host
from nodeagent.errors import NodeagentError
from nodeagent.log import fields

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_EVERY_S = 5.0


class CopyCheckError(NodeagentError):
    """The copy on the volume differs from its source."""


@dataclass
class TreeStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0  # apparent size of regular files
    allocated: int = 0  # bytes actually allocated (holes excluded)


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.nodeagent-partial")


def copy_dir(host: Host, source: str, target: str, content: bool = True) -> TreeStats:
    """Copy host dir `source` to `target` (which must not exist yet); check; rename."""
    src, dst = host.path(source), host.path(target)
    staging = staging_path(dst)
    if staging.exists() or staging.is_symlink():
        # Our own leftover from an interrupted run: a partial copy of data that is still
        # intact at its source.
        log.info("removing unfinished copy", extra=fields(path=str(staging)))
        shutil.rmtree(staging)
    stats = tree_stats(src)
    log.info("copying", extra=fields(source=source, target=target, files=stats.files,
                                     bytes=stats.bytes, allocated=stats.allocated))
    with _progress(dst.parent, source, stats.allocated):
        host.run(["cp", "-a", "--sparse=auto", source, str(staging_path(Path(target)))],
                 category="copy", timeout=24 * 3600)
    start = time.monotonic()
    check_copy(src, staging, content)
    host.timings["copy-check"] += time.monotonic() - start
    os.rename(staging, dst)
    log.info("copy checked", extra=fields(source=source, target=target))
    return stats


def tree_stats(root: Path) -> TreeStats:
    stats = TreeStats()
    for dirpath, _dirnames, filenames in os.walk(root):
        stats.dirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                stats.files += 1
                stats.bytes += st.st_size
                stats.allocated += st.st_blocks * 512
    return stats


class _progress:
    """Logs bytes written to the target filesystem every few seconds while cp runs."""

    def __init__(self, fs_path: Path, source: str, total: int) -> None:
        self.fs_path, self.source, self.total = fs_path, source, total
        self.done = threading.Event()
        self.start_used = self._used()

    def _used(self) -> int:
        st = os.statvfs(self.fs_path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _run(self) -> None:
        while not self.done.wait(PROGRESS_EVERY_S):
            copied = max(0, self._used() - self.start_used)
            log.info("copy progress", extra=fields(source=self.source, copied=copied,
                                                   total=self.total))

    def __enter__(self) -> _progress:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()


def check_copy(src: Path, dst: Path, content: bool = True) -> None:
    """Raise CopyCheckError unless dst is a faithful copy of src."""
    links: dict[tuple[int, int], int] = {}  # source inode -> copy inode
    _compare(src, dst, "", links, content)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in sorted(dirnames + filenames):
            path = name if rel == "." else os.path.join(rel, name)
            _compare(src / path, dst / path, path, links, content)


def _fail(rel: str, what: str) -> CopyCheckError:
    return CopyCheckError(f"copy check failed for {rel or '.'}: {what}")


def _compare(src: Path, dst: Path, rel: str, links: dict[tuple[int, int], int],
             content: bool) -> None:
    s = os.lstat(src)
    try:
        d = os.lstat(dst)
    except FileNotFoundError as exc:
        raise _fail(rel, "missing in the copy") from exc
    if stat.S_IFMT(s.st_mode) != stat.S_IFMT(d.st_mode):
        raise _fail(rel, "file type differs")
    for attr in ("st_mode", "st_uid", "st_gid"):
        if getattr(s, attr) != getattr(d, attr):
            raise _fail(rel, f"{attr[3:]} {getattr(s, attr)} became {getattr(d, attr)}")
    if not stat.S_ISDIR(s.st_mode) and s.st_mtime_ns != d.st_mtime_ns:
        raise _fail(rel, "modification time not preserved")
    _compare_xattrs(src, dst, rel)
    if stat.S_ISLNK(s.st_mode) and os.readlink(src) != os.readlink(dst):
        raise _fail(rel, "symlink target differs")
    if (stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode)) and s.st_rdev != d.st_rdev:
        raise _fail(rel, "device number differs")
    if stat.S_ISREG(s.st_mode):
        _compare_regular(src, dst, rel, s, d, links, content)


def _compare_regular(src: Path, dst: Path, rel: str, s: os.stat_result, d: os.stat_result,
                     links: dict[tuple[int, int], int], content: bool) -> None:
    if s.st_size != d.st_size:
        raise _fail(rel, f"size {s.st_size} became {d.st_size}")
    if s.st_nlink > 1:
        key = (s.st_dev, s.st_ino)
        if links.setdefault(key, d.st_ino) != d.st_ino:
            raise _fail(rel, "hard link to another copied file was not kept")
    # A mostly-hole source (e.g. a sparse image) must not be filled in by the copy.
    if s.st_blocks * 512 * 2 <= s.st_size and d.st_blocks * 512 >= s.st_size > 0:
        raise _fail(rel, "sparse file was written out in full")
    if content and not _same_content(src, dst, s.st_size):
        raise _fail(rel, "content differs")


def _compare_xattrs(src: Path, dst: Path, rel: str) -> None:
    try:
        names = set(os.listxattr(src, follow_symlinks=False))
    except OSError:
        return  # source filesystem without xattrs
    try:
        copied = set(os.listxattr(dst, follow_symlinks=False))
    except OSError:
        copied = set()
    for name in sorted(names):
        if name not in copied:
            raise _fail(rel, f"extended attribute {name} not copied")
        if os.getxattr(src, name, follow_symlinks=False) != os.getxattr(
                dst, name, follow_symlinks=False):
            raise _fail(rel, f"extended attribute {name} differs")


def _same_content(src: Path, dst: Path, size: int) -> bool:
    # Compare only the source's data ranges (its holes read as zeros, and the copy's
    # hole-or-zero there is checked by reading), so huge sparse files stay cheap.
    with open(src, "rb") as a, open(dst, "rb") as b:
        for start, end in _data_ranges(a.fileno(), size):
            a.seek(start)
            b.seek(start)
            pos = start
            while pos < end:
                n = min(CHUNK, end - pos)
                if a.read(n) != b.read(n):
                    return False
                pos += n
        return _holes_are_zero(a.fileno(), b.fileno(), size)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    ranges, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # no more data (ENXIO)
        end = os.lseek(fd, start, os.SEEK_HOLE)
        ranges.append((start, min(end, size)))
        pos = end
    return ranges


def _holes_are_zero(src_fd: int, dst_fd: int, size: int) -> bool:
    """Where the source has a hole, the copy must have a hole or zeros."""
    src_data = _data_ranges(src_fd, size)
    for start, end in _data_ranges(dst_fd, size):
        for gap_start, gap_end in _gaps(src_data, start, end):
            os.lseek(dst_fd, gap_start, os.SEEK_SET)
            remaining = gap_end - gap_start
            while remaining:
                chunk = os.read(dst_fd, min(CHUNK, remaining))
                if not chunk or chunk.count(0) != len(chunk):
                    return False
                remaining -= len(chunk)
    return True


def _gaps(ranges: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Parts of [start, end) not covered by the sorted ranges."""
    gaps, pos = [], start
    for r_start, r_end in ranges:
        if r_end <= pos or r_start >= end:
            continue
        if r_start > pos:
            gaps.append((pos, r_start))
        pos = max(pos, r_end)
    if pos < end:
        gaps.append((pos, end))
    return gaps
