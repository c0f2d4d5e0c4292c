"""FIFREEZE/FITHAW on a real loop-mounted XFS filesystem.

Writers are separate processes that announce themselves before they open the file, so
"still blocked" is only asserted once the writer is really inside open()/write().
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.loopfs import LoopMount, loop_xfs, thaw_quietly

from nodeagent.snapshot.freeze import FIFREEZE, FreezeError, frozen

WRITER = r"""
import os, sys
print("start", flush=True)
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.write(fd, b"x" * 4096)
os.fsync(fd)
print("written", flush=True)
"""

FROZEN_CHILD = r"""
import sys, time
from nodeagent.snapshot.freeze import frozen
with frozen(sys.argv[1]) as window:
    print("frozen", flush=True)
    time.sleep(float(sys.argv[2]))
    print("body done", flush=True)
print("after window", flush=True)
"""


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[LoopMount]:
    with loop_xfs(tmp_path) as mount:
        yield mount


def start_writer(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "start"
    return proc


def assert_writable(mount: LoopMount, timeout: float = 10.0) -> None:
    writer = start_writer(mount.mount_point / "probe")
    assert writer.wait(timeout=timeout) == 0, "filesystem still frozen"


def test_writes_block_while_frozen_and_resume_after_thaw(xfs: LoopMount) -> None:
    target = xfs.mount_point / "file"
    with frozen(str(xfs.mount_point)) as window:
        writer = start_writer(target)
        time.sleep(0.8)
        assert writer.poll() is None, "a write completed on a frozen filesystem"
        assert not target.exists()  # even the create is held back
    assert writer.wait(timeout=10) == 0
    assert target.stat().st_size == 4096
    assert window.frozen_seconds >= 0.8
    assert not window.thawed_by_watchdog


def test_exception_in_window_thaws(xfs: LoopMount) -> None:
    with pytest.raises(RuntimeError, match="CreateSnapshot failed"), \
            frozen(str(xfs.mount_point)):
        raise RuntimeError("CreateSnapshot failed")
    assert_writable(xfs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_in_window_is_deferred_until_thawed(xfs: LoopMount, sig: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", FROZEN_CHILD, str(xfs.mount_point), "1.0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "frozen"
    child.send_signal(sig)
    out, _err = child.communicate(timeout=30)
    # The body finished, the filesystem was thawed, then the signal took effect.
    assert "body done" in out
    assert "after window" not in out
    assert child.returncode != 0
    if sig == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM
    assert_writable(xfs)


def test_sigkill_in_window_is_thawed_by_watchdog(xfs: LoopMount) -> None:
    child = subprocess.Popen([sys.executable, "-c", FROZEN_CHILD, str(xfs.mount_point), "60"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "frozen"
    writer = start_writer(xfs.mount_point / "file")
    time.sleep(0.3)
    assert writer.poll() is None
    child.kill()
    child.wait(timeout=10)
    assert writer.wait(timeout=10) == 0  # the watchdog saw us die and thawed


def test_window_longer_than_limit_is_thawed_by_watchdog(xfs: LoopMount) -> None:
    with frozen(str(xfs.mount_point), max_seconds=0.5) as window:
        writer = start_writer(xfs.mount_point / "file")
        assert writer.wait(timeout=10) == 0  # thawed while the body still runs
    assert window.thawed_by_watchdog


def test_already_frozen_filesystem_is_left_alone(xfs: LoopMount) -> None:
    fd = os.open(xfs.mount_point, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
        with pytest.raises(FreezeError, match="already frozen"), \
                frozen(str(xfs.mount_point)):
            pytest.fail("body must not run")
        time.sleep(0.2)
        writer = start_writer(xfs.mount_point / "file")
        time.sleep(0.3)
        assert writer.poll() is None  # still frozen: the other freezer owns it
    finally:
        thaw_quietly(xfs.mount_point)
        os.close(fd)
    assert writer.wait(timeout=10) == 0


def test_filesystem_without_freeze_support(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm tmpfs")
    with pytest.raises(FreezeError, match="does not support freezing"), frozen(str(shm)):
        pytest.fail("body must not run")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FreezeError, match="cannot open"), frozen(str(tmp_path / "nope")):
        pytest.fail("body must not run")
