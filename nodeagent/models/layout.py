"""Where the cache lives and how it is laid out on disk.

    <cache dir>/
      <name>/                     a published model: the object keys below its prefix
      <name>.manifest.json        what <name>/ holds: source, keys, sizes, ETags, checksums
      .nodeagent/lock             flock held by the one run working on this cache
      .nodeagent/staging/<name>/  a download in progress (tree/ + journal.jsonl), resumable;
                                  manifest.json while it is being published
      .nodeagent/trash/           replaced or evicted trees, deleted once nobody uses them

A model name is a DNS-1123 label, so it never collides with the dot-entries. Everything is
on one filesystem, so publishing is a rename. ``resolve_cache_dir`` picks the directory
(explicit > $NODEAGENT_MODEL_CACHE_DIR > the local-disk mount of ``disks setup`` >
/var/lib/nodeagent/models) and validates it before anything is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodeagent.disks.host import LAST_SETUP
from nodeagent.disks.options import DEFAULT_MOUNT_PATH
from nodeagent.errors import UsageError

CACHE_DIR_ENV = "NODEAGENT_MODEL_CACHE_DIR"
FALLBACK_CACHE_DIR = "/var/lib/nodeagent/models"
MANIFEST_SUFFIX = ".manifest.json"
META = ".nodeagent"
# Kernel and system trees a cache must never be put in (or be).
_FORBIDDEN_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/usr", "/bin", "/sbin",
                    "/lib", "/lib32", "/lib64", "/run", "/var/lib/containerd",
                    "/var/lib/kubelet", "/var/log")
_FORBIDDEN_EXACT = ("/", "/var", "/var/lib", "/home", "/root", "/tmp", "/mnt", "/opt", "/srv")
# The one place inside containerd's root a cache may be: a directory of its own, for data
# volumes mounted at containerd's root (the AL2023 snapshot builder) so that the models
# ride along in the snapshot. containerd never looks at it.
CONTAINERD_ROOT_CACHE_DIR = "/var/lib/containerd/nodeagent-models"


@dataclass(frozen=True)
class CacheLayout:
    root: Path

    def tree(self, name: str) -> Path:
        return self.root / name

    def manifest(self, name: str) -> Path:
        return self.root / f"{name}{MANIFEST_SUFFIX}"

    @property
    def meta(self) -> Path:
        return self.root / META

    @property
    def lock(self) -> Path:
        return self.meta / "lock"

    @property
    def staging_root(self) -> Path:
        return self.meta / "staging"

    def staging(self, name: str) -> Path:
        return self.staging_root / name

    def pending_manifest(self, name: str) -> Path:
        """The new version's manifest, written before its tree is swapped in."""
        return self.staging(name) / "manifest.json"

    @property
    def trash(self) -> Path:
        return self.meta / "trash"

    def model_names(self) -> list[str]:
        """Names of published trees and manifests (an orphan of either counts)."""
        names = set()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.name.endswith(MANIFEST_SUFFIX):
                names.add(entry.name.removesuffix(MANIFEST_SUFFIX))
            elif entry.is_dir(follow_symlinks=False):
                names.add(entry.name)
        return sorted(names)

    def ensure(self) -> None:
        for d in (self.root, self.meta, self.staging_root, self.trash):
            d.mkdir(parents=True, exist_ok=True)


def disks_mount(state_file: str = LAST_SETUP,
                is_mount: Callable[[str], bool] = os.path.ismount) -> str | None:
    """Mount point of nodeagent's local-disk volume 0, if ``disks setup`` made one:
    from its last setup record (this boot), else the default mount path when mounted."""
    candidates = []
    try:
        record = json.loads(Path(state_file).read_text())
        candidates += [s["mountpoint"] for s in record.get("steps", [])
                       if s.get("action") == "MountVolume" and s.get("volume") == 0]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    candidates.append(f"{DEFAULT_MOUNT_PATH}/0")
    return next((c for c in candidates if is_mount(c)), None)


def resolve_cache_dir(explicit: str | None = None, env: dict[str, str] | None = None,
                      mount_finder: Callable[[], str | None] = disks_mount) -> Path:
    """The cache dir to use, validated (not created)."""
    env = os.environ if env is None else env
    if explicit:
        return validate_cache_dir(explicit, "--cache-dir")
    if env.get(CACHE_DIR_ENV):
        return validate_cache_dir(env[CACHE_DIR_ENV], CACHE_DIR_ENV)
    mount = mount_finder()
    return validate_cache_dir(f"{mount}/models" if mount else FALLBACK_CACHE_DIR, "cache dir")


def validate_cache_dir(path: str, what: str) -> Path:
    """Absolute, outside kernel/system trees, and a directory (or creatable as one)."""
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise UsageError(f"{what} {path!r}: must be an absolute path")
    norm = os.path.normpath(path)
    for candidate in {norm, os.path.realpath(norm)}:
        if candidate == CONTAINERD_ROOT_CACHE_DIR or candidate.startswith(
                CONTAINERD_ROOT_CACHE_DIR + "/"):
            continue
        if candidate in _FORBIDDEN_EXACT or any(
                candidate == t or candidate.startswith(t + "/") for t in _FORBIDDEN_TREES):
            inside = (f" (inside containerd's root only {CONTAINERD_ROOT_CACHE_DIR})"
                      if candidate.startswith("/var/lib/containerd") else "")
            raise UsageError(f"{what} {path!r}: refusing a system directory ({candidate}); "
                             "use a directory of its own, e.g. /mnt/k8s-disks/0/models"
                             + inside)
    probe = Path(norm)
    while not probe.exists():
        if probe.is_symlink():
            raise UsageError(f"{what} {path!r}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{what} {path!r}: {probe} exists and is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path!r}: {probe} is not writable by this user")
    return Path(norm)
