"""Node condition, startup taint, Events and pull secrets (the rollout queue: test_rollout_queue).

Pure decisions are tested directly; effects run against tests/support/kubeapi/, a TEST DOUBLE
of the Kubernetes API server (no real API server can be installed here) that speaks the
real HTTP protocol (patch types, 409/422, Leases with resourceVersion).
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from support.kubeapi import KubeApiDouble

from nodeagent.agent.condition import CONDITION_TYPE
from nodeagent.api.hotimageset import SecretRef
from nodeagent.kube.client import load_config, make_client
from nodeagent.kube.events import EventLimiter, EventRecorder
from nodeagent.kube.nodestatus import Condition, NodeConditionReporter, Reported, should_patch
from nodeagent.kube.secrets import PullSecretError, PullSecrets
from nodeagent.kube.taint import TaintSpec, decide, removal_patch, remove_taint
from nodeagent.registry.reference import parse_reference

# -- pure decisions ---------------------------------------------------------------------------


def test_should_patch_only_on_change_rate_limit_and_heartbeat():
    a = Condition("False", "Pulling", "1/3")
    last = Reported(a, "t", at=100.0)
    assert should_patch(None, a, 100, 600, 10)
    assert not should_patch(last, a, 105, 600, 10)  # unchanged
    assert not should_patch(last, Condition("False", "Pulling", "2/3"), 105, 600, 10)
    assert should_patch(last, Condition("False", "Pulling", "2/3"), 111, 600, 10)
    assert should_patch(last, Condition("True", "AllImagesPresent", "3/3"), 101, 600, 10)
    assert should_patch(last, a, 700.5, 600, 10)  # heartbeat


def test_taint_spec_and_removal_patch():
    spec = TaintSpec.parse("nodeagent.io/not-ready:NoSchedule")
    assert (spec.key, spec.effect, spec.value) == ("nodeagent.io/not-ready", "NoSchedule", None)
    assert str(TaintSpec.parse("a=b:NoExecute")) == "a=b:NoExecute"
    for bad in ("bad key:NoSchedule", "k:Sometimes"):
        with pytest.raises(Exception, match="startup taint"):
            TaintSpec.parse(bad)
    taints = [{"key": "other", "effect": "NoSchedule"},
              {"key": "nodeagent.io/not-ready", "effect": "NoSchedule"}]
    assert removal_patch(taints, spec) == [
        {"op": "test", "path": "/spec/taints/1", "value": taints[1]},
        {"op": "remove", "path": "/spec/taints/1"}]
    assert removal_patch(taints[:1], spec) is None


def test_taint_decision():
    assert decide(True, [], 5, 600, waiting_for_images=False).why == "ready"
    wait = decide(True, ["img:1"], 5, 600, waiting_for_images=False)
    assert not wait.remove and "img:1" in wait.message
    assert not decide(False, [], 5, 600, waiting_for_images=False).remove
    assert not decide(True, [], 5, 600, waiting_for_images=True).remove
    late = decide(False, ["img:1"], 601, 600, waiting_for_images=False)
    assert late.remove and late.why == "timeout"
    assert "local storage" in late.message and "img:1" in late.message


def test_event_limiter_dedups_and_rate_limits():
    lim = EventLimiter(dedup_s=60, burst=2, refill_s=10)
    assert lim.check(("Failed", "a"), 0) == "sent"
    assert lim.check(("Failed", "a"), 1) == "deduplicated"
    assert lim.check(("Failed", "b"), 1) == "sent"
    assert lim.check(("Failed", "c"), 2) == "rate_limited"
    assert lim.check(("Failed", "c"), 12) == "sent"  # a token came back
    assert lim.check(("Failed", "a"), 61) == "sent"  # dedup window over (token refilled)


# -- effects against the API double -------------------------------------------------------


@pytest.fixture
def api():
    with KubeApiDouble() as server:
        yield server


@pytest.fixture
async def client(api):
    c = make_client(load_config(server=api.url))
    yield c
    await c.close()


def add_node(api, name="n1", taints=None):
    return api.create("nodes", {"metadata": {"name": name, "labels": {}},
                                "spec": {"taints": taints or []},
                                "status": {"conditions": [{"type": "Ready",
                                                           "status": "True"}]}})


async def test_condition_patch_keeps_other_conditions_and_skips_no_change(api, client):
    from lightkube.resources.core_v1 import Node

    add_node(api)
    reporter = NodeConditionReporter(client, "n1", CONDITION_TYPE, min_interval_s=0)
    cond = Condition("False", "Pulling", "0/2 hot images present, 2 pulling")
    assert await reporter.report(cond)
    assert not await reporter.report(cond)
    stored = api.get("nodes", "n1")["status"]["conditions"]
    assert [c["type"] for c in stored] == ["Ready", CONDITION_TYPE]
    first_transition = stored[1]["lastTransitionTime"]
    assert await reporter.report(Condition("False", "Pulling", "1/2 hot images present"))
    assert api.get("nodes", "n1")["status"]["conditions"][1]["lastTransitionTime"] \
        == first_transition  # same status: transition time kept
    patches = api.calls("patch", "nodes", "status")
    assert len(patches) == 2
    assert all(p.content_type == "application/strategic-merge-patch+json" for p in patches)
    # a restarted agent adopts the condition on the node and does not re-patch it
    fresh = NodeConditionReporter(client, "n1", CONDITION_TYPE, min_interval_s=0)
    fresh.adopt(await client.get(Node, "n1"))
    assert not await fresh.report(Condition("False", "Pulling", "1/2 hot images present"))


async def test_taint_removed_without_clobbering_a_concurrent_change(api, client):
    spec = TaintSpec.parse("nodeagent.io/not-ready:NoSchedule")
    add_node(api, taints=[{"key": "a", "effect": "NoSchedule"},
                          {"key": "nodeagent.io/not-ready", "effect": "NoSchedule",
                           "timeAdded": "2024-05-01T10:00:00Z"}])
    fired = []

    def concurrent_change(req):
        # Right before our first patch lands, another controller removes taint "a":
        # the index of ours shifts, so our test op must fail and we must retry.
        if req.verb == "patch" and not fired:
            fired.append(True)
            api.update("nodes", "n1", lambda o: o["spec"].update(
                taints=[t for t in o["spec"]["taints"] if t["key"] != "a"]
                + [{"key": "b", "effect": "NoExecute"}]))

    api.hooks.append(concurrent_change)
    assert await remove_taint(client, "n1", spec)
    assert api.get("nodes", "n1")["spec"]["taints"] == [{"key": "b", "effect": "NoExecute"}]
    statuses = [r.status for r in api.calls("patch", "nodes")]
    assert statuses == [422, 200]
    assert not await remove_taint(client, "n1", spec)  # already gone


async def test_events_created_on_the_node_and_deduplicated(api, client):
    add_node(api)
    recorder = EventRecorder(client, "n1")
    recorder.node_uid = api.get("nodes", "n1")["metadata"]["uid"]
    assert recorder.emit("Warning", "ImagePullFailed", "img:1: 401", key="img:1") == "sent"
    assert recorder.emit("Warning", "ImagePullFailed", "img:1: 401 again",
                         key="img:1") == "deduplicated"
    await recorder.flush()
    events = api.list("events", namespace="default")
    assert len(events) == 1
    ev = events[0]
    assert ev["involvedObject"] == {"kind": "Node", "apiVersion": "v1", "name": "n1",
                                    "uid": recorder.node_uid}
    assert (ev["type"], ev["reason"], ev["source"]["component"]) == (
        "Warning", "ImagePullFailed", "nodeagent")


async def test_pull_secrets_read_and_reported(api, client):
    config = {"auths": {"reg.example.com": {"username": "u", "password": "hunter2-secret"}}}
    api.create("secrets", {"metadata": {"name": "reg", "namespace": "ml"},
                           "type": "kubernetes.io/dockerconfigjson",
                           "data": {".dockerconfigjson": base64.b64encode(
                               json.dumps(config).encode()).decode()}})
    secrets = PullSecrets(client)
    keyring = await secrets([SecretRef("ml", "reg"), SecretRef("ml", "missing")])
    auth = await keyring.credentials_for(parse_reference("reg.example.com/app:1"))
    assert (auth.username, auth.password) == ("u", "hunter2-secret")
    await secrets([SecretRef("ml", "reg")])
    assert len(api.calls("get", "secrets")) == 2  # cached: one GET per secret
    with pytest.raises(PullSecretError, match="ml/missing not found") as err:
        await secrets([SecretRef("ml", "missing")])
    assert "hunter2" not in str(err.value)


async def test_condition_patch_backs_off_while_the_api_fails(api, client):
    add_node(api)
    reporter = NodeConditionReporter(client, "n1", CONDITION_TYPE, min_interval_s=0)
    api.fail(500, verb="patch", subresource="status", times=2)
    cond = Condition("False", "Pulling", "0/1")
    assert not await reporter.report(cond)
    assert not reporter.pending(cond) and reporter.next_due(cond) > 0.5
    assert not await reporter.report(cond)  # not even tried: backing off
    assert len(api.calls("patch", "nodes", "status")) == 1
    await asyncio.sleep(reporter.next_due(cond))
    assert not await reporter.report(cond)  # second injected failure: longer backoff
    assert reporter.next_due(cond) > 1.5
    await asyncio.sleep(reporter.next_due(cond))
    assert await reporter.report(cond)
