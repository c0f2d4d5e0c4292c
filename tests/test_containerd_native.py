"""ContainerdClient's native containerd services against a real containerd (1.6.20 from
Debian) and a real registry: image records and labels, content, the event stream,
snapshot mounts, and ingests during a pull.

Daemons come from the shared fixtures in conftest.py (private containerd per test,
docker-registry per session). Slow downloads go through a throttling TCP proxy in front
of the real registry so progress can be observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import re
import tarfile
from pathlib import Path

import pytest
from support import containerd_helpers
from support.containerd_helpers import MANAGED, ThrottlingProxy

from nodeagent.containerd.client import ContainerdClient, ContainerdError, ImageEvent
from nodeagent.sandbox.containerd import PrivateContainerd

client = containerd_helpers.client


def _chain_ids(diff_ids: list[str]) -> list[str]:
    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def _first_file(layer_blob: Path) -> str:
    with gzip.open(layer_blob) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                return member.name
    raise AssertionError(f"layer {layer_blob} has no regular file")


# -- against the real daemon ------------------------------------------------------------------


@pytest.mark.containerd
async def test_update_image_labels_sets_and_deletes(
    client: ContainerdClient, sample_images  # type: ignore[no-untyped-def]
) -> None:
    ref = sample_images["python"].ref
    await client.pull_image(ref)
    await client.update_image_labels(ref, {"nodeagent.io/pinned": "true", "team": "ml"})
    record = await client.get_image_record(ref)
    assert record is not None
    assert record.labels == {**MANAGED, "nodeagent.io/pinned": "true", "team": "ml"}

    await client.update_image_labels(ref, {"team": ""})
    record = await client.get_image_record(ref)
    assert record is not None and record.labels == {**MANAGED, "nodeagent.io/pinned": "true"}

    assert await client.get_image_record("example.com/not/pulled:1") is None
    with pytest.raises(ContainerdError, match=re.escape("example.com/not/pulled:1")):
        await client.update_image_labels("example.com/not/pulled:1", {"a": "b"})


@pytest.mark.containerd
async def test_content_of_the_manifest(client: ContainerdClient, sample_images) -> None:  # type: ignore[no-untyped-def]
    pushed = sample_images["trainer"]
    absent = "sha256:" + "0" * 64
    assert not await client.content_exists(pushed.digest)
    await client.pull_image(pushed.ref)
    assert await client.content_exists(pushed.digest)
    manifest = await client.read_content(pushed.digest)
    assert manifest == pushed.image.manifest
    assert json.loads(manifest)["layers"][0]["digest"] == pushed.image.layers[0].digest
    assert not await client.content_exists(absent)
    with pytest.raises(ContainerdError, match=absent):
        await client.read_content(absent)


@pytest.mark.containerd
async def test_image_events_on_pull_and_remove(
    client: ContainerdClient, sample_images  # type: ignore[no-untyped-def]
) -> None:
    first, second = sample_images["python"], sample_images["trainer"]
    await client.pull_image(first.ref)
    events: asyncio.Queue[ImageEvent] = asyncio.Queue()

    async def consume() -> None:
        async for event in client.subscribe_image_events():
            await events.put(event)

    consumer = asyncio.create_task(consume())
    try:
        await _wait_until_subscribed(client, first.ref, events)
        image_id = await client.pull_image(second.ref)
        names = {second.ref, second.digest_ref, image_id}
        created = await _collect(events, "/images/create", names)
        assert created == names
        await client.remove_image(second.ref)
        assert await _collect(events, "/images/delete", names) == names
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)


async def _wait_until_subscribed(
    client: ContainerdClient, ref: str, events: asyncio.Queue[ImageEvent]
) -> None:
    """The stream has no 'ready' signal: poke label updates until one comes through."""
    for attempt in range(50):
        await client.update_image_labels(ref, {"nodeagent.test/poke": str(attempt)})
        with contextlib.suppress(TimeoutError):
            event = await asyncio.wait_for(events.get(), 0.2)
            assert event == ImageEvent("/images/update", ref)
            break
    else:
        raise AssertionError("no /images/update event within 50 label updates")
    while not events.empty():
        events.get_nowait()


async def _collect(events: asyncio.Queue[ImageEvent], topic: str, names: set[str]) -> set[str]:
    seen: set[str] = set()
    async with asyncio.timeout(30):
        while seen != names:
            event = await events.get()
            if event.topic == topic:
                seen.add(event.name)
    return seen


@pytest.mark.containerd
async def test_snapshot_mount_dirs(containerd: PrivateContainerd, client: ContainerdClient,
                                   sample_images) -> None:  # type: ignore[no-untyped-def]
    image = sample_images["model-server"].image
    await client.pull_image(sample_images["model-server"].ref)
    chain = _chain_ids([layer.diff_id for layer in image.layers])

    dirs = await client.snapshot_mount_dirs(chain[-1])
    assert len(dirs) == len(image.layers)
    for directory, layer in zip(dirs, reversed(image.layers), strict=True):  # top first
        assert Path(directory, _first_file(layer.path)).is_file()
    assert await client.snapshot_mount_dirs(chain[0]) == [dirs[-1]]  # one layer: bind mount
    assert "nodeagent-view-" not in containerd.ctr("snapshots", "ls")  # views removed

    with pytest.raises(ContainerdError, match="sha256:" + "1" * 64):
        await client.snapshot_mount_dirs("sha256:" + "1" * 64)


@pytest.mark.containerd
async def test_ingests_grow_during_a_slow_pull(
    client: ContainerdClient, image_pusher  # type: ignore[no-untyped-def]
) -> None:
    pushed = image_pusher("ingest-progress", sizes=[3 << 20, 3 << 20])
    async with ThrottlingProxy(pushed.ref.split("/", 1)[0], rate=2 << 20) as proxy:
        ref = f"{proxy.host}/{pushed.ref.split('/', 1)[1]}"
        pull = asyncio.create_task(client.pull_image(ref))
        layers = {layer.digest: layer.size for layer in pushed.image.layers}
        offsets: dict[str, list[int]] = {}
        while not pull.done():
            for ingest in await client.list_ingests():
                if not ingest.ref.startswith("layer-"):
                    continue  # manifest/config ingests are tiny and short-lived
                digest = ingest.ref.removeprefix("layer-")
                assert ingest.total == layers[digest]
                assert ingest.expected in ("", digest)  # containerd 1.6.20 leaves it empty
                assert ingest.updated_at >= ingest.started_at
                offsets.setdefault(ingest.ref, []).append(ingest.offset)
            await asyncio.sleep(0.1)
        await pull
    assert offsets, "no ingest seen during a ~3 s pull"
    assert any(series[-1] > series[0] for series in offsets.values()), offsets
    assert all(series == sorted(series) for series in offsets.values()), offsets
    assert await client.list_ingests() == []
