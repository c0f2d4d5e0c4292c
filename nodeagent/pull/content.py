"""Put blobs into containerd's content store, with the labels its pull writes.

A layer blob is fetched into a staging file on the content store's filesystem, and both
its digests (the blob's, and the uncompressed diff ID) are verified by nodeagent while it
streams through the unpack, before anything of it becomes visible. It is then
hard-linked into the store's ``blobs/sha256`` directory and committed through the content
service (``Write``: STAT, then COMMIT with the expected digest and size). With
containerd's default ``shared`` content policy the metadata store finds the file, checks
its size, and records it: no data passes through gRPC and containerd does not read the
blob again (it does not re-hash it; nodeagent's own check is what guards the content).

Why link instead of streaming the blob through ``Write``: a 20 GB layer would be written
to disk a second time and pass through gRPC, hashed again by containerd (Go 1.19's sha256
without SHA-NI). Measured on this project's machine, one fast pull of an image with one
650 MiB layer: 1.5 s with the blob linked (containerd: 0.05 CPU-seconds), 8.8 s with it
streamed through ``Write`` (containerd: 5.4 CPU-seconds, more than decompressing it).

With the ``isolated`` policy (bolt plugin ``content_sharing_policy``) containerd ignores
files it has not received itself, so there the blob is streamed through ``Write`` (no
link), resuming from whatever offset containerd's ingest already has; containerd then
hashes it and checks size and digest on commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

from nodeagent.containerd.store import WRITE_MESSAGE_BYTES, ContainerdStore
from nodeagent.pull.preconditions import FastPathSetup


def ingest_ref(kind: str, digest: str) -> str:
    """containerd's ingest ref (remotes.MakeRefKey): "layer-sha256:…", "manifest-…"…"""
    return f"{kind}-{digest}"


async def store_document(store: ContainerdStore, kind: str, digest: str, data: bytes,
                         labels: dict[str, str], lease: str) -> None:
    """A manifest, index or config (small, in memory); labels merged if it exists."""
    async def chunks(offset: int) -> AsyncIterator[bytes]:
        yield data[offset:]

    created = await store.write_content(ingest_ref(kind, digest), digest, len(data), labels,
                                        chunks, lease)
    if not created:
        await store.set_content_labels(digest, labels)


async def store_layer_blob(store: ContainerdStore, setup: FastPathSetup, digest: str,
                           size: int, staged: str | None, labels: dict[str, str],
                           lease: str, on_bytes: Callable[[int], None] | None = None) -> None:
    """Register layer ``digest`` (staged at ``staged``, or already in the store's
    directory) in the namespace, under ``lease``; ``on_bytes`` hears of bytes streamed."""
    stored = setup.staging.stored_blob(digest)
    link = staged is not None and setup.shared_content
    if link:
        await asyncio.to_thread(_link_into_store, staged, stored)
    created = await store.write_content(ingest_ref("layer", digest), digest, size, labels,
                                        _file_chunks(staged or stored, on_bytes), lease)
    if not created:
        await store.set_content_labels(digest, labels)
    if link and not os.path.exists(stored):
        # containerd's GC may have swept the file between link and commit (it was not
        # referenced yet); the commit now references it, so put it back.
        await asyncio.to_thread(_link_into_store, staged, stored)


def sync_file(path: str) -> None:
    """Flush a staged blob to disk before containerd records it (containerd syncs its
    blobs on commit too); called as soon as the fetch ends, so it overlaps the unpack."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _link_into_store(staged: str, stored: str) -> None:
    with contextlib.suppress(FileExistsError, OSError):
        os.chmod(staged, 0o444)  # as containerd leaves its blobs
        os.link(staged, stored)


def _file_chunks(path: str, on_bytes: Callable[[int], None] | None):  # type: ignore[no-untyped-def]
    async def chunks(offset: int) -> AsyncIterator[bytes]:
        with open(path, "rb", buffering=0) as file:
            file.seek(offset)
            while data := await asyncio.to_thread(file.read, WRITE_MESSAGE_BYTES):
                yield data
                if on_bytes is not None:
                    on_bytes(len(data))
    return chunks
