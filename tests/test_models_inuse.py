"""A model tree is in use while a process has a file open or mmapped, has its working
directory inside it, or while it is bind-mounted (also in another mount namespace, as a
pod's hostPath volume is). Real processes, real mounts (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.models.inuse import users

HOLDERS = {
    "open file": "f = open(sys.argv[1] + '/sub/w.bin', 'rb')",
    # libc mmap then close: no descriptor is left (Python's mmap module would keep one)
    "memory-mapped file": "import ctypes; libc = ctypes.CDLL(None); "
                          "libc.mmap.restype = ctypes.c_void_p; "
                          "fd = os.open(sys.argv[1] + '/sub/w.bin', os.O_RDONLY); "
                          "assert libc.mmap(None, 8192, 1, 1, fd, 0) not in (None, -1); "
                          "os.close(fd)",
    "working directory": "os.chdir(sys.argv[1] + '/sub')",
}


@pytest.fixture
def trees(tmp_path: Path) -> list[Path]:
    made = []
    for name in ("busy", "idle"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "w.bin").write_bytes(b"w" * 8192)
        made.append(tmp_path / name)
    return made


def hold(code: str, tree: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", f"import os, sys, time; {code}; "
                             "print('ready', flush=True); time.sleep(60)", str(tree)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize("what", list(HOLDERS))
def test_process_use_is_found(trees: list[Path], what: str) -> None:
    busy, _idle = trees
    proc = hold(HOLDERS[what], busy)
    try:
        found = users(trees)
        assert set(found) == {busy}
        assert found[busy].startswith(f"{what} of process {proc.pid} (python")
    finally:
        proc.kill()
        proc.wait()
    assert users(trees) == {}


@pytest.fixture
def root_with_mount() -> Iterator[None]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux) for mounts")
    yield


def test_bind_mount_in_another_mount_namespace(root_with_mount, trees: list[Path],
                                               tmp_path: Path) -> None:
    busy, _idle = trees
    target = tmp_path / "pod-volume"
    target.mkdir()
    proc = subprocess.Popen(  # a private namespace: the mount is invisible to ours
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind {busy}/sub {target} && echo ready && exec sleep 60"],
        stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert not os.path.ismount(target)  # not in our namespace
        found = users(trees)
        assert found == {busy: f"mounted at {target}"}
    finally:
        proc.kill()
        proc.wait()
    assert users(trees) == {}


def test_bind_mount_in_our_namespace(root_with_mount, trees: list[Path],
                                     tmp_path: Path) -> None:
    busy, _idle = trees
    target = tmp_path / "bound"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(busy), str(target)], check=True)
    try:
        assert users(trees) == {busy: f"mounted at {target}"}
    finally:
        subprocess.run(["umount", str(target)], check=True)
