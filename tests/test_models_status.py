"""The model cache's status rules (pure): the ModelsPrewarmed condition and the startup
taint's required models; the keeper's pass rules against moto S3 behind the throttling
proxy; the optional HotModelSet watch against tests/support/kubeapi/, a TEST DOUBLE of
the Kubernetes API server that speaks the real list/watch protocol."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.kubeapi import KubeApiDouble
from support.models_fixtures import BUCKET, MiB, aws_env, data, moto, proxy, put_multipart, s3

from nodeagent.agent.models_condition import compute_models_condition
from nodeagent.kube.taint import decide
from nodeagent.models.keeper import ModelKeeper, ModelState
from nodeagent.models.options import SyncOptions
from nodeagent.models.spec import ModelSpec


def state(name: str, state: str, required: bool = False, reason: str = "",
          message: str = "") -> ModelState:
    return ModelState(name, f"s3://models/{name}/", required, state, reason, message)


def test_condition_rule():
    present = [state("a", "present", True), state("b", "present")]
    assert compute_models_condition(present).__dict__ == {
        "status": "True", "reason": "AllModelsPresent",
        "message": "2/2 models present (required 1/1)"}
    assert compute_models_condition([]).reason == "NoHotModels"
    busy = compute_models_condition([state("a", "downloading"), state("b", "present")])
    assert (busy.status, busy.reason, busy.message) == (
        "False", "Downloading", "1/2 models present, 1 downloading")
    failed = compute_models_condition([state("a", "failed", reason="access_denied",
                                             message="access denied by S3"),
                                       state("b", "skipped", reason="disk_guard")])
    assert (failed.reason, failed.message) == (
        "DownloadFailed", "0/2 models present, 1 failed, 1 skipped; a: access denied by S3")
    assert compute_models_condition([state("b", "skipped", reason="disk_guard",
                                           message="needs 3 GiB")]).reason == "DiskSpaceLow"
    conflict = compute_models_condition(present, conflicts=["llama"])
    assert (conflict.status, conflict.reason) == ("False", "NameConflict")
    noted = compute_models_condition(present, invalid_sets=["x", "y"])
    assert noted.status == "True" and noted.message.endswith(
        "; invalid HotModelSet skipped: x, y")
    assert compute_models_condition(present, storage_problem="disks setup failed").reason \
        == "StorageNotReady"
    assert compute_models_condition(present, cache_problem="another run holds it").reason \
        == "CacheUnavailable"
    many = compute_models_condition([state(f"m{i}", "failed", message="x" * 100)
                                     for i in range(20)])
    assert len(many.message) <= 512


def test_taint_rule_with_models():
    assert decide(True, [], 5, 600, waiting_for_images=False).remove
    waiting = decide(True, [], 5, 600, waiting_for_images=False, waiting_for_models=True)
    assert not waiting.remove and waiting.message == "the model list is not known yet"
    missing = decide(True, ["img:1"], 5, 600, waiting_for_images=False,
                     required_models_missing=["a", "b", "c", "d"])
    assert missing.message == ("required images missing: img:1; required models missing: "
                               "a, b, c and 1 more")
    late = decide(True, [], 601, 600, waiting_for_images=False,
                  required_models_missing=["llama"])
    assert (late.remove, late.why) == (True, "timeout")
    assert "required models missing: llama" in late.message


# ----------------------------------------------------------------------------- keeper


def keeper(tmp_path: Path, **kw) -> ModelKeeper:
    options = SyncOptions(cache_dir=str(tmp_path / "cache"), concurrency=2,
                          range_bytes=4 * MiB)
    return ModelKeeper(options, resync_s=60, retry_initial_s=0.2, retry_max_s=0.5, **kw)


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_an_unrelated_change_does_not_restart_a_long_download(s3, proxy, tmp_path):
    put_multipart(s3, "big/shard.bin", data(16 * MiB, 1), tmp_path)
    s3.put_object(Bucket=BUCKET, Key="small/a.txt", Body=b"a")
    proxy.set_limits(per_connection_bps=2 * MiB, total_bps=4 * MiB)  # ~4 s
    k = keeper(tmp_path)
    big = ModelSpec("big", f"s3://{BUCKET}/big/")
    k.set_desired([big])
    k.start()
    try:
        wait_for(lambda: k.states()["big"].bytes_done > MiB, "download under way")
        k.set_desired([big, ModelSpec("small", f"s3://{BUCKET}/small/")])
        # A model's state turns present as it lands; the pass's result comes after it.
        wait_for(lambda: all(s.state == "present" for s in k.states().values())
                 and k.last is not None and len(k.last.models) == 2, "both")
        assert k.last is not None and [m.name for m in k.last.models] == ["big", "small"]
        changes = [(c.name, c.state) for c in k.take_changes()]
        assert ("big", "present") in changes and ("big", "pending") not in changes
    finally:
        assert k.stop()


def test_a_model_leaving_the_list_interrupts_its_download(s3, proxy, tmp_path):
    put_multipart(s3, "big/shard.bin", data(16 * MiB, 2), tmp_path)
    s3.put_object(Bucket=BUCKET, Key="small/a.txt", Body=b"a")
    proxy.set_limits(per_connection_bps=512 * 1024, total_bps=MiB)  # ~16 s
    k = keeper(tmp_path)
    k.set_desired([ModelSpec("big", f"s3://{BUCKET}/big/")])
    k.start()
    try:
        wait_for(lambda: k.states()["big"].bytes_done > 0, "download under way")
        started = time.monotonic()
        k.set_desired([ModelSpec("small", f"s3://{BUCKET}/small/")])
        wait_for(lambda: k.states()["small"].state == "present", "the new list")
        assert time.monotonic() - started < 20  # not the ~16 s the whole download takes
        assert "big" not in k.states() and not (tmp_path / "cache" / "big").exists()
    finally:
        assert k.stop()


def test_an_empty_list_touches_nothing(tmp_path):
    k = keeper(tmp_path)
    k.set_desired([])
    k.start()
    time.sleep(0.3)
    assert k.stop()
    assert k.passes == 0 and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- the watch


@pytest.mark.parametrize("code", [404, 403])
async def test_an_optional_resource_the_server_refuses_counts_as_empty(code):
    from nodeagent.api.group import HOTMODELSET
    from nodeagent.kube.client import api_resource, load_config, make_client
    from nodeagent.kube.watch import Backoff, Mirror

    with KubeApiDouble() as api:
        api.fail(code, verb="list", resource="hotmodelsets", times=1)
        kube = make_client(load_config(server=api.url))
        mirror = Mirror(kube, api_resource(HOTMODELSET), on_change=lambda: None,
                        backoff=Backoff(0.05, 0.1), optional=True, optional_retry_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        try:
            await asyncio.wait_for(mirror.synced.wait(), 5)
            assert mirror.items == {} and mirror.unavailable == code
            api.create("hotmodelsets", {"apiVersion": "nodeagent.io/v1alpha1",
                                        "kind": "HotModelSet", "metadata": {"name": "late"},
                                        "spec": {"models": []}}, group="nodeagent.io")
            deadline = time.monotonic() + 5
            while "late" not in mirror.items:  # the CRD arrived (RBAC fixed): picked up
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert mirror.unavailable is None and mirror.errors == 0
        finally:
            stop.set()
            await task
            await kube.close()
