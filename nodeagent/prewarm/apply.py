"""The engine's effects on containerd's image records: the pins, unpins and removals a
plan decided, one CRI pull watched for stalls, and the labels a pulled image gets; and
the watch on image deletions that wakes the engine (self-heal).

Which labels mean what is plan.py's; these functions only write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nodeagent.containerd.model import ContainerdError, ContainerdUnavailable, quote_filter_value
from nodeagent.log import fields, redact_text
from nodeagent.prewarm import plan

if TYPE_CHECKING:
    from nodeagent.containerd.client import ContainerdClient
    from nodeagent.containerd.model import AuthConfig
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.prewarm.progress import ImageProgress

log = logging.getLogger(__name__)


class Stalled(Exception):
    """No byte arrived for the stall timeout while the pull was still downloading."""


async def apply_labels(client: ContainerdClient, updates: Sequence[plan.LabelUpdate],
                       pin: bool) -> list[str]:
    """Write the label updates; return the images they touched. A record that cannot be
    labelled is logged and skipped, unless containerd is away altogether."""
    done: list[str] = []
    for update in updates:
        try:
            await client.update_image_labels(update.name, update.labels)
        except ContainerdError as exc:
            if isinstance(exc, ContainerdUnavailable):
                raise
            log.warning("cannot update image labels", extra=fields(
                record=update.name, error=redact_text(str(exc))))
            continue
        if update.image not in done:
            done.append(update.image)
            log.info("pinned image" if pin else "unpinned image (left the hot list)",
                     extra=fields(image=update.image))
    return done


async def remove_image(client: ContainerdClient, removal: plan.Removal
                       ) -> tuple[str, str | None]:
    """Remove one unlisted image through CRI: (its name, None), or (its name, why not)."""
    name = next((n for n in removal.names if "@" not in n and ":" in n), removal.ref)
    try:
        await client.remove_image(removal.ref)
    except ContainerdError as exc:
        if isinstance(exc, ContainerdUnavailable):
            raise
        error = redact_text(str(exc))
        log.warning("cannot remove unlisted image", extra=fields(image=name, error=error))
        return name, error
    log.info("removed image that left the hot list (--remove-unlisted)",
             extra=fields(image=name, digest=removal.target_digest))
    return name, None


async def pull_watched(client: ContainerdClient, image: DesiredImage, auth: AuthConfig | None,
                       progress: ImageProgress, poll_s: float, stall_timeout_s: float) -> str:
    """CRI PullImage, cancelled (Stalled) when the download stalls; the image id."""
    pull = asyncio.create_task(client.pull_image(str(image.reference), auth))
    progress.reset_clock(time.monotonic())
    try:
        while True:
            done, _ = await asyncio.wait({pull}, timeout=poll_s)
            if done:
                return pull.result()
            if progress.stalled(time.monotonic(), stall_timeout_s):
                raise Stalled()
    finally:
        if not pull.done():
            pull.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pull


async def label_pulled(client: ContainerdClient, image: DesiredImage, image_id: str,
                       known_target: str | None) -> str | None:
    """Label every record of a pulled image: our pulled marker, and the pin when the
    image is pinned; return its target digest."""
    record = await client.get_image_record(image_id)
    target = record.target_digest if record else known_target
    records = await client.list_image_records(
        [f"target.digest=={quote_filter_value(target)}"]) if target else []
    for rec in records:
        labels = {plan.PULLED_LABEL: plan.MARKER_VALUE}
        if image.pin and rec.labels.get(plan.CRI_PINNED_LABEL) != plan.CRI_PINNED_VALUE:
            labels.update(plan.PIN_LABELS)
        await client.update_image_labels(rec.name, labels)
    return target


async def watch_image_deletions(client: ContainerdClient, wake: asyncio.Event,
                                stop: asyncio.Event, backoff_initial_s: float,
                                backoff_max_s: float) -> None:
    """Set ``wake`` when containerd deletes an image; resubscribe after restarts."""
    delay = backoff_initial_s
    while not stop.is_set():
        try:
            async for event in client.subscribe_image_events():
                delay = backoff_initial_s
                if event.topic == "/images/delete":
                    log.debug("image deleted", extra=fields(record=event.name))
                    wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # stream broken (containerd restart): resubscribe
            log.debug("event stream ended: %s", exc)
        wake.set()  # events may have been missed meanwhile
        await asyncio.sleep(delay)
        delay = min(backoff_max_s, delay * 2)
