"""Disk space for the cache: the image disk guard's rule applied to the cache filesystem.

The model cache often shares its filesystem with containerd (both on the local NVMe
volume), so the same high-water mark (``NODEAGENT_HIGH_WATER``, default 80%) keeps a
model download from pushing kubelet into image GC. ``check`` and ``FsStatus`` are the
prewarm guard's own pure functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent.console import fmt_bytes
from nodeagent.prewarm.diskguard import FsStatus, check


def fs_status(path: Path) -> FsStatus:
    st = os.statvfs(path)
    return FsStatus(mountpoint=str(path), capacity_bytes=st.f_blocks * st.f_frsize,
                    available_bytes=st.f_bavail * st.f_frsize)


def over_by(fs: FsStatus, needed: int, reserved: int, high_water_percent: float) -> int:
    """Bytes to free before ``needed`` more fit under the mark (0: it fits)."""
    if check("", needed, fs, high_water_percent, reserved).allowed:
        return 0
    limit = int(fs.capacity_bytes * high_water_percent / 100)
    return max(1, fs.used_bytes + reserved + needed - limit)


def refusal(model: str, needed: int, fs: FsStatus, high_water_percent: float,
            reserved: int, freeable: int) -> str:
    decision = check(model, needed, fs, high_water_percent, reserved)
    return (f"needs {fmt_bytes(needed)} on the cache filesystem {fs.mountpoint}, which is "
            f"{fs.used_percent:.1f}% used ({fmt_bytes(fs.used_bytes)} of "
            f"{fmt_bytes(fs.capacity_bytes)}); that would reach "
            f"{decision.projected_percent:.1f}%, above the high-water mark of "
            f"{high_water_percent:g}%; evicting the unlisted models not in use would free "
            f"only {fmt_bytes(freeable)}. Free space, remove models from the list or "
            "raise the high-water mark (NODEAGENT_HIGH_WATER)")
