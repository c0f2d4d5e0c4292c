"""Apply one layer's tar stream to a directory exactly as containerd 1.6's applier does
(``archive.applyNaive`` + ``createTarFile``, with ``OverlayConvertWhiteout`` for layers
that have a parent), so the tree equals what containerd's own unpack would commit.

Per entry, in containerd's order: clean the name, resolve its parent inside the root
(``rootpath.root_path``), create missing parents (0755; in overlay mode their attributes are
copied from the parent layers later, see ``ImplicitDir``), convert whiteouts (overlay: a
0:0 character device, or ``trusted.overlay.opaque=y`` for ``.wh..wh..opq``; base layer:
remove the whited-out path), replace an existing path unless both are directories, create
the file, ``lchown``, set ``SCHILY.xattr.*`` (``trusted.*`` ignored), ``chmod`` (not
symlinks; hard links chmod the shared inode), then times with ``AT_SYMLINK_NOFOLLOW``.
Directory times are set last. Differences, on purpose: an entry whose name climbs out of
the root (``../x``) or a hard link to outside it is refused instead of being clamped to
the root, and sparse files keep their holes (containerd writes the zeros).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from nodeagent.pull import tarstream as tar
from nodeagent.pull.rootpath import go_clean, go_join, go_split, root_path

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
XATTR_PREFIX = "SCHILY.xattr."
OPAQUE_XATTR = "trusted.overlay.opaque"
_MAX_NS = (1 << 63) - 1


class ApplyError(Exception):
    """The layer cannot be applied; the message names the entry and why."""


@dataclass
class ImplicitDir:
    """A parent directory the layer did not list, created 0755. containerd copies owner,
    mode and xattrs from the first parent layer that has it (``mkparent``); with parallel
    unpack the parent layers are known only at commit time, so ``commit`` does it then."""

    path: str  # relative to the layer root, starting with "/"
    explicit_later: bool = False  # a later directory entry set owner/mode itself


@dataclass
class ApplyResult:
    entries: int = 0
    size: int = 0  # sum of header sizes, as containerd counts
    implicit_dirs: list[ImplicitDir] = field(default_factory=list)


class LayerApplier:
    """Applies entries from a ``TarReader`` under ``root``. ``overlay``: the layer has a
    parent (whiteouts become overlayfs markers); else containerd's naive conversion."""

    def __init__(self, root: str, overlay: bool) -> None:
        self.root = go_clean(root)
        self.overlay = overlay
        self.result = ApplyResult()
        self._dirs: list[tar.TarEntry] = []
        self._unpacked: set[str] = set()
        self._implicit: dict[str, ImplicitDir] = {}
        self._resolved: dict[str, str] = {}  # parent path in the tar -> resolved real path

    def apply(self, reader: tar.TarReader) -> ApplyResult:
        while (entry := reader.next()) is not None:
            self.result.size += entry.size
            self.result.entries += 1
            with _naming(entry):
                self._entry(entry, reader)
        for entry in self._dirs:
            with _naming(entry):
                _set_times(root_path(self.root, entry.name), entry, follow=False)
        self.result.implicit_dirs = list(self._implicit.values())
        return self.result

    # -- one entry

    def _entry(self, entry: tar.TarEntry, reader: tar.TarReader) -> None:
        entry.name = go_clean(entry.name)
        if entry.name == ".." or entry.name.startswith("../"):
            raise ApplyError(f'entry "{entry.name}": path climbs out of the layer root')
        parent, base = go_split(entry.name)
        parent_path = self._resolve_parent(parent)
        path = go_join(parent_path, go_join("/", base))
        if path == self.root:
            return  # "." and "/" entries: containerd ignores them
        if parent_path != self.root:
            self._mkparent(parent_path if base else os.path.dirname(path))
        _validate_whiteout(path, entry.name)
        if not self._convert_whiteout(entry, path):
            return
        self._replace_existing(path, entry.typeflag)
        self._create(path, entry, reader)
        if entry.typeflag == tar.DIR:
            self._dirs.append(entry)
            implicit = self._implicit.get(path[len(self.root):])
            if implicit is not None:
                implicit.explicit_later = True
        self._unpacked.add(path)

    def _resolve_parent(self, parent: str) -> str:
        cached = self._resolved.get(parent)
        if cached is None:
            try:
                cached = root_path(self.root, parent)
            except OSError as exc:
                raise ApplyError(f'cannot resolve "{parent}": {exc}') from None
            self._resolved[parent] = cached
        return cached

    def _mkparent(self, path: str) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISDIR(info.st_mode):
                return
            raise ApplyError(f'"{path[len(self.root):]}" is not a directory (mkparent)')
        above = path[: path.rfind("/")]
        if len(above) > len(self.root):
            self._mkparent(above)
        try:
            _mkdir(path, 0o755)
        except FileExistsError:
            if os.path.isdir(path) and not os.path.islink(path):
                return
            raise
        if self.overlay:
            self._implicit[path[len(self.root):]] = ImplicitDir(path[len(self.root):])

    # -- whiteouts

    def _convert_whiteout(self, entry: tar.TarEntry, path: str) -> bool:
        """False when the entry is a whiteout (handled here, nothing to create)."""
        directory, base = os.path.dirname(path), os.path.basename(path)
        if self.overlay:
            if base == OPAQUE:
                os.setxattr(directory, OPAQUE_XATTR, b"y")
                return False
            if base.startswith(WHITEOUT_PREFIX):
                original = go_join(directory, base[len(WHITEOUT_PREFIX):])
                os.mknod(original, stat.S_IFCHR, 0)
                os.chown(original, entry.uid, entry.gid)
                return False
            return True
        if base == OPAQUE:
            os.lstat(directory)
            self._remove_unlisted(directory)
            return False
        if base.startswith(WHITEOUT_PREFIX):
            self._remove_all(go_join(directory, base[len(WHITEOUT_PREFIX):]))
            return False
        return True

    def _remove_unlisted(self, directory: str) -> None:
        """Naive opaque dir: remove what this layer did not unpack below ``directory``
        (Go's filepath.Walk order: names are read before the callback removes a dir)."""
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        for name in names:
            child = go_join(directory, name)
            try:
                info = os.lstat(child)
            except FileNotFoundError:
                continue  # a parent was removed
            if child not in self._unpacked:
                self._remove_all(child)
            elif stat.S_ISDIR(info.st_mode):
                self._remove_unlisted(child)

    # -- creating

    def _replace_existing(self, path: str, typeflag: bytes) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not (stat.S_ISDIR(info.st_mode) and typeflag == tar.DIR):
            self._remove_all(path)

    def _remove_all(self, path: str) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        if stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
            self._resolved.clear()  # resolutions through it are stale

    def _create(self, path: str, entry: tar.TarEntry, reader: tar.TarReader) -> None:
        flag, mode = entry.typeflag, entry.mode & 0o7777
        if flag == tar.DIR:
            if not (os.path.isdir(path) and not os.path.islink(path)):
                _mkdir(path, mode)
        elif flag == tar.REG:
            _write_file(path, mode, reader)
        elif flag in _DEVICE_KINDS:
            os.mknod(path, mode | _DEVICE_KINDS[flag],
                     os.makedev(entry.devmajor, entry.devminor))
        elif flag == tar.LINK:
            os.link(self._hardlink_target(entry), path, follow_symlinks=False)
        elif flag == tar.SYMLINK:
            os.symlink(entry.linkname, path)
        elif flag == tar.XGLOBAL:
            return
        else:
            raise ApplyError(f'entry "{entry.name}": unhandled tar header type '
                             f"{flag[0] if flag else 0} (containerd refuses it too)")
        os.lchown(path, entry.uid, entry.gid)
        self._set_xattrs(path, entry)
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            os.chmod(path, mode)
        _set_times(path, entry, follow=False)

    def _hardlink_target(self, entry: tar.TarEntry) -> str:
        parent, base = go_split(entry.linkname)
        target = go_join(root_path(self.root, parent), base)
        if not (target == self.root or target.startswith(self.root + "/")):
            raise ApplyError(f'entry "{entry.name}": hard link to "{entry.linkname}" '
                             "points out of the layer root")
        return target

    def _set_xattrs(self, path: str, entry: tar.TarEntry) -> None:
        for key, value in entry.pax.items():
            if not key.startswith(XATTR_PREFIX):
                continue
            name = key[len(XATTR_PREFIX):]
            if name.startswith("trusted."):
                log.debug("ignored trusted.* xattr from the archive", extra={"xattr": name})
                continue
            try:
                os.setxattr(path, name, os.fsencode(value), follow_symlinks=False)
            except OSError as exc:
                kind = stat.S_IFMT(os.lstat(path).st_mode)
                regular_or_dir = kind in (stat.S_IFREG, stat.S_IFDIR)
                if exc.errno == errno.EPERM and name.startswith("user.") and not regular_or_dir:
                    continue  # user.* xattrs exist only on files and directories
                if exc.errno == errno.ENOTSUP:
                    continue
                raise


_DEVICE_KINDS = {tar.CHAR: stat.S_IFCHR, tar.BLOCKDEV: stat.S_IFBLK, tar.FIFO: stat.S_IFIFO}


@contextlib.contextmanager
def _naming(entry: tar.TarEntry) -> Iterator[None]:
    """OS errors become ApplyError naming the tar entry."""
    try:
        yield
    except OSError as exc:
        raise ApplyError(f'entry "{entry.name}": {exc.strerror or exc}') from None


def _validate_whiteout(path: str, name: str) -> None:
    base = os.path.basename(path)
    if base == OPAQUE or not base.startswith(WHITEOUT_PREFIX):
        return
    directory = os.path.dirname(path)
    original = go_join(directory, base[len(WHITEOUT_PREFIX):])
    if not original.startswith(directory.rstrip("/") + "/"):
        raise ApplyError(f'entry "{name}": invalid whiteout name')


def _mkdir(path: str, mode: int) -> None:
    os.mkdir(path, mode)
    os.chmod(path, mode)


def _write_file(path: str, mode: int, reader: tar.TarReader) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.chmod(path, mode)
        reader.write_data(fd)
    finally:
        os.close(fd)


def _bound(ns: int) -> int:
    return ns if 0 <= ns <= _MAX_NS else 0


def _set_times(path: str, entry: tar.TarEntry, follow: bool) -> None:
    mtime = entry.mtime_ns
    atime = max(entry.atime_ns, mtime) if entry.atime_ns is not None else mtime
    os.utime(path, ns=(_bound(atime), _bound(mtime)), follow_symlinks=follow)
