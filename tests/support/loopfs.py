"""A real XFS filesystem on a loop device, for the freeze, volume and hydration tests.

Needs root, losetup and mkfs.xfs (xfsprogs); tests are skipped with the reason otherwise.
Teardown thaws (in case a test failed mid-window), unmounts and detaches the loop device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FITHAW = 0xC0045878


@dataclass
class LoopMount:
    image: Path
    device: str  # /dev/loopN
    mount_point: Path


def require_loop_xfs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (losetup, mount, FIFREEZE)")
    for tool in ("losetup", "mkfs.xfs", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def thaw_quietly(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def loop_xfs(workdir: Path, size_mib: int = 320, direct_io: bool = False) -> Iterator[LoopMount]:
    """Create, mount and finally remove an XFS filesystem backed by a sparse file."""
    require_loop_xfs()
    image = workdir / "xfs.img"
    mount_point = workdir / "mnt"
    mount_point.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib * 2**20)
    _run("mkfs.xfs", "-q", "-f", str(image))
    options = ["--direct-io=on"] if direct_io else []
    device = _run("losetup", "--find", "--show", *options, str(image))
    try:
        _run("mount", "-t", "xfs", device, str(mount_point))
        try:
            yield LoopMount(image=image, device=device, mount_point=mount_point)
        finally:
            thaw_quietly(mount_point)
            subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
            if os.path.ismount(mount_point):
                subprocess.run(["umount", "-l", str(mount_point)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        image.unlink(missing_ok=True)
