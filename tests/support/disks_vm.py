"""Boot a QEMU VM (TCG) with emulated NVMe disks and run a scenario of the VM driver in it.

virtme-ng boots this host's kernel with this host's filesystem (9p, read-write) as root,
so the VM runs the repo's code and the host's mdadm/mkfs/udev. Inside the VM /tmp is an
overlay that the host does not see (so are /var/tmp, /var/cache, /var/log and /run): the
work directory (driver results) lives under the repo's ignored .work/ instead, or under
/var/lib/nodeagent-tests when the repo itself is in such a place (a CI clone under /tmp);
disk images stay in pytest's tmp dir (QEMU opens them on the host side).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
DRIVER = Path(__file__).with_name("disks_vm_driver.py")
GIB = 1 << 30
# One TCG boot with its scenario took ~150 s on the 2-core CI machine when idle and over
# 300 s when the machine was slow; a boot past this is taken as hung.
BOOT_TIMEOUT_S = 600


def kernel() -> str:
    found = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not found:
        pytest.skip("no /boot/vmlinuz-*-amd64 kernel for the VM (apt install linux-image-amd64)")
    return found[-1]


def require_vm_tools() -> None:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the VM driver runs with the system /usr/bin/python3")
    for tool in ("qemu-system-x86_64", "mdadm", "mkfs.xfs", "busybox"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (./.ci/setup installs it)")
    if not (VENV_BIN / "vng").exists():
        pytest.skip("virtme-ng (vng) not installed in .venv")


@dataclass(frozen=True)
class Disk:
    path: Path
    serial: str

    def qemu(self, index: int) -> str:
        return (f"-drive file={self.path},if=none,id=d{index},format=raw,cache=unsafe "
                f"-device nvme,serial={self.serial},drive=d{index}")


def blank_disk(directory: Path, serial: str, size: int = GIB) -> Disk:
    """A sparse image: reads as zeros, like fresh (or stopped/started) instance store."""
    path = directory / f"{serial}.img"
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return Disk(path, serial)


# Host paths the VM does not share: virtme-ng mounts a tmpfs or an overlay over them.
GUEST_PRIVATE = tuple(Path(p) for p in ("/tmp", "/var/tmp", "/var/log", "/var/cache", "/run"))
SHARED_FALLBACK = Path("/var/lib/nodeagent-tests")


def shared_base() -> Path:
    """A directory the host and the VM both see, for results written inside the VM."""
    repo = REPO.resolve()
    if any(p == repo or p in repo.parents for p in GUEST_PRIVATE):
        return SHARED_FALLBACK
    return repo / ".work"


def workdir(name: str) -> Path:
    base = shared_base() / "vm" / f"{name}-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True)
    return base


@dataclass
class VmRun:
    results: dict
    output: str
    seconds: float


def run_vm(disks: list[Disk], scenario: str, work: Path, args: dict | None = None,
           timeout: float = BOOT_TIMEOUT_S, memory: str = "1G") -> VmRun:
    """Boot, run `disks_vm_driver.py scenario` with args, power off; return its results."""
    require_vm_tools()
    (work / f"{scenario}.args.json").write_text(json.dumps(args or {}))
    result_file = work / f"{scenario}.json"
    result_file.unlink(missing_ok=True)
    build_zipapp(work / "nodeagent.pyz")
    exec_cmd = (f"/usr/bin/python3 -I {DRIVER} {scenario} {work} "
                f"> {work / (scenario + '.log')} 2>&1")
    qemu_opts = " ".join(d.qemu(i) for i, d in enumerate(disks))
    cmd = [str(VENV_BIN / "vng"), "--run", kernel(), "--disable-kvm", "--rw",
           "--memory", memory, f"--qemu-opts={qemu_opts}", "--exec", exec_cmd]
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    start = time.monotonic()
    # vng runs QEMU as a grandchild: its own session, so a timeout kills the whole group
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=work, stdin=subprocess.DEVNULL,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # show where the scenario stood
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(
                f"VM scenario {scenario} still running after {timeout:.0f} s (killed).\n"
                f"--- driver log ---\n{_read(work / f'{scenario}.log')[-6000:]}\n"
                f"--- vng ---\n{(stdout + stderr)[-4000:]}") from None
    seconds = time.monotonic() - start
    log_text = _read(work / f"{scenario}.log")
    if not result_file.exists():
        raise AssertionError(f"VM scenario {scenario} wrote no results (vng exit "
                             f"{proc.returncode}).\n--- driver log ---\n{log_text[-6000:]}\n"
                             f"--- vng ---\n{(stdout + stderr)[-4000:]}")
    results = json.loads(result_file.read_text())
    results["_seconds"] = round(seconds, 1)
    return VmRun(results, log_text, seconds)


def build_zipapp(out: Path) -> None:
    subprocess.run([str(VENV_BIN / "python"), "-m", "nodeagent.disks.zipapp", str(out)],
                   check=True, capture_output=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
