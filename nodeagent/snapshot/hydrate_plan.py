"""What hydration reads, in which order: the hot images' files, found through containerd.

For each image: its target digest (from containerd's records), its blobs (index or
manifest, config, compressed layers) and its unpacked layer files (the snapshotter's
directories for its ChainID). ``plan_reads`` (pure) orders them: containerd's metadata
databases first, then each image by priority, its layer files (what a container start
reads, base layer first) before its blobs, every file once (shared layers, hard links).
"""

from __future__ import annotations

import json
import os
import platform
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodeagent.errors import NodeagentError
from nodeagent.pull.chain import chain_ids
from nodeagent.snapshot.hydrate_read import HydrateError, ReadItem

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient

CONTAINERD_ROOT = "/var/lib/containerd"  # containerd's default root (config.toml "root")
CONTENT_DIR = "io.containerd.content.v1.content/blobs/sha256"
METADATA_FILES = (
    "io.containerd.metadata.v1.bolt/meta.db",
    "io.containerd.snapshotter.v1.overlayfs/metadata.db",
)
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x"}


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
