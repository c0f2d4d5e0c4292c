"""Hydration: after a node boots from a snapshot, read the hot images' blocks first.

An EBS volume restored from a snapshot fetches each block from S3 on first read, so the
first pod start on a new node pays that latency on every file it touches. Reading the
blocks ahead of time moves the cost off the pod's critical path:

1. containerd's metadata databases (containerd reads them at start-up);
2. per hot image, highest priority first: the unpacked layer files (what a container
   start actually reads, base layer first: it is the most shared), then the content
   blobs (manifest, config, compressed layers);
3. optionally the whole block device, sequentially (``--full-device``), so that nothing
   else on the volume is slow later.

Every file is read once (shared layers, hard links), in plan order, by a few threads
with large sequential reads and a shared token-bucket rate limit (bytes/s), so
hydration does not starve the workloads that are already starting.

hydrate_plan.py finds the files and orders them (``plan_reads`` is pure),
hydrate_read.py reads them, hydrate_progress.py shows it; this module runs the phases
(``hydrate``), once per boot for the agent (``hydrate_once_per_boot``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.errors import UsageError
from nodeagent.inputs import number_problem
from nodeagent.log import fields
from nodeagent.snapshot import limits
from nodeagent.snapshot.hydrate_plan import (
    CONTAINERD_ROOT,
    METADATA_FILES,
    HydrateImage,
    Layout,
    collect,
    plan_reads,
)
from nodeagent.snapshot.hydrate_read import (
    CHUNK,
    HydrateError,
    HydrateProgress,
    ReadStats,
    TokenBucket,
    read_device,
    read_items,
)

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.desired import DesiredImage

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class HydrateOptions:
    containerd_root: str = CONTAINERD_ROOT
    host_root: str = ""  # where the host's / is mounted (agent in a container: "/host")
    workers: int = 4
    rate_bps: float | None = None  # shared by both phases; None: unlimited
    full_device: str | None = None  # block device to read after the hot set
    snapshotter: str = "overlayfs"
    chunk: int = CHUNK


@dataclass
class HydrateReport:
    images: int
    hot: ReadStats
    device: ReadStats | None = None
    problems: list[str] = field(default_factory=list)
    complete: bool = False  # False when stopped before the end


async def hydrate(
    client: ContainerdClient,
    images: Sequence[HydrateImage],
    options: HydrateOptions,
    progress: HydrateProgress | None = None,
    stop: threading.Event | None = None,
) -> HydrateReport:
    """Read the hot images' files (then the device, if asked); report what was read."""
    import asyncio

    layout = Layout(options.containerd_root, options.host_root)
    root = layout.local(options.containerd_root)
    if not os.path.isdir(root):
        raise HydrateError(f"containerd root {root} is not a directory")
    if not os.path.exists(os.path.join(root, METADATA_FILES[0])):
        raise HydrateError(f"{root} is not containerd's root (no {METADATA_FILES[0]}): "
                           "pass the root from containerd's config.toml")
    problem = number_problem(options.workers, *limits.WORKERS)
    if problem:
        raise HydrateError(f"workers {options.workers}: {problem}")
    progress = progress or HydrateProgress()
    stop = stop or threading.Event()
    limiter = TokenBucket(options.rate_bps) if options.rate_bps else None
    files, problems = await collect(client, layout, images, options.snapshotter)
    for problem in problems:
        log.warning("hydration: image skipped or partial", extra=fields(problem=problem))
    items = plan_reads(files, layout.metadata())
    progress.phase("hot", sum(i.size for i in items), len(items))
    try:
        hot = await asyncio.to_thread(read_items, items, options.workers, limiter,
                                      options.chunk, progress.started, progress.read, stop)
        _record("hot", hot)
        progress.done("hot", hot)
        report = HydrateReport(images=len(files), hot=hot, problems=problems)
        if options.full_device:
            await _read_whole_device(options, limiter, progress, stop, report)
    except BaseException:
        stop.set()  # cancelled (agent shutdown, Ctrl-C): reader threads stop too
        raise
    report.complete = not stop.is_set()
    return report


async def _read_whole_device(options: HydrateOptions, limiter: TokenBucket | None,
                             progress: HydrateProgress, stop: threading.Event,
                             report: HydrateReport) -> None:
    """The device phase; a device that cannot be read is a problem of the report, which
    keeps what the hot phase read."""
    import asyncio

    assert options.full_device
    progress.phase("device", _device_size(options.full_device), 1)
    try:
        report.device = await asyncio.to_thread(
            read_device, options.full_device, limiter, options.chunk, progress.read, stop)
    except HydrateError as exc:
        report.problems.append(str(exc))
        log.warning("hydration: device not read", extra=fields(error=str(exc)))
        return
    _record("device", report.device)
    progress.done("device", report.device)


def check_block_device(path: str, what: str = "device") -> None:
    """Refuse what is not a block device before reading it end to end: a character
    device (/dev/zero) never ends, opening a FIFO blocks, a directory cannot be read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise UsageError(f"{what} {path}: not a block device")


def _device_size(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _record(phase: str, stats: ReadStats) -> None:
    from nodeagent import metrics

    metrics.record_hydration(phase, stats.bytes, stats.files, stats.seconds)
    rate = stats.bytes / stats.seconds if stats.seconds > 0 else 0.0
    log.info("hydration phase finished", extra=fields(
        phase=phase, files=stats.files, bytes=stats.bytes, seconds=round(stats.seconds, 3),
        mib_per_s=round(rate / 2**20, 1), errors=len(stats.errors)))


BOOT_MARKER = "/run/nodeagent/hydrated"  # tmpfs on the host: gone after every boot


async def hydrate_once_per_boot(
    client: ContainerdClient,
    images: Sequence[HydrateImage],
    options: HydrateOptions,
    progress: HydrateProgress | None = None,
    stop: threading.Event | None = None,
    marker: str | None = None,
) -> HydrateReport | None:
    """The agent's boot-time hydration: run once per boot (agent restarts skip it).

    The marker lives in the host's /run (tmpfs), not on the data volume, so a snapshot
    never carries it: every node booted from a snapshot hydrates, a restarted agent does
    not read everything again. Returns None when skipped.
    """
    done = Path(marker or options.host_root.rstrip("/") + BOOT_MARKER)
    if done.exists():
        log.info("hydration already done this boot", extra=fields(marker=str(done)))
        return None
    report = await hydrate(client, images, options, progress, stop)
    if report.complete:
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"bytes": report.hot.bytes, "images": report.images,
                                      "at": time.time()}) + "\n")
    return report


# ------------------------------------------------------------------ `nodeagent hydrate`


def images_to_hydrate(refs: Sequence[str], desired: Sequence[DesiredImage]
                      ) -> list[HydrateImage] | None:
    """--image references first (in order, above every hot-list priority), then the hot
    list's images; None when neither was given (then: every image nodeagent pinned)."""
    top = max((d.priority for d in desired), default=0)
    images = [HydrateImage(ref, top + len(refs) - i) for i, ref in enumerate(refs)]
    images += [HydrateImage(str(d.reference), d.priority) for d in desired]
    return images or None


def device_of_root(containerd_root: str, host_root: str = "") -> str:
    """The block device mounted at containerd's root (seen through ``host_root``)."""
    from nodeagent.snapshot.volume import mounted_device

    return mounted_device(host_root + containerd_root if host_root else containerd_root)


async def run_hydrate(address: str, images: list[HydrateImage] | None,
                      options: HydrateOptions, live: bool) -> HydrateReport:
    """`nodeagent hydrate`: the given images, else every image nodeagent pinned."""
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.plan import pinned_images
    from nodeagent.snapshot.hydrate_progress import make_progress

    progress = make_progress(live)
    try:
        async with ContainerdClient(address) as client:
            if images is None:
                records = await client.list_image_records()
                images = [HydrateImage(name, 0, target)
                          for name, target in pinned_images(records)]
                if not images:
                    log.warning("no image pinned by nodeagent: only containerd's metadata "
                                "is read (pass --image or -f)")
            return await hydrate(client, images, options, progress)
    finally:
        progress.close()
