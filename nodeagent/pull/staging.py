"""nodeagent's working area beside containerd's stores.

Blobs are staged next to the content store and layers are unpacked next to the
snapshotter, on the same filesystems, so finished work is linked or renamed into
containerd's directories instead of copied. One process at a time works here (an
exclusive lock): a second nodeagent on the node (say ``prewarm --once`` while the agent
runs) pulls through CRI instead. Leftovers of a killed run are removed by the next one;
partly fetched blobs are kept for a day so a re-run resumes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid

DIR_NAME = "nodeagent-pull"
STALE_BLOB_S = 24 * 3600


class Staging:
    def __init__(self, content_root: str, snapshot_root: str) -> None:
        self.blob_dir = os.path.join(os.path.dirname(content_root), DIR_NAME, "blobs")
        self.unpack_dir = os.path.join(os.path.dirname(snapshot_root), DIR_NAME, "unpack")
        self.content_blobs = os.path.join(content_root, "blobs", "sha256")
        self.snapshots = os.path.join(snapshot_root, "snapshots")
        self._lock_fd: int | None = None

    def problem(self) -> str | None:
        """Why staging cannot work here, or None."""
        for directory, store in ((self.blob_dir, self.content_blobs),
                                 (self.unpack_dir, self.snapshots)):
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                os.makedirs(store, mode=0o755, exist_ok=True)
                if os.stat(directory).st_dev != os.stat(store).st_dev:
                    return f"{directory} is not on the same filesystem as {store}"
            except OSError as exc:
                return f"cannot use {directory}: {exc.strerror or exc}"
        return None

    def lock(self) -> bool:
        """Take the working area; False if another process has it."""
        if self._lock_fd is not None:
            return True
        path = os.path.join(os.path.dirname(self.unpack_dir), "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._clean()
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean(self) -> None:
        """Remove what a dead run left: every unpack dir and progress file, blobs (and
        their chunk logs) untouched for a day."""
        for name in _names(self.unpack_dir):
            shutil.rmtree(os.path.join(self.unpack_dir, name), ignore_errors=True)
        now = time.time()
        for name in _names(self.blob_dir):
            path = os.path.join(self.blob_dir, name)
            transient = name.endswith((".progress", ".watermark"))
            with contextlib.suppress(OSError):
                if transient or now - os.stat(path).st_mtime > STALE_BLOB_S:
                    os.unlink(path)

    def blob(self, digest: str) -> str:
        return os.path.join(self.blob_dir, digest.replace(":", "-"))

    def stored_blob(self, digest: str) -> str:
        """Where containerd's content store keeps ``digest`` (sha256 only)."""
        return os.path.join(self.content_blobs, digest.partition(":")[2])

    def new_unpack_dir(self, chain_id: str) -> str:
        """A fresh name (not created) for unpacking the layer with this chain ID."""
        return os.path.join(self.unpack_dir, f"{chain_id[7:23]}-{uuid.uuid4().hex[:12]}")

    def discard_blob(self, digest: str) -> None:
        base = self.blob(digest)
        for path in (base, base + ".chunks", base + ".watermark", base + ".progress"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _names(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []
