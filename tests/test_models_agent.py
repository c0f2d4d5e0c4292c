"""The DaemonSet agent's model cache end to end: HotModelSets in tests/support/kubeapi/,
a TEST DOUBLE of the Kubernetes API server (no real API server can be installed here)
that speaks the real HTTP list/watch protocol; models from moto S3 in server mode (real
boto3 over HTTP, behind the throttling proxy) and from the real registry (OCI
artifacts); a real private containerd for the agent's image half."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    condition,
    events,
    eventually,
    model_set,
    running_agent,
)
from support.kubeapi import ApiFailure, KubeApiDouble
from support.models_fixtures import BUCKET, aws_env, data, moto, proxy, s3

from nodeagent import metrics
from nodeagent.agent.config import ModelsConfig
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA
from nodeagent.api.hotmodelset_schema import HOTMODELSET_OBJECT_SCHEMA
from nodeagent.kube.taint import TaintSpec
from nodeagent.sandbox.artifacts import push_artifact

MODELS = "ModelsPrewarmed"
TAINT = "nodeagent.io/not-ready"


@pytest.fixture
def api():
    with KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA,
                       crd_schemas={"HotModelSet": HOTMODELSET_OBJECT_SCHEMA}) as server:
        yield server


def config(node: str, address: str, cache: Path, **kw):
    models = ModelsConfig(cache_dir=str(cache), resync_s=60, retry_initial_s=0.3,
                          retry_max_s=1.0, concurrency=4)
    return agent_config(node, address, models=models, **kw)


def cond(api: KubeApiDouble, node: str = "n1") -> dict:
    return condition(api, node, MODELS) or {}


async def test_sets_reach_the_cache_with_condition_events_and_metrics(api, containerd, s3,
                                                                      registry, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="llm/config.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="llm/w/shard.bin", Body=data(200_000, 1))
    art = push_artifact(registry.host, "models/bert", "v1", {"vocab.txt": b"a b"})
    cache = tmp_path / "cache"
    add_node(api, "n1", labels={"workload": "inference"})
    async with running_agent(api, config("n1", containerd.address, cache)) as run:
        await eventually(lambda: run.agent.models.desired is not None, what="empty list")
        await asyncio.sleep(0.5)
        assert cond(api) == {}  # never had models: no condition, no status writes
        api.create("hotmodelsets", model_set(
            "serving", ("llm", f"s3://{BUCKET}/llm/", 5, True), ("bert", "oci://" + art.ref),
            nodeSelector={"matchLabels": {"workload": "inference"}}), group=GROUP)
        await eventually(lambda: cond(api).get("status") == "True", what="models present")
        assert (cond(api)["reason"], cond(api)["message"]) == (
            "AllModelsPresent", "2/2 models present (required 1/1)")
        assert (cache / "llm" / "w" / "shard.bin").read_bytes() == data(200_000, 1)
        assert (cache / "bert" / "vocab.txt").read_bytes() == b"a b"
        await eventually(lambda: events(api, "ModelsPrewarmed"), what="Normal Event")
        assert metrics.AGENT_MODELS_PREWARMED._value.get() == 1
        assert metrics.MODELS_BY_STATE.labels(state="present")._value.get() == 2
        assert metrics.AGENT_HOTMODELSETS.labels(state="selected")._value.get() == 1
        assert condition(api, "n1")["type"] == "ImagesPrewarmed"  # the images' one untouched

        # An edit: one model out, one in. The one left out stays cached (no space needed).
        s3.put_object(Bucket=BUCKET, Key="tok.json", Body=b"tok")
        api.update("hotmodelsets", "serving", lambda o: o["spec"].update(models=[
            {"name": "llm", "source": f"s3://{BUCKET}/llm/"},
            {"name": "tok", "source": f"s3://{BUCKET}/tok.json"}]), group=GROUP)
        await eventually(lambda: (cache / "tok.manifest.json").exists(), what="new model")
        await eventually(lambda: cond(api).get("message") == "2/2 models present")
        assert (cache / "bert" / "vocab.txt").exists()

        # The node leaves the selector: nothing selects it any more.
        api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(workload="batch"))
        await eventually(lambda: cond(api).get("reason") == "NoHotModels", what="deselected")
        assert cond(api)["status"] == "True"


async def test_failures_are_reported_once_and_retried_until_fixed(api, containerd, s3,
                                                                   tmp_path):
    cache = tmp_path / "cache"
    add_node(api, "n1")
    api.create("hotmodelsets", model_set("s", ("later", f"s3://{BUCKET}/later/")),
               group=GROUP)
    async with running_agent(api, config("n1", containerd.address, cache)) as run:
        await eventually(lambda: cond(api).get("reason") == "DownloadFailed", what="failure")
        assert "later: no objects below s3://models/later/" in cond(api)["message"]
        await eventually(lambda: events(api, "HotModelSyncFailed"), what="Warning Event")
        await eventually(lambda: run.agent.models.keeper.passes >= 3, what="retries")
        [event] = events(api, "HotModelSyncFailed")  # deduplicated across retries
        assert event["type"] == "Warning"
        assert event["message"].startswith(f"model later (s3://{BUCKET}/later/): no objects")
        s3.put_object(Bucket=BUCKET, Key="later/x.bin", Body=b"x")
        await eventually(lambda: cond(api).get("status") == "True", what="recovered")
        assert (cache / "later" / "x.bin").read_bytes() == b"x"


async def test_startup_taint_waits_for_required_models(api, containerd, s3, tmp_path):
    add_node(api, "n1", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    api.create("hotmodelsets", model_set("s", ("weights", f"s3://{BUCKET}/weights/", 1, True),
                                         ("extra", f"s3://{BUCKET}/missing/")), group=GROUP)
    conf = config("n1", containerd.address, tmp_path / "cache",
                  startup_taint=TaintSpec.parse(f"{TAINT}:NoSchedule"))
    async with running_agent(api, conf) as run:
        await eventually(lambda: run.agent.models.keeper.passes >= 1, what="a pass")
        await asyncio.sleep(1.0)
        assert _tainted(api)  # the required model is missing
        s3.put_object(Bucket=BUCKET, Key="weights/model.bin", Body=data(1000, 2))
        await eventually(lambda: not _tainted(api), what="taint removed")
        await eventually(lambda: events(api, "StartupTaintRemoved"), what="Event")
        [event] = events(api, "StartupTaintRemoved")
        assert "required hot images and models present" in event["message"]
        # the optional model still fails: it never held the taint
        assert cond(api)["reason"] == "DownloadFailed"


def _tainted(api: KubeApiDouble) -> bool:
    return any(t["key"] == TAINT for t in api.get("nodes", "n1")["spec"].get("taints", []))


async def test_taint_timeout_names_the_missing_model(api, containerd, tmp_path):
    add_node(api, "n1", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    api.create("hotmodelsets", model_set("s", ("weights", f"s3://{BUCKET}/none/", 1, True)),
               group=GROUP)
    conf = config("n1", containerd.address, tmp_path / "cache",
                  startup_taint=TaintSpec.parse(TAINT), startup_taint_timeout_s=2.0)
    async with running_agent(api, conf):
        await eventually(lambda: not _tainted(api), what="taint removed on timeout")
        await eventually(lambda: events(api, "StartupTaintTimeout"), what="Event")
        [event] = events(api, "StartupTaintTimeout")
        assert "required models missing: weights" in event["message"]


async def test_name_conflicts_and_invalid_sets_are_reported_and_skipped(api, containerd, s3,
                                                                        tmp_path):
    s3.put_object(Bucket=BUCKET, Key="ok/a.bin", Body=b"a")
    add_node(api, "n1")
    api.create("hotmodelsets", model_set("team-a", ("llama", f"s3://{BUCKET}/v1/"),
                                         ("ok", f"s3://{BUCKET}/ok/")), group=GROUP)
    api.create("hotmodelsets", model_set("team-b", ("llama", f"s3://{BUCKET}/v2/")),
               group=GROUP)
    # Stored as if created before the CRD had its schema:
    api.create("hotmodelsets", model_set("broken", ("x", "ftp://nope")), group=GROUP,
               validate=False)
    async with running_agent(api, config("n1", containerd.address, tmp_path / "cache")) as run:
        await eventually(lambda: cond(api).get("reason") == "NameConflict", what="conflict")
        message = cond(api)["message"]
        assert message.startswith("1/1 models present; left out, sets disagree on the "
                                  "source of: llama")
        assert "invalid HotModelSet skipped: broken" in message
        await eventually(lambda: events(api, "HotModelNameConflict"), what="Event")
        [event] = events(api, "HotModelNameConflict")
        assert 'HotModelSet "team-a" says s3://models/v1/' in event["message"]
        assert not (tmp_path / "cache" / "llama").exists()
        assert run.agent.models.selection.invalid == ["broken"]
        api.delete("hotmodelsets", "team-b", group=GROUP)
        await eventually(lambda: cond(api).get("reason") == "DownloadFailed",
                         what="llama wanted again (its prefix is empty)")


def test_the_crd_refuses_two_models_with_one_name(api):
    with pytest.raises(ApiFailure) as info:
        api.create("hotmodelsets", model_set("dup", ("a", "s3://models/a/"),
                                             ("a", "s3://models/b/")), group=GROUP)
    assert info.value.code == 422 and "Duplicate value" in info.value.message


async def test_without_the_crd_images_go_on_and_the_taint_does_not_wait(api, containerd,
                                                                        tmp_path):
    """An older install without the HotModelSet CRD: the API answers 404 for the list."""
    api.fail(404, verb="list", resource="hotmodelsets", times=10_000)
    add_node(api, "n1", taints=[{"key": TAINT, "effect": "NoSchedule"}])
    conf = config("n1", containerd.address, tmp_path / "cache",
                  startup_taint=TaintSpec.parse(TAINT))
    async with running_agent(api, conf) as run:
        start = time.monotonic()
        await eventually(lambda: not _tainted(api), what="taint removed")
        assert time.monotonic() - start < 10
        assert run.agent.models.mirror.unavailable == 404
        assert condition(api, "n1")["reason"] == "NoHotImages"
        assert cond(api) == {}
        assert not (tmp_path / "cache").exists()


async def test_stopping_mid_download_is_prompt_and_resumable(api, containerd, s3, proxy,
                                                             tmp_path):
    from support.models_fixtures import put_multipart

    put_multipart(s3, "big/shard.bin", data(24 << 20, 3), tmp_path)
    proxy.set_limits(per_connection_bps=1 << 20, total_bps=2 << 20)  # ~12 s in all
    add_node(api, "n1")
    api.create("hotmodelsets", model_set("s", ("big", f"s3://{BUCKET}/big/")), group=GROUP)
    cache = tmp_path / "cache"
    async with running_agent(api, config("n1", containerd.address, cache)) as run:
        await eventually(lambda: (run.agent.models.keeper.states().get("big") or
                                  _NO).bytes_done > 1 << 20, what="download under way")
        started = time.monotonic()
        run.stop.set()
        await asyncio.wait_for(run.task, 30)
    assert time.monotonic() - started < 15
    assert not (cache / "big").exists()  # nothing half-published
    assert list((cache / ".nodeagent" / "staging").iterdir())  # the partial download stays
    proxy.set_limits(None, None)
    async with running_agent(api, config("n1", containerd.address, cache)):
        await eventually(lambda: cond(api).get("status") == "True", what="resumed")
    assert (cache / "big" / "shard.bin").read_bytes() == data(24 << 20, 3)


class _NO:
    bytes_done = 0
