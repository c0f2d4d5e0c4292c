"""The fast pull as `nodeagent prewarm` takes it (the CLI and the engine), against the real
containerd and registry: what a user sees when a blob arrives with wrong bytes, and when an
image has a layer the fast path does not unpack (the per-image fallback to CRI)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from support.prewarm_helpers import desired, hotlist_yaml
from support.pull_features import feature_layers
from support.pull_helpers import (
    assert_nothing_of,
    blob_files,
    corrupt_blob,
    labels_of,
    push,
    staged_files,
)

from nodeagent import metrics
from nodeagent.containerd.client import ContainerdClient
from nodeagent.prewarm.config import EngineConfig
from nodeagent.prewarm.engine import PrewarmEngine
from nodeagent.sandbox.featured import Entry, build_featured, layer_blob

pytestmark = pytest.mark.containerd


def prewarm(containerd, hot, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent.cli", "prewarm", "-f", str(hot), "--once",
         "--progress", "log", "--containerd-address", containerd.address, *args],
        capture_output=True, text=True, timeout=300)


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.2)


async def test_wrong_bytes_fail_the_prewarm_naming_image_and_digest(fresh_registry, containerd,
                                                                   tmp_path):
    """`prewarm --pull-path fast`, a registry that serves a layer with wrong bytes (same
    size) on every attempt: exit 1, the image and the blob's digest named, no traceback;
    nothing of the image stays in containerd (record, snapshot, lease, ingest, blob, once
    its GC ran) nor in the staging area."""
    image = build_featured("fast/wrong", feature_layers()[:3], tmp_path / "blobs")
    (ref,) = push(fresh_registry, image)
    bad = image.layers[1].digest
    corrupt_blob(fresh_registry, bad)
    hot = tmp_path / "hot.yaml"
    hot.write_text(hotlist_yaml("wrong", [ref]))
    done = prewarm(containerd, hot, "--pull-path", "fast", "--max-retries", "1")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    failure = [line for line in output.splitlines() if bad in line and ref in line]
    assert failure and "does not match its digest" in failure[-1], output
    assert "sent a layer whose bytes do not match the manifest" in failure[-1]
    assert "after 2 attempts" in failure[-1]
    assert_nothing_of(containerd, image)
    async with ContainerdClient(containerd.address) as client:
        assert await client.list_ingests() == []
        assert await client.image_status(ref) is None
    ours = {layer.digest for layer in image.layers} | {image.config_digest}
    our_files = {d.partition(":")[2] for d in ours}

    def all_gone() -> bool:
        # containerd's GC drops the content records first and deletes the files in a
        # second step after its metadata transaction, so both are awaited.
        return not (ours & set(labels_of(containerd, "content"))
                    or our_files & set(blob_files(containerd)))

    wait_until(all_gone, 10)
    assert not ours & set(labels_of(containerd, "content"))
    assert not our_files & set(blob_files(containerd))
    assert staged_files(containerd) == []


# ----------------------------------------------------------------------------- media types

NON_DISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
ENCRYPTED = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"


def _fallbacks(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("nodeagent_prewarm_pull_fallbacks_total",
                                             {"reason": reason}) or 0.0


def odd_image(name: str, media_type: str | None, cache):
    """Two layers; the top one with ``media_type`` (None: a plain OCI gzip layer)."""
    return build_featured(name, [
        layer_blob([Entry("base", data=name.encode())]),
        layer_blob([Entry("top", data=b"top of " + name.encode())], media_type=media_type),
    ], cache)


async def test_a_layer_media_type_the_fast_path_does_not_take(registry, containerd, tmp_path,
                                                             caplog):
    """`auto`: an image with a non-distributable layer is pulled through CRI (it works
    there), logged with the image and the reason, counted as media_type; the image beside
    it still takes the fast path. `fast`: an image with an encrypted layer fails, naming
    the layer's media type, and leaves nothing behind (no record, lease or snapshot)."""
    foreign = odd_image("fast/foreign", NON_DISTRIBUTABLE, tmp_path / "blobs")
    plain = odd_image("fast/plain", None, tmp_path / "blobs")
    sealed = odd_image("fast/sealed", ENCRYPTED, tmp_path / "blobs")
    foreign_ref, plain_ref, sealed_ref = push(registry, foreign, plain, sealed)
    caplog.set_level("INFO", logger="nodeagent.prewarm")
    before = _fallbacks("media_type")
    async with ContainerdClient(containerd.address) as client:
        engine = PrewarmEngine(client, None, EngineConfig(pull_path="auto"))
        try:
            auto = await engine.reconcile(desired(foreign_ref, plain_ref))
        finally:
            await engine.close()
        assert _fallbacks("media_type") == before + 1
        engine = PrewarmEngine(client, None, EngineConfig(pull_path="fast", max_retries=0))
        try:
            forced = await engine.reconcile(desired(sealed_ref))
        finally:
            await engine.close()
        assert (await client.image_status(foreign_ref)).id == foreign.config_digest
        assert await client.image_status(sealed_ref) is None
    assert auto.ok, auto.text()
    paths = {state.image: state.pull_path for state in auto.states}
    assert paths == {foreign_ref: "cri", plain_ref: "fast"}
    said = [r.fields for r in caplog.records
            if r.getMessage() == "pulling through CRI instead of the fast path"]
    assert [(s["image"], s["reason"]) for s in said] == [(foreign_ref, "media_type")]
    assert NON_DISTRIBUTABLE in said[0]["detail"]
    assert _fallbacks("media_type") == before + 1  # `fast` does not fall back
    assert not forced.ok
    message = forced.states[0].message
    assert sealed_ref in message and "the fast path cannot pull it" in message
    assert ENCRYPTED in message and sealed.layers[1].digest in message
    assert sealed_ref not in labels_of(containerd, "images")
    assert containerd.ctr("leases", "ls").splitlines()[1:] == []
    assert staged_files(containerd) == []
