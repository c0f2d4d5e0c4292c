"""Path rules of containerd's applier, ported from Go: ``filepath.Clean/Join/Split`` and
continuity's ``fs.RootPath`` (symlinks resolved inside a root, never out of it).

Paths are ``str`` decoded with ``surrogateescape`` (``os.fsdecode``), so any byte string a
tar header holds round-trips exactly. Python's ``posixpath`` differs from Go in small ways
that matter here (``join`` does not clean, ``split`` strips the trailing slash, ``normpath``
keeps a leading ``//``), hence these ports.
"""

from __future__ import annotations

import os
import stat

MAX_LINKS = 255  # continuity: more link hops than this is an error (cycles)


class TooManyLinks(OSError):
    pass


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on Unix."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_join(*elements: str) -> str:
    """Go's ``filepath.Join``: join the non-empty elements with "/" and clean."""
    present = [e for e in elements if e]
    return go_clean("/".join(present)) if present else ""


def go_split(path: str) -> tuple[str, str]:
    """Go's ``filepath.Split``: (dir with its trailing slash, file)."""
    i = path.rfind("/")
    return path[: i + 1], path[i + 1 :]


def root_path(root: str, path: str) -> str:
    """continuity's ``fs.RootPath``: ``root`` joined with ``path`` after resolving every
    symlink in ``path`` as if ``root`` were "/"; the result never leaves ``root``.
    Components that don't exist are kept as they are (they will be created)."""
    if path == "":
        return root
    walked = [0]
    while True:
        before = walked[0]
        path = _walk_links(root, path, walked)
        if before == walked[0]:
            rooted = go_join("/", path)
            if path == rooted:
                return go_join(root, rooted)
            path = rooted


def _walk_link(root: str, path: str, walked: list[int]) -> tuple[str, bool]:
    if walked[0] > MAX_LINKS:
        raise TooManyLinks(f"too many links resolving {path!r} under {root}")
    path = go_join("/", path)
    if path == "/":
        return path, False
    real = go_join(root, path)
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        return path, False
    if not stat.S_ISLNK(info.st_mode):
        return path, False
    walked[0] += 1
    return os.readlink(real), True


def _walk_links(root: str, path: str, walked: list[int]) -> str:
    directory, name = go_split(path)
    if directory == "":
        return _walk_link(root, name, walked)[0]
    if name == "":
        if directory == "/":
            return directory
        return _walk_links(root, directory[:-1], walked)
    new_dir = _walk_links(root, directory, walked)
    new_path, is_link = _walk_link(root, go_join(new_dir, name), walked)
    if not is_link or new_path.startswith("/"):
        return new_path
    return go_join(new_dir, new_path)


def is_within(root: str, path: str) -> bool:
    """True when ``path`` (cleaned, absolute) is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")
