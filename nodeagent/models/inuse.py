"""Is a model tree in use? Open files, working directories, memory maps and mounts.

Files are compared by (device, inode), which is the same whatever mount namespace or
path a process sees them through: ``stat`` of /proc/<pid>/fd/<n>, cwd and root follows
the magic link to the real file, and /proc/<pid>/maps lists device and inode of every
mapped file (safetensors are usually mmapped and then closed). Mounts are read from each
mount namespace's mountinfo (one process per namespace): a bind mount of the tree or of
a directory inside it (a pod's hostPath volume) keeps the tree in use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nodeagent.hostfacts.mountinfo import parse_mountinfo


def tree_inodes(tree: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the tree and everything below it."""
    found = set()
    for dirpath, dirs, files in os.walk(tree):
        for name in (".", *dirs, *files):
            try:
                st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
    return found


def fs_relative(tree: Path, mountinfo_text: str) -> tuple[str, str] | None:
    """("major:minor", path inside that filesystem) of the tree, from our mountinfo."""
    st = os.stat(tree)
    devnum = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    path = os.path.realpath(tree)
    best = None
    for m in parse_mountinfo(mountinfo_text):
        inside = path == m.mountpoint or path.startswith(m.mountpoint.rstrip("/") + "/")
        if m.devnum == devnum and inside and (
                best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    if best is None:
        return None
    inner = path[len(best.mountpoint.rstrip("/")):]
    return devnum, os.path.normpath(best.root.rstrip("/") + inner) if inner else best.root


def _pids(proc: Path) -> Iterable[str]:
    me = str(os.getpid())
    try:
        return [e for e in os.listdir(proc) if e.isdigit() and e != me]
    except OSError:
        return []


def _process_uses(proc: Path, pid: str, inodes: dict[tuple[int, int], Path]) -> dict[
        Path, str]:
    hits: dict[Path, str] = {}
    base = proc / pid
    for link, what in (("cwd", "working directory"), ("root", "root directory")):
        try:
            st = os.stat(base / link)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            hits[inodes[(st.st_dev, st.st_ino)]] = what
    try:
        fds = os.listdir(base / "fd")
    except OSError:
        fds = []
    for fd in fds:
        try:
            st = os.stat(base / "fd" / fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            hits.setdefault(inodes[(st.st_dev, st.st_ino)], "open file")
    try:
        maps = (base / "maps").read_text()
    except OSError:
        maps = ""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[4] == "0":
            continue
        major, minor = fields[3].split(":")
        key = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
        if key in inodes:
            hits.setdefault(inodes[key], "memory-mapped file")
    return hits


def users(trees: list[Path], proc: Path = Path("/proc")) -> dict[Path, str]:
    """Trees in use, each with one reason naming a process or a mount."""
    inodes: dict[tuple[int, int], Path] = {}
    for tree in trees:
        for key in tree_inodes(tree):
            inodes[key] = tree
    found: dict[Path, str] = {}
    namespaces: dict[str, str] = {}
    for pid in _pids(proc):
        for tree, what in _process_uses(proc, pid, inodes).items():
            found.setdefault(tree, f"{what} of process {pid} ({_comm(proc, pid)})")
        try:
            namespaces.setdefault(os.readlink(proc / pid / "ns" / "mnt"), pid)
        except OSError:
            continue
    try:
        own = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return found
    places = {t: fs_relative(t, own) for t in trees if t not in found}
    mount_texts = [own]
    for pid in namespaces.values():
        try:
            mount_texts.append((proc / pid / "mountinfo").read_text())
        except OSError:
            continue
    for tree, place in places.items():
        if place is None:
            continue
        devnum, inner = place
        for text in mount_texts:
            hit = next((m for m in parse_mountinfo(text) if m.devnum == devnum and (
                m.root == inner or m.root.startswith(inner.rstrip("/") + "/"))
                and m.mountpoint != str(tree)), None)
            if hit is not None:
                found[tree] = f"mounted at {hit.mountpoint}"
                break
    return found


def _comm(proc: Path, pid: str) -> str:
    try:
        return (proc / pid / "comm").read_text().strip()
    except OSError:
        return "?"
