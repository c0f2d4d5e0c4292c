"""The host we act on: paths, /proc views and commands, from the host or from a container.

Run on the host, everything is direct. Run from a privileged container with the host's
PID namespace (the DaemonSet), /proc/1 is the host's init in another mount namespace:
commands then run through `nsenter -t 1 -m -u -i -n -p` (so mounts land where containerd
and kubelet see them, and systemctl reaches the host's systemd) and files are read and
written through /proc/1/root.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.errors import NodeagentError
from nodeagent.log import fields

log = logging.getLogger(__name__)

LAST_SETUP = "/run/nodeagent/disks-setup.json"
NSENTER = ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--")


class CommandError(NodeagentError):
    """An external command (mdadm, mkfs, mount, cp, systemctl ...) failed."""


@dataclass
class Host:
    root: Path = Path("/")  # where the host's / is visible to us
    sysfs: Path = Path("/sys")
    dev: Path = Path("/dev")
    proc_mountinfo: Path = Path("/proc/self/mountinfo")
    proc_swaps: Path = Path("/proc/swaps")
    exec_prefix: tuple[str, ...] = ()
    state_file: str = LAST_SETUP  # host path of the last setup result (per boot: /run)
    # Seconds spent in external commands, by tool (for the setup timing breakdown).
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def in_container(self) -> bool:
        return bool(self.exec_prefix)

    def path(self, host_path: str | Path) -> Path:
        """Where a host path is, seen from this process."""
        p = Path(host_path)
        return self.root / p.relative_to("/") if p.is_absolute() else p

    def run(self, argv: Sequence[str], *, timeout: float = 600, check: bool = True,
            category: str | None = None, stdin_null: bool = True) -> subprocess.CompletedProcess:
        """Run a host command; failures raise CommandError with its stderr."""
        cmd = [*self.exec_prefix, *argv]
        label = category or Path(argv[0]).name
        log.debug("run", extra=fields(cmd=" ".join(argv)))
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL if stdin_null else None, check=False)
        except FileNotFoundError as exc:
            raise CommandError(f"{argv[0]} not found on this host: install it "
                               f"(needed for: {' '.join(argv[:3])})") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"{' '.join(argv)} did not finish in {timeout:.0f}s") from exc
        finally:
            self.timings[label] += time.monotonic() - start
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise CommandError(f"{' '.join(argv)} failed (exit {proc.returncode}): "
                               + " | ".join(detail))
        return proc


def detect_host() -> Host:
    """Host() here, or the nsenter + /proc/1/root view when we are in a container."""
    if _other_mount_namespace():
        # The host's /dev, not the container's copy made at start (it lacks new md nodes).
        return Host(root=Path("/proc/1/root"), dev=Path("/proc/1/root/dev"),
                    proc_mountinfo=Path("/proc/1/mountinfo"), exec_prefix=NSENTER)
    return Host()


def _other_mount_namespace() -> bool:
    # Needs the host PID namespace (/proc/1 is the host's init) and enough privilege to
    # read its namespace link; otherwise we are the host as far as we can tell.
    try:
        return os.readlink("/proc/1/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False
