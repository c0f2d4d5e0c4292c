"""How each image is pulled: nodeagent's fast path (``nodeagent.pull``) or CRI PullImage.

``--pull-path`` (env NODEAGENT_PULL_PATH): ``auto`` (default) takes the fast path where
its preconditions hold and falls back to CRI, per image, saying why and counting it
(``nodeagent_prewarm_pull_fallbacks_total{reason}``); ``fast`` insists (an image it cannot
take fails with the reason); ``cri`` always uses PullImage. The node's preconditions are
checked once, on the first pull; an image's own (media types) on each.

Bytes fetched reach ``nodeagent_prewarm_pulled_bytes`` as for CRI pulls (the ingest
monitor credits each layer once it is in the content store); bytes unpacked go to
``nodeagent_prewarm_unpacked_bytes``. Either way the pull is watched: a fast pull that
still has bytes to fetch and during which nothing moves for the stall timeout (no byte
fetched, unpacked or handed to containerd, for the image itself or for a layer it waits
on another image to pull) is cancelled (``Stalled``) and retried by the engine.
Fast-path errors are classified like CRI's (auth, not_found, registry_unreachable,
no_space, other), so retries, metrics and messages stay the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from typing import TYPE_CHECKING

from nodeagent import metrics
from nodeagent.containerd.model import ImagePullError, pull_error_message, scrub
from nodeagent.log import fields, redact_text
from nodeagent.prewarm import apply
from nodeagent.pull.image_pull import PullProgress
from nodeagent.pull.plan import Unsupported
from nodeagent.pull.preconditions import FastPathUnavailable, check_fast_path
from nodeagent.pull.puller import FastPuller, PullOptions
from nodeagent.pull.unpack import UnpackError
from nodeagent.registry.errors import RegistryError

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.containerd.model import AuthConfig
    from nodeagent.prewarm.config import EngineConfig
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.prewarm.progress import ImageProgress

log = logging.getLogger(__name__)


class PullPath:
    def __init__(self, client: ContainerdClient, config: EngineConfig) -> None:
        self.client = client
        self.mode = config.pull_path
        self.host_root = config.host_root
        self.hosts_dir = str(config.hosts_dir) if config.hosts_dir else None
        self.options = PullOptions(
            chunk_bytes=config.fetch_chunk_mib << 20,
            connections_per_blob=config.fetch_connections_per_blob,
            max_connections=config.fetch_connections)
        self.poll_s = config.poll_interval_s
        self.stall_timeout_s = config.stall_timeout_s
        self._puller: FastPuller | None = None
        self._unavailable: FastPathUnavailable | None = None
        self._checked = asyncio.Lock()

    async def pull(self, image: DesiredImage, auth: AuthConfig | None,
                   progress: ImageProgress) -> tuple[str, str]:
        """(image id, path taken: "fast" or "cri")."""
        if self.mode != "cri":
            puller = await self._fast_puller()
            if puller is not None:
                try:
                    image_id = await self._fast(puller, image, auth, progress)
                    return image_id, "fast"
                except Unsupported as exc:
                    self._fall_back(image, "media_type", str(exc))
            elif self.mode == "fast":
                assert self._unavailable is not None
                raise ImagePullError(f"image {image.reference}: the fast path cannot run on "
                                     f"this node: {self._unavailable}",
                                     image=str(image.reference), reason="other")
            else:
                self._fall_back(image, self._unavailable.code if self._unavailable else "other",
                                str(self._unavailable))
        image_id = await apply.pull_watched(self.client, image, auth, progress, self.poll_s,
                                            self.stall_timeout_s)
        return image_id, "cri"

    async def close(self) -> None:
        if self._puller is not None:
            puller, self._puller = self._puller, None
            await puller.close()
            puller.setup.staging.unlock()

    # -- the fast path

    async def _fast_puller(self) -> FastPuller | None:
        async with self._checked:
            if self._puller is None and self._unavailable is None:
                await self._check()
        return self._puller

    async def _check(self) -> None:
        from nodeagent.containerd.store import ContainerdStore

        try:
            setup = await check_fast_path(ContainerdStore(self.client), self.host_root)
            if self.hosts_dir:  # an explicit --hosts-dir wins over containerd's own
                setup.hosts_dir = self.hosts_dir
            if not setup.staging.lock():
                raise FastPathUnavailable("another nodeagent process is pulling on this node",
                                          "busy")
        except FastPathUnavailable as exc:
            self._unavailable = exc
            log.warning("fast pull unavailable on this node; pulling through CRI", extra=fields(
                reason=exc.code, detail=str(exc)))
            return
        self._puller = FastPuller(self.client, setup, self.options)
        log.info("fast pull enabled", extra=fields(
            snapshotter_root=setup.snapshot_root, hosts_dir=setup.hosts_dir or "",
            content_sharing="shared" if setup.shared_content else "isolated (blobs streamed)"))

    def _fall_back(self, image: DesiredImage, code: str, why: str) -> None:
        if self.mode == "fast":
            raise ImagePullError(f"image {image.reference}: the fast path cannot pull it: {why}",
                                 image=str(image.reference), reason="other")
        metrics.PREWARM_PULL_FALLBACKS.labels(reason=metrics.fallback_reason(code)).inc()
        log.info("pulling through CRI instead of the fast path", extra=fields(
            image=str(image.reference), reason=code, detail=redact_text(why)))

    async def _fast(self, puller: FastPuller, image: DesiredImage, auth: AuthConfig | None,
                    progress: ImageProgress) -> str:
        live = PullProgress()
        task = asyncio.create_task(puller.pull(image.reference, auth, image.platform, live))
        progress.reset_clock(time.monotonic())
        work, moved = live.work(), time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.poll_s)
                now = time.monotonic()
                progress.advance(live.fetched, live.unpacked, now)
                if done:
                    return _result(task, image, auth)
                if live.work() != work:
                    work, moved = live.work(), now
                elif live.downloading() and now - moved > self.stall_timeout_s:
                    raise apply.Stalled()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            metrics.PREWARM_UNPACKED_BYTES.inc(live.unpacked_done)


def _result(task: asyncio.Task[str], image: DesiredImage, auth: AuthConfig | None) -> str:
    """The image id, or the fast path's failure as the engine's ImagePullError (worded
    like a CRI pull's)."""
    ref = str(image.reference)
    advice = None
    try:
        return task.result()
    except Unsupported:
        raise
    except RegistryError as exc:
        reason, details = exc.reason, str(exc)
    except UnpackError as exc:
        reason, details = "other", str(exc)
        advice = _WRONG_BLOB if exc.bad_blob else _BAD_LAYER
    except OSError as exc:
        reason = "no_space" if exc.errno == errno.ENOSPC else "other"
        details = exc.strerror or str(exc)
    details = redact_text(scrub(details, auth))
    raise ImagePullError(pull_error_message(ref, reason, details, "the fast pull", advice),
                         image=ref, reason=reason) from None


_WRONG_BLOB = ("the registry (or a mirror or proxy on the way) sent a layer whose bytes do "
               "not match the manifest; nothing of it was kept")
_BAD_LAYER = "nodeagent could not unpack a layer; nothing of it was kept"
