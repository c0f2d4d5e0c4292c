"""Disk-space guard: never let a prewarm pull push the image filesystem into kubelet GC.

kubelet deletes unpinned images once the image filesystem passes
imageGCHighThresholdPercent (85% by default) and evicts pods past the eviction
thresholds. Before each pull the engine asks ``check`` whether the filesystem's current
usage, plus what in-flight pulls still need, plus this image's estimate stays under a
high-water mark (default 80%). ``check`` is pure; ``read_fs_status`` is the effect
(CRI ImageFsInfo names the filesystem, statvfs measures it); ``DiskGuard`` is the
engine's collaborator that does both before each pull and remembers what the pulls in
flight will still write.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodeagent import metrics
from nodeagent.console import fmt_bytes
from nodeagent.errors import NodeagentError, UsageError
from nodeagent.inputs import Range

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient, FsUsage
    from nodeagent.prewarm.progress import IngestMonitor

DEFAULT_HIGH_WATER_PERCENT = 80.0
HIGH_WATER_ENV = "NODEAGENT_HIGH_WATER"
HIGH_WATER_RANGE = Range(float, 0, 100, low_open=True)  # percent; 100 disables the guard
# Unpacked layers take about this many times their compressed size (gzip on typical image
# content); containerd keeps the compressed blobs too, so an image needs
# compressed * (1 + ratio) bytes.
DEFAULT_UNPACKED_RATIO = 2.0


def default_high_water_percent() -> float:
    """$NODEAGENT_HIGH_WATER when set (the DaemonSet configures flags by env), else 80."""
    text = os.environ.get(HIGH_WATER_ENV, "").strip()
    if not text:
        return DEFAULT_HIGH_WATER_PERCENT
    try:
        percent = float(text.rstrip("%"))
    except ValueError:
        raise UsageError(f"{HIGH_WATER_ENV}={text!r} is not a percentage (e.g. 80)") from None
    HIGH_WATER_RANGE.check(HIGH_WATER_ENV, percent)  # nan would turn the guard off
    return percent


def high_water_override(flag: float | None) -> dict[str, float]:
    """EngineConfig keyword for an explicit --high-water; without it the config's default
    (env, then 80) applies, read when the handler runs so a bad env is a clean error."""
    return {} if flag is None else {"high_water_percent": flag}


class DiskGuardError(NodeagentError):
    """The image filesystem cannot be measured (so the guard cannot decide)."""


@dataclass(frozen=True)
class FsStatus:
    """The image filesystem as kubelet sees it (statvfs of containerd's image fs)."""

    mountpoint: str
    capacity_bytes: int
    available_bytes: int  # for unprivileged users (f_bavail), as kubelet counts
    containerd_used_bytes: int = 0  # CRI ImageFsInfo: what containerd's snapshots use

    @property
    def used_bytes(self) -> int:
        return self.capacity_bytes - self.available_bytes

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used_bytes / self.capacity_bytes if self.capacity_bytes else 100.0


@dataclass(frozen=True)
class GuardDecision:
    allowed: bool
    needed_bytes: int
    projected_percent: float
    message: str


def estimate_needed(missing_compressed_bytes: int, unpacked_ratio: float) -> int:
    """Bytes an image will add: its missing compressed blobs plus their unpacked layers."""
    return int(missing_compressed_bytes * (1.0 + unpacked_ratio))


def check(
    image: str,
    needed_bytes: int,
    fs: FsStatus,
    high_water_percent: float,
    reserved_bytes: int = 0,
) -> GuardDecision:
    """Allow the pull only if usage + reserved (in-flight pulls) + needed <= high-water.

    A high-water mark of 100 or more disables the guard.
    """
    projected = fs.used_bytes + reserved_bytes + needed_bytes
    percent = 100.0 * projected / fs.capacity_bytes if fs.capacity_bytes else 100.0
    if high_water_percent >= 100 or percent <= high_water_percent:
        return GuardDecision(True, needed_bytes, percent, "")
    inflight = f" + {fmt_bytes(reserved_bytes)} reserved by pulls in flight" if (
        reserved_bytes) else ""
    message = (
        f"not pulling {image}: it needs about {fmt_bytes(needed_bytes)} on the image "
        f"filesystem {fs.mountpoint}, which is {fs.used_percent:.1f}% used "
        f"({fmt_bytes(fs.used_bytes)} of {fmt_bytes(fs.capacity_bytes)}){inflight}; "
        f"that would reach {percent:.1f}%, above the high-water mark of "
        f"{high_water_percent:g}% (kubelet starts deleting images at 85% by default). "
        "Free space, enlarge the filesystem or raise --high-water"
    )
    return GuardDecision(False, needed_bytes, percent, message)


def read_fs_status(
    usages: Sequence[FsUsage],
    host_root: str = "",
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
) -> FsStatus:
    """Measure the image filesystem CRI reports (its first entry: the snapshotter's).

    ``host_root`` prefixes the path when the agent sees the host under a mount (/host).
    """
    if not usages:
        raise DiskGuardError("containerd reported no image filesystem (CRI ImageFsInfo)")
    usage = usages[0]
    path = os.path.join(host_root, usage.mountpoint.lstrip("/")) if host_root else (
        usage.mountpoint)
    try:
        st = statvfs(path)
    except OSError as exc:
        raise DiskGuardError(
            f"cannot measure the image filesystem {path} ({exc.strerror or exc}): mount it "
            "into the agent (or set the host root), or pass --high-water 100 to disable "
            "the disk-space guard"
        ) from exc
    return FsStatus(
        mountpoint=usage.mountpoint,
        capacity_bytes=st.f_blocks * st.f_frsize,
        available_bytes=st.f_bavail * st.f_frsize,
        containerd_used_bytes=usage.used_bytes,
    )


class DiskGuard:
    """Before a pull: measure the image filesystem and ``check`` the pull against the
    high-water mark, counting what the pulls in flight will still write (their estimate
    minus what they wrote so far). ``release`` when a pull ends."""

    def __init__(self, client: ContainerdClient, monitor: IngestMonitor,
                 high_water_percent: float, unpacked_ratio: float = DEFAULT_UNPACKED_RATIO,
                 host_root: str = "", statvfs: Callable[[str], object] | None = None):
        self.client = client
        self.monitor = monitor
        self.high_water_percent = high_water_percent
        self.unpacked_ratio = unpacked_ratio
        self.host_root = host_root
        self._statvfs = statvfs
        self.fs: FsStatus | None = None  # last measured
        self._needed: dict[str, int] = {}  # in-flight pulls: estimated bytes they add

    async def admit(self, key: str, done: set[str], layers: dict[str, int] | None
                    ) -> str | None:
        """None to go ahead (the pull's estimate is then reserved), else why not."""
        missing = sum(size for d, size in (layers or {}).items() if d not in done)
        needed = estimate_needed(missing, self.unpacked_ratio)
        if self.high_water_percent >= 100:
            self._needed[key] = needed
            return None
        try:
            fs = await self.measure()
        except DiskGuardError as exc:
            return str(exc)
        decision = check(key, needed, fs, self.high_water_percent, self.reserved(exclude=key))
        if decision.allowed:
            self._needed[key] = needed
            return None
        return decision.message

    def release(self, key: str) -> None:
        self._needed.pop(key, None)

    def reserved(self, exclude: str) -> int:
        """What pulls in flight will still add (their estimate minus what they wrote)."""
        total = 0
        for key, needed in self._needed.items():
            progress = self.monitor.images.get(key)
            written = progress.bytes_done * (1 + self.unpacked_ratio) if progress else 0
            if key != exclude:
                total += max(0, int(needed - written))
        return total

    async def measure(self) -> FsStatus:
        usages = await self.client.image_fs_info()
        kwargs = {"statvfs": self._statvfs} if self._statvfs else {}
        fs = read_fs_status(usages, self.host_root, **kwargs)
        self.fs = fs
        metrics.IMAGE_FS_USED.set(fs.used_bytes)
        metrics.IMAGE_FS_CAPACITY.set(fs.capacity_bytes)
        metrics.IMAGE_FS_CONTAINERD_USED.set(fs.containerd_used_bytes)
        return fs
