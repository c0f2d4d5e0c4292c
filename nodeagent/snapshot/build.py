"""`snapshot build`'s first half: prewarm the hot list, then check that every image is
present and pinned before anything is snapshotted (snapshot/create.py does the rest);
with model lists, sync the model cache on the same volume and check every model too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.errors import NodeagentError, UsageError
from nodeagent.models.layout import CONTAINERD_ROOT_CACHE_DIR

if TYPE_CHECKING:
    from nodeagent.credentials.keyring import Keyring
    from nodeagent.models.desired import DesiredModels
    from nodeagent.models.options import SyncOptions
    from nodeagent.prewarm.config import EngineConfig
    from nodeagent.prewarm.desired import DesiredImage


async def prewarm_and_verify(address: str, config: EngineConfig, desired: list[DesiredImage],
                             keyring: Keyring | None) -> tuple[str, list[str]]:
    """Pull and pin as `nodeagent prewarm`; (containerd version, pinned image names)."""
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.prewarm.display import make_reporter
    from nodeagent.prewarm.engine import PrewarmEngine
    from nodeagent.prewarm.plan import present_and_pinned_problems
    from nodeagent.snapshot.create import hot_image_names

    reporter = make_reporter(sys.stderr)
    try:
        async with ContainerdClient(address) as client:
            engine = PrewarmEngine(client, keyring, config, reporter)
            try:
                summary = await engine.reconcile(desired)
            finally:
                await engine.close()
            reporter.close()
            print(summary.text(), file=sys.stderr)
            problems = present_and_pinned_problems(desired, await client.list_image_records())
            if problems:
                raise NodeagentError("not snapshotting: " + "; ".join(problems))
            version = await client.version()
            records = await client.list_image_records()
    finally:
        reporter.close()
    return version.version, hot_image_names(records)


# ---------------------------------------------------------------------- the model cache
# `snapshot build --models-file`: the models ride along when the cache is on the volume
# being snapshotted, so nodes restored from it boot with the weights on disk too.


def check_cache_on_volume(cache_dir: Path, containerd_root: str) -> None:
    """Refuse (before anything is downloaded) a cache that the snapshot would not hold:
    one on another filesystem than containerd's root."""
    from nodeagent.hostfacts.mountinfo import find_mount, read_mountinfo

    cache_dev, root_dev = _device(cache_dir), _device(Path(containerd_root))
    if cache_dev == root_dev:
        return
    mounts = read_mountinfo()
    where = {p: getattr(find_mount(mounts, os.path.realpath(p)), "mountpoint", "?")
             for p in (str(cache_dir), containerd_root)}
    raise UsageError(
        f"--model-cache-dir {cache_dir} is on the filesystem mounted at "
        f"{where[str(cache_dir)]}, not on the volume being snapshotted (containerd's root "
        f"{containerd_root} is on {where[containerd_root]}): the models would not be in the "
        f"snapshot. Put the cache on that volume (inside containerd's root: "
        f"{CONTAINERD_ROOT_CACHE_DIR}) and give restored nodes the same "
        "NODEAGENT_MODEL_CACHE_DIR")


def _device(path: Path) -> int:
    """st_dev of the path, or of the nearest existing parent (where it would be made)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.stat(probe).st_dev


def sync_models_and_verify(desired: DesiredModels, options: SyncOptions) -> list[str]:
    """Download the models as `models prewarm --once`; their names, or an error naming
    each missing model (then nothing is snapshotted)."""
    from nodeagent.models.engine import sync
    from nodeagent.models.progress import make_reporter
    from nodeagent.models.run import summary

    result = sync(desired.specs, options, make_reporter(sys.stderr))
    print(summary(result), file=sys.stderr)
    if not result.ok:
        missing = [f"model {m.name}: {m.error.detail if m.error else m.state}"
                   for m in result.models if m.state not in ("present", "updated")]
        raise NodeagentError("not snapshotting: " + "; ".join(missing))
    return [m.name for m in result.models]
