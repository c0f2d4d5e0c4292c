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
hydration does not starve the workloads that are already starting. The pure part
(``plan_reads``) orders and deduplicates; the rest reads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import mmap
import os
import platform
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeagent.errors import NodeagentError, UsageError
from nodeagent.log import fields

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB: large sequential reads, which EBS serves best
CONTENT_DIR = "io.containerd.content.v1.content/blobs/sha256"
METADATA_FILES = (
    "io.containerd.metadata.v1.bolt/meta.db",
    "io.containerd.snapshotter.v1.overlayfs/metadata.db",
)
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x"}


class HydrateError(NodeagentError):
    """Hydration could not start (bad root, device, or options)."""


# ------------------------------------------------------------------------------ plan (pure)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    dev: int
    ino: int


@dataclass(frozen=True)
class ImageFiles:
    """What one hot image occupies on disk."""

    image: str
    priority: int
    layer_files: tuple[FileEntry, ...] = ()
    blobs: tuple[FileEntry, ...] = ()


@dataclass(frozen=True)
class ReadItem:
    path: str
    size: int
    owner: str  # image reference, or "containerd" for the metadata databases
    kind: str  # "metadata" | "layer" | "blob"


def plan_reads(images: Sequence[ImageFiles],
               metadata: Sequence[FileEntry] = ()) -> list[ReadItem]:
    """Read order: metadata, then images by priority (highest first, ties in given order),
    each image's layer files before its blobs; a file shared by several images is read
    once, for the first of them."""
    seen: set[tuple[int, int]] = set()
    plan: list[ReadItem] = []

    def add(entries: Iterable[FileEntry], owner: str, kind: str) -> None:
        for entry in entries:
            key = (entry.dev, entry.ino)
            if key in seen:
                continue
            seen.add(key)
            plan.append(ReadItem(entry.path, entry.size, owner, kind))

    add(metadata, "containerd", "metadata")
    ranked = sorted(enumerate(images), key=lambda pair: (-pair[1].priority, pair[0]))
    for _, image in ranked:
        add(image.layer_files, image.image, "layer")
        add(image.blobs, image.image, "blob")
    return plan


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: chain(L0) = diff(L0); chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
            continue
        text = f"{chains[-1]} {diff_id}".encode()
        chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    return "linux", GOARCH.get(machine, machine)


def pick_manifest(index: dict[str, Any], wanted: tuple[str, str],
                  present: Callable[[str], bool]) -> str | None:
    """The index entry for this platform whose blob is on disk (else any that is)."""
    entries = [m for m in index.get("manifests", []) if present(m.get("digest", ""))]
    for entry in entries:
        plat = entry.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) == wanted:
            return str(entry["digest"])
    return str(entries[0]["digest"]) if entries else None


# ------------------------------------------------------------------------------ rate limit

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}


def parse_rate(text: str, what: str = "--rate") -> float | None:
    """"200MiB", "150M", "1.5GiB/s", "1048576" -> bytes/s; "" -> None (unlimited)."""
    raw = text.strip().lower().removesuffix("/s")
    if not raw:
        return None
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"{what} {text!r}: expected a number with an optional unit "
                         "(K, M, G, KiB, MiB, GiB), e.g. 200MiB") from None
    if value <= 0:
        raise UsageError(f"{what} {text!r}: must be positive")
    return value



class TokenBucket:
    """Thread-safe byte-rate limiter: ``take(n)`` sleeps until n bytes fit the rate.

    Tokens may go negative (a reservation larger than the bucket), so any chunk size works
    with any rate; over T seconds at most ``rate * T + capacity`` bytes pass.
    """

    def __init__(self, rate_bps: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate_bps <= 0:
            raise HydrateError(f"rate limit must be positive (got {rate_bps} bytes/s)")
        self.rate = float(rate_bps)
        self.capacity = float(capacity if capacity is not None else CHUNK)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def give_back(self, n: int) -> None:
        """Return a reservation that was not used (short read at end of file)."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + n)


# ------------------------------------------------------------------------------ reading


@dataclass
class ReadStats:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    per_owner: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _read_file(path: str, chunk: int, buf: bytearray, limiter: TokenBucket | None,
               stop: threading.Event, on_bytes: Callable[[int], None] | None) -> int:
    total = 0
    view = memoryview(buf)[:chunk]
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        with contextlib.suppress(OSError):  # advisory only
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while not stop.is_set():
            # Reserve what this read should return, so small files cost only their size.
            want = min(chunk, max(size - total, 0))
            if limiter and want:
                limiter.take(want)
            got = f.readinto(view) or 0
            if limiter and got < want:
                limiter.give_back(want - got)
            elif limiter and got > want:  # the file grew
                limiter.take(got - want)
            if not got:
                break
            total += got
            if on_bytes:
                on_bytes(got)
    return total


def read_items(
    items: Sequence[ReadItem],
    workers: int = 4,
    limiter: TokenBucket | None = None,
    chunk: int = CHUNK,
    on_start: Callable[[ReadItem], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReadStats:
    """Read every item fully, ``workers`` at a time, starting them strictly in order."""
    stats = ReadStats()
    stop = stop or threading.Event()
    lock = threading.Lock()
    position = 0
    started = time.monotonic()

    def worker() -> None:
        nonlocal position
        buf = bytearray(chunk)
        while not stop.is_set():
            with lock:
                if position >= len(items):
                    return
                item = items[position]
                position += 1
                if on_start:
                    on_start(item)  # under the lock: the callback sees plan order
            try:
                got = _read_file(item.path, chunk, buf, limiter, stop, on_bytes)
            except OSError as exc:
                with lock:
                    stats.errors.append(f"{item.path}: {exc.strerror or exc}")
                continue
            with lock:
                stats.files += 1
                stats.bytes += got
                stats.per_owner[item.owner] = stats.per_owner.get(item.owner, 0) + got

    threads = [threading.Thread(target=worker, name=f"hydrate-{i}", daemon=True)
               for i in range(max(1, workers))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:
        stop.set()  # KeyboardInterrupt in the joining thread: the workers stop too
        raise
    stats.seconds = time.monotonic() - started
    return stats


def _open_for_scan(path: str, direct: bool) -> int:
    try:
        return os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    except OSError as exc:
        if direct and exc.errno == errno.EINVAL:  # no O_DIRECT here (tmpfs, some files)
            return _open_for_scan(path, False)
        raise HydrateError(f"cannot open {path} for reading: {exc.strerror}") from exc


def read_device(
    path: str,
    limiter: TokenBucket | None = None,
    chunk: int = CHUNK,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> ReadStats:
    """Read a block device (or file) from start to end with O_DIRECT when possible: the
    blocks get loaded without evicting the hot files from the page cache (and O_DIRECT
    was 4x faster than buffered reads of a loop device here)."""
    stats = ReadStats()
    stop = stop or threading.Event()
    started = time.monotonic()
    direct = chunk % 4096 == 0
    fd = _open_for_scan(path, direct)
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    offset = 0
    try:
        while not stop.is_set():
            if limiter:
                limiter.take(chunk)
            try:
                got = os.readv(fd, [buf])
            except OSError as exc:
                if not (direct and exc.errno == errno.EINVAL):
                    raise HydrateError(
                        f"reading {path} failed at byte {offset}: {exc.strerror}") from exc
                os.close(fd)  # the filesystem refused O_DIRECT reads: go buffered
                direct, fd = False, _open_for_scan(path, False)
                os.lseek(fd, offset, os.SEEK_SET)
                continue
            if not got:
                break
            if not direct:
                with contextlib.suppress(OSError):  # keep the hot files cached
                    os.posix_fadvise(fd, offset, got, os.POSIX_FADV_DONTNEED)
            offset += got
            if on_bytes:
                on_bytes(got)
    finally:
        os.close(fd)
        buf.close()
    stats.files, stats.bytes = 1, offset
    stats.per_owner[path] = offset
    stats.seconds = time.monotonic() - started
    return stats


# ------------------------------------------------------------------------------ collecting


def walk_files(directories: Iterable[str]) -> list[FileEntry]:
    """Regular files under the directories (symlinks not followed), in a stable order."""
    entries: list[FileEntry] = []
    for top in directories:
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                    entries.append(FileEntry(path, st.st_size, st.st_dev, st.st_ino))
    return entries


def file_entry(path: str) -> FileEntry | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileEntry(path, st.st_size, st.st_dev, st.st_ino)


@dataclass(frozen=True)
class HydrateImage:
    """An image to hydrate: a reference (tag or digest) or a target digest, and priority."""

    image: str
    priority: int = 0
    target: str | None = None  # manifest/index digest, when already known


class Layout:
    """Maps containerd's (host) paths to paths readable here (agent: /proc/1/root)."""

    def __init__(self, containerd_root: str, host_root: str = "") -> None:
        self.containerd_root = containerd_root
        self.host_root = host_root.rstrip("/")

    def local(self, host_path: str) -> str:
        return self.host_root + host_path if self.host_root else host_path

    def blob(self, digest: str) -> str:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or not hexpart:
            raise HydrateError(f"unsupported digest {digest!r}")
        return self.local(os.path.join(self.containerd_root, CONTENT_DIR, hexpart))

    def metadata(self) -> list[FileEntry]:
        found = (file_entry(self.local(os.path.join(self.containerd_root, rel)))
                 for rel in METADATA_FILES)
        return [e for e in found if e is not None]


async def resolve_targets(client: ContainerdClient, images: Sequence[HydrateImage]
                          ) -> tuple[list[HydrateImage], list[str]]:
    """Target digests of the images from containerd's records; problems for the absent."""
    from nodeagent.prewarm import plan
    from nodeagent.registry.reference import parse_reference

    records = await client.list_image_records()
    resolved, problems = [], []
    for image in images:
        target = image.target
        if target is None:
            try:
                target = plan.find_target(parse_reference(image.image), records)
            except NodeagentError as exc:  # not a valid reference
                problems.append(f"{image.image}: {exc}")
                continue
        if target is None:
            problems.append(f"{image.image}: not in containerd")
            continue
        resolved.append(HydrateImage(image.image, image.priority, target))
    return resolved, problems


async def image_files(client: ContainerdClient, layout: Layout, image: HydrateImage,
                      snapshotter: str = "overlayfs") -> tuple[ImageFiles, list[str]]:
    """Blob and unpacked-layer files of one image (problems noted, not raised)."""
    assert image.target is not None
    problems: list[str] = []
    blob_digests = [image.target]
    manifest = json.loads(await client.read_content(image.target))
    if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
        chosen = pick_manifest(manifest, host_platform(),
                               lambda d: os.path.exists(layout.blob(d)))
        if chosen is None:
            return ImageFiles(image.image, image.priority), [
                f"{image.image}: no manifest of its index is on disk"]
        blob_digests.append(chosen)
        manifest = json.loads(await client.read_content(chosen))
    config_digest = manifest.get("config", {}).get("digest")
    layers = [layer["digest"] for layer in manifest.get("layers", [])]
    blob_digests += [config_digest, *layers] if config_digest else layers
    blobs = [e for e in (file_entry(layout.blob(d)) for d in blob_digests) if e is not None]
    layer_files: list[FileEntry] = []
    if config_digest:
        config = json.loads(await client.read_content(config_digest))
        chains = chain_ids(config.get("rootfs", {}).get("diff_ids", []))
        if chains:
            try:
                dirs = await client.snapshot_mount_dirs(chains[-1], snapshotter)
                layer_files = walk_files(layout.local(d) for d in reversed(dirs))
            except NodeagentError as exc:
                problems.append(f"{image.image}: unpacked layers not found ({exc})")
    return ImageFiles(image.image, image.priority, tuple(layer_files), tuple(blobs)), problems


async def collect(client: ContainerdClient, layout: Layout, images: Sequence[HydrateImage],
                  snapshotter: str = "overlayfs") -> tuple[list[ImageFiles], list[str]]:
    resolved, problems = await resolve_targets(client, images)
    found = []
    for image in resolved:
        try:
            files, issues = await image_files(client, layout, image, snapshotter)
        except (NodeagentError, ValueError) as exc:  # ValueError: manifest is not JSON
            problems.append(f"{image.image}: {exc}")
            continue
        found.append(files)
        problems += issues
    return found, problems


# ------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class HydrateOptions:
    containerd_root: str = "/var/lib/containerd"
    host_root: str = ""  # where the host's / is mounted (agent in a container: "/host")
    workers: int = 4
    rate_bps: float | None = None  # shared by both phases; None: unlimited
    full_device: str | None = None  # block device to read after the hot set
    snapshotter: str = "overlayfs"
    chunk: int = CHUNK


class HydrateProgress:
    """Callbacks a display can implement (all optional; called from reader threads)."""

    def phase(self, name: str, total_bytes: int, files: int) -> None: ...

    def started(self, item: ReadItem) -> None: ...

    def read(self, n: int) -> None: ...

    def done(self, name: str, stats: ReadStats) -> None: ...


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
    if options.workers < 1:
        raise HydrateError(f"workers must be at least 1 (got {options.workers})")
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
            progress.phase("device", _device_size(options.full_device), 1)
            report.device = await asyncio.to_thread(
                read_device, options.full_device, limiter, options.chunk, progress.read, stop)
            _record("device", report.device)
            progress.done("device", report.device)
    except BaseException:
        stop.set()  # cancelled (agent shutdown, Ctrl-C): reader threads stop too
        raise
    report.complete = not stop.is_set()
    return report


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
