"""Helpers of the fast-pull tests: a second containerd, the fast pull run directly,
and what containerd holds afterwards (labels of blobs, snapshots and records; staged
files), read through its API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

from nodeagent.containerd.client import ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.pull.image_pull import PullProgress
from nodeagent.pull.plan import chain_ids
from nodeagent.pull.preconditions import check_fast_path
from nodeagent.pull.puller import FastPuller, PullOptions
from nodeagent.registry.reference import parse_reference
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.push import push_images
from support.pull_compare import describe_tree, layer_dirs, tree_differences


def extra_containerd(tmp_path: Path) -> Iterator[PrivateContainerd]:
    """A second private containerd (for a fixture): the fast pull fills one, containerd's
    CRI the other."""
    daemon = PrivateContainerd(tmp_path / "ctrd-fast")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


async def fast_pull(containerd: PrivateContainerd, ref: str, host_root: str = "", *,
                    hosts_dir: str | None = None, hook=None,
                    options: PullOptions | None = None,
                    progress: PullProgress | None = None) -> str:
    """``hosts_dir``: another hosts.toml directory than containerd's; ``hook(puller)``
    runs before the pull (to widen a race window)."""
    async with ContainerdClient(containerd.address) as client:
        setup = await check_fast_path(ContainerdStore(client), host_root)
        if hosts_dir is not None:
            setup.hosts_dir = hosts_dir
        assert setup.staging.lock()
        puller = FastPuller(client, setup, options)
        if hook is not None:
            hook(puller)
        try:
            return await puller.pull(parse_reference(ref), None, None, progress)
        finally:
            await puller.close()
            setup.staging.unlock()


def push(registry, *images) -> list[str]:
    push_images(registry.host, list(images))
    return [image.ref(registry.host) for image in images]


async def assert_same_layers(image, ours: PrivateContainerd, theirs: PrivateContainerd,
                             since: float) -> None:
    chains = chain_ids([layer.diff_id for layer in image.layers])
    async with ContainerdClient(ours.address) as a, ContainerdClient(theirs.address) as b:
        mine, reference = await layer_dirs(a, chains), await layer_dirs(b, chains)
    problems = []
    for chain in chains:
        diffs = tree_differences(describe_tree(mine[chain], since),
                                 describe_tree(reference[chain], since))
        problems += [f"layer {chain[:19]}: {d}" for d in diffs]
    assert not problems, "\n".join(problems[:40])


def labels_of(containerd: PrivateContainerd, what: str) -> dict[str, dict[str, str]]:
    """Every blob (by digest), snapshot (by key) or image record (by name) with its labels,
    read through containerd's API (``ctr`` prints label maps in random order)."""
    keys = [line.split()[0] for line in containerd.ctr(what, "ls").splitlines()[1:]
            if line.strip()]

    async def read() -> dict[str, dict[str, str]]:
        async with ContainerdClient(containerd.address) as client:
            store = ContainerdStore(client)
            found: dict[str, dict[str, str]] = {}
            for key in keys:
                if what == "content":
                    info = await store.content_info(key)
                    found[key] = info.labels if info else {}
                elif what == "snapshots":
                    snap = await store.snapshot("overlayfs", key)
                    found[key] = snap.labels if snap else {}
                else:
                    record = await client.get_image_record(key)
                    found[key] = record.labels if record else {}
            return found

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


def corrupt_blob(registry, digest: str) -> None:
    """Flip bytes of a stored blob (same size): the registry serves wrong bytes."""
    hexd = digest.partition(":")[2]
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    raw = bytearray(data.read_bytes())
    for i in range(100, len(raw), 997):
        raw[i] ^= 0x5A
    data.write_bytes(bytes(raw))


def assert_nothing_of(containerd: PrivateContainerd, image) -> None:
    assert labels_of(containerd, "images") == {}
    chains = set(chain_ids([layer.diff_id for layer in image.layers]))
    deadline = time.monotonic() + 10
    while chains & set(labels_of(containerd, "snapshots")) and time.monotonic() < deadline:
        time.sleep(0.2)  # containerd's GC runs shortly after the lease goes
    assert not chains & set(labels_of(containerd, "snapshots"))
    assert containerd.ctr("leases", "ls").splitlines()[1:] == []


def staged_files(containerd: PrivateContainerd) -> list[Path]:
    """Files the fast pull left in its working area (its lock file aside)."""
    staging = containerd.root / "nodeagent-pull"
    return [p for p in staging.rglob("*") if p.is_file() and p.name != "lock"]


def blob_files(containerd: PrivateContainerd) -> list[str]:
    """Hex digests of the blobs in containerd's content directory."""
    blobs = containerd.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []
