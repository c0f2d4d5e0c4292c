"""A small Debian (bookworm) root image that boots a real systemd under QEMU, for the disk
boot-integration test.

debootstrap --variant=minbase with systemd, udev, mdadm, xfsprogs, python3 and the real
Debian containerd package, plus this host's kernel modules (the VM boots this host's
kernel and initrd). Built once and cached under /var/cache/nodeagent-tests (override with
NODEAGENT_TEST_CACHE); each test copies the cached image and adds its own files with
debugfs, so the host never mounts anything.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PACKAGES = ("systemd-sysv", "udev", "mdadm", "xfsprogs", "e2fsprogs", "util-linux", "kmod",
            "python3", "containerd")
IMAGE_REVISION = "1"  # bump when the image recipe below changes
IMAGE_SIZE = "4G"


def cache_dir() -> Path:
    path = Path(os.environ.get("NODEAGENT_TEST_CACHE", "/var/cache/nodeagent-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_files() -> tuple[str, str, str]:
    """(vmlinuz, initrd, version) of the newest installed Debian kernel."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not kernels:
        pytest.skip("no /boot/vmlinuz-*-amd64 (apt install linux-image-amd64)")
    vmlinuz = kernels[-1]
    version = vmlinuz.removeprefix("/boot/vmlinuz-")
    initrd = f"/boot/initrd.img-{version}"
    if not os.path.exists(initrd):
        pytest.skip(f"{initrd} missing")
    return vmlinuz, initrd, version


def base_image() -> Path:
    """The cached image, built on first use (about 2 minutes)."""
    for tool in ("debootstrap", "mkfs.ext4", "debugfs", "qemu-system-x86_64"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (./.ci/setup installs it)")
    _, _, version = kernel_files()
    key = hashlib.sha256(f"{PACKAGES}{version}{IMAGE_REVISION}".encode()).hexdigest()[:12]
    cache = cache_dir()
    image = cache / f"bookworm-systemd-{key}.img"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others wait and reuse
        if not image.exists():
            _build(image, version)
    return image


def _build(image: Path, version: str) -> None:
    with tempfile.TemporaryDirectory(dir=image.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(["debootstrap", "--variant=minbase",
                               f"--include={','.join(PACKAGES)}", "bookworm", str(rootfs)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed (network to deb.debian.org needed):\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        shutil.copytree(f"/lib/modules/{version}", rootfs / "lib/modules" / version,
                        symlinks=True)
        (rootfs / "etc/hostname").write_text("nodeagent-vm\n")
        (rootfs / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
        # Nothing waits for a network that the VM does not have.
        for unit in ("systemd-networkd-wait-online.service",):
            link = rootfs / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        partial = image.with_suffix(".partial")
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(partial),
                        IMAGE_SIZE], check=True, capture_output=True, timeout=1800)
        partial.rename(image)


def writable_copy(base: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(base), str(dest)], check=True)
    return dest


def debugfs(image: Path, commands: list[str]) -> str:
    """Run debugfs commands against the (unmounted) image, writably."""
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("\n".join(commands) + "\n")
        script.flush()
        proc = subprocess.run(["debugfs", "-w", "-f", script.name, str(image)],
                              capture_output=True, text=True, check=True)
    benign = ("debugfs ", "rm: File not found", "ext2fs_mkdir: Ext2 directory already",
              "mkdir: Ext2 directory already")
    errors = [line for line in proc.stderr.splitlines()
              if line.strip() and not line.startswith(benign)]
    if errors:
        raise RuntimeError(f"debugfs on {image}: {errors}")
    return proc.stdout


def put_file(image: Path, local: Path, remote: str, mode: int = 0o644) -> None:
    debugfs(image, [f"rm {remote}", f"write {local} {remote}",
                    f"sif {remote} mode 0{0o100000 | mode:o}"])


def read_file(image: Path, remote: str) -> str:
    proc = subprocess.run(["debugfs", "-R", f"cat {remote}", str(image)], capture_output=True,
                          text=True, check=True)
    return proc.stdout
