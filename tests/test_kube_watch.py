"""The Kubernetes API test double's protocol, and the resilient list+watch layer on it.

Against tests/support/kubeapi/: a TEST DOUBLE of the API server (no real Kubernetes API server
can be installed here) that speaks the real HTTP list/watch protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from support.kubeapi import KubeApiDouble, validate_openapi

from nodeagent.api.group import HOTIMAGESET
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA
from nodeagent.kube.client import api_resource, load_config, make_client
from nodeagent.kube.watch import Backoff, Mirror, WatchTiming

FAST_BACKOFF = Backoff(initial_s=0.05, max_s=0.3)


@pytest.fixture
def api():
    with KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA) as server:
        yield server


def hot_set(name: str, *images: str, **spec) -> dict:
    return {
        "apiVersion": "nodeagent.io/v1alpha1", "kind": "HotImageSet",
        "metadata": {"name": name},
        "spec": {"images": [{"image": i} for i in images], **spec},
    }


def node(name: str, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def http(api: KubeApiDouble, path: str, method: str = "GET", body=None,
         ctype: str = "application/json") -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.url + path, data=data, method=method,
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def watch_lines(api: KubeApiDouble, path: str) -> list[dict]:
    with urllib.request.urlopen(api.url + path, timeout=10) as resp:
        return [json.loads(line) for line in resp if line.strip()]


# -- the double speaks the protocol --------------------------------------------------------


def test_list_watch_protocol(api):
    api.create("nodes", node("n1"))
    status, listing = http(api, "/api/v1/nodes")
    assert status == 200 and listing["kind"] == "NodeList"
    rv = listing["metadata"]["resourceVersion"]
    api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(a="b"))
    api.delete("nodes", "n1")
    events = watch_lines(api, f"/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert events[0]["object"]["metadata"]["labels"] == {"a": "b"}
    assert int(events[1]["object"]["metadata"]["resourceVersion"]) > int(rv)


def test_watch_without_version_starts_with_synthetic_added(api):
    api.create("nodes", node("n1"))
    api.create("nodes", node("n2"))
    events = watch_lines(api, "/api/v1/nodes?watch=true&timeoutSeconds=1"
                         "&fieldSelector=metadata.name%3Dn2")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "n2")]


def test_gone_as_error_event_and_http_410(api):
    api.create("nodes", node("n1"))
    rv = http(api, "/api/v1/nodes")[1]["metadata"]["resourceVersion"]
    api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(a="b"))
    api.compact()
    events = watch_lines(api, f"/api/v1/nodes?watch=true&resourceVersion={rv}")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    status, body = http(api, f"/api/v1/nodes?resourceVersion={rv}")
    assert status == 410 and body["reason"] == "Expired"
    api.watch_gone_as_http = True
    status, body = http(api, f"/api/v1/nodes?watch=true&resourceVersion={rv}")
    assert status == 410


def test_timeout_seconds_ends_the_stream(api):
    start = time.monotonic()
    assert watch_lines(api, "/api/v1/nodes?watch=true&timeoutSeconds=1") == []
    assert 0.9 <= time.monotonic() - start < 3


def test_bookmarks_when_asked(api):
    api.bookmark_interval_s = 0.2
    events = watch_lines(api, "/api/v1/nodes?watch=true&timeoutSeconds=1"
                         "&allowWatchBookmarks=true&resourceVersion=100")
    assert events and all(e["type"] == "BOOKMARK" for e in events)


def test_patches_and_conflicts(api):
    api.create("nodes", node("n1"))
    # strategic merge on the status subresource merges conditions by type
    status, obj = http(api, "/api/v1/nodes/n1/status", "PATCH",
                       {"status": {"conditions": [{"type": "X", "status": "True"}]},
                        "spec": {"unschedulable": True}},
                       "application/strategic-merge-patch+json")
    assert status == 200
    assert [c["type"] for c in obj["status"]["conditions"]] == ["Ready", "X"]
    assert "unschedulable" not in obj["spec"]  # status subresource ignores spec
    # JSON patch with a failing test op is rejected with 422 and changes nothing
    status, body = http(api, "/api/v1/nodes/n1", "PATCH",
                        [{"op": "test", "path": "/spec/taints", "value": []},
                         {"op": "add", "path": "/spec/taints", "value": []}],
                        "application/json-patch+json")
    assert status == 422
    status, obj = http(api, "/api/v1/nodes/n1", "PATCH",
                       [{"op": "add", "path": "/spec/taints",
                         "value": [{"key": "k", "effect": "NoSchedule"}]}],
                       "application/json-patch+json")
    assert status == 200 and obj["spec"]["taints"] == [{"key": "k", "effect": "NoSchedule"}]
    # merge patch with a stale resourceVersion is a 409
    status, body = http(api, "/api/v1/nodes/n1", "PATCH",
                        {"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}},
                        "application/merge-patch+json")
    assert status == 409 and body["reason"] == "Conflict"


def test_lease_create_update_conflict(api):
    lease = {"metadata": {"name": "l1", "namespace": "ns"}, "spec": {"holderIdentity": "a"}}
    path = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"
    status, created = http(api, path, "POST", lease)
    assert status == 201
    assert http(api, path, "POST", lease)[0] == 409
    stale = dict(created, spec={"holderIdentity": "b"})
    assert http(api, path + "/l1", "PUT", stale)[0] == 200
    status, body = http(api, path + "/l1", "PUT", stale)
    assert status == 409 and body["reason"] == "Conflict"
    assert http(api, "/api/v1/namespaces/ns/secrets/nope")[0] == 404


def test_crd_schema_admission(api):
    status, body = http(api, "/apis/nodeagent.io/v1alpha1/hotimagesets", "POST",
                        hot_set("bad", "nginx", priority="high"))
    assert status == 422 and "spec.priority" in body["message"]
    assert validate_openapi(HOTIMAGESET_OBJECT_SCHEMA, hot_set("ok", "nginx:1")) == []
    assert validate_openapi(HOTIMAGESET_OBJECT_SCHEMA, hot_set("empty")) != []


# -- the Mirror survives what real API servers do --------------------------------------------


class Changes:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


async def eventually(predicate, timeout: float = 5.0, what: str = "condition") -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def client(api):
    c = make_client(load_config(server=api.url))
    yield c
    await c.close()


async def start_mirror(client, resource, **kw):
    changes = Changes()
    stop = asyncio.Event()
    mirror = Mirror(client, resource, on_change=changes, backoff=Backoff(0.05, 0.3),
                    timing=kw.pop("timing", WatchTiming(20, 30, 1)), **kw)
    task = asyncio.create_task(mirror.run(stop))
    await asyncio.wait_for(mirror.synced.wait(), 5)
    return mirror, changes, stop, task


def names(mirror: Mirror) -> set[str]:
    return set(mirror.items)


async def test_mirror_follows_create_update_delete(api, client):
    res = api_resource(HOTIMAGESET)
    api.create("hotimagesets", hot_set("a", "nginx:1"), group="nodeagent.io")
    mirror, _changes, stop, task = await start_mirror(client, res)
    assert names(mirror) == {"a"}
    api.create("hotimagesets", hot_set("b", "redis:7"), group="nodeagent.io")
    took = await eventually(lambda: names(mirror) == {"a", "b"}, what="ADDED")
    assert took < 1.0
    api.update("hotimagesets", "a", lambda o: o["spec"].update(priority=5), group="nodeagent.io")
    await eventually(lambda: mirror.items["a"]["spec"].get("priority") == 5, what="MODIFIED")
    api.delete("hotimagesets", "b", group="nodeagent.io")
    await eventually(lambda: names(mirror) == {"a"}, what="DELETED")
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_mirror_relists_after_410_and_notices_missed_deletes(api, client):
    res = api_resource(HOTIMAGESET)
    for n in ("a", "b"):
        api.create("hotimagesets", hot_set(n, "nginx:1"), group="nodeagent.io")
    mirror, _changes, stop, task = await start_mirror(client, res)
    api.stop()  # server away: meanwhile "b" is deleted and history compacted
    api.delete("hotimagesets", "b", group="nodeagent.io")
    api.create("hotimagesets", hot_set("c", "nginx:1"), group="nodeagent.io")
    api.compact()
    api.start()
    await eventually(lambda: names(mirror) == {"a", "c"}, what="re-list after 410")
    assert mirror.relists >= 1
    assert api.calls("list", "hotimagesets")[-1].status == 200
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_mirror_resumes_after_dropped_connection_without_relist(api, client):
    res = api_resource(HOTIMAGESET)
    api.create("hotimagesets", hot_set("a", "nginx:1"), group="nodeagent.io")
    mirror, _changes, stop, task = await start_mirror(client, res)
    lists_before = len(api.calls("list", "hotimagesets"))
    await eventually(lambda: api.calls("watch", "hotimagesets"), what="watch open")
    api.drop_connections()
    api.create("hotimagesets", hot_set("b", "nginx:1"), group="nodeagent.io")
    await eventually(lambda: names(mirror) == {"a", "b"}, what="resume")
    assert len(api.calls("list", "hotimagesets")) == lists_before  # resumed from its rv
    rvs = [r.params.get("resourceVersion") for r in api.calls("watch", "hotimagesets")]
    assert len(rvs) >= 2 and all(rvs)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_mirror_backs_off_while_server_is_down(api, client):
    from lightkube.resources.core_v1 import Node

    api.create("nodes", node("n1", {"a": "1"}))
    mirror, _changes, stop, task = await start_mirror(client, Node, name="n1")
    api.stop()
    await asyncio.sleep(1.0)
    assert mirror.errors >= 2  # it kept trying, with backoff (not a hot loop)
    assert mirror.errors < 40
    api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(a="2"))
    api.start()
    await eventually(lambda: mirror.items["n1"].metadata.labels == {"a": "2"}, timeout=5,
                     what="node after restart")
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_named_mirror_watches_only_its_object(api, client):
    from lightkube.resources.core_v1 import Node

    api.create("nodes", node("n1"))
    api.create("nodes", node("n2"))
    mirror, changes, stop, task = await start_mirror(client, Node, name="n1")
    assert names(mirror) == {"n1"}
    before = changes.count
    api.update("nodes", "n2", lambda o: o["metadata"]["labels"].update(x="y"))
    api.update("nodes", "n1", lambda o: o["metadata"]["labels"].update(x="z"))
    await eventually(lambda: mirror.items["n1"].metadata.labels == {"x": "z"})
    assert names(mirror) == {"n1"} and changes.count == before + 1
    watches = api.calls("watch", "nodes")
    assert all(w.params.get("fieldSelector") == "metadata.name=n1" for w in watches)
    assert not api.calls("list", "nodes")  # one object: get + watch, never a list
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_watch_requests_are_bounded_by_timeout(api, client):
    res = api_resource(HOTIMAGESET)
    mirror, _changes, stop, task = await start_mirror(
        client, res, timing=WatchTiming(min_s=0.5, max_s=0.7, client_margin_s=1))
    await asyncio.sleep(2.0)
    watches = api.calls("watch", "hotimagesets")
    assert len(watches) >= 2
    assert all(w.params["timeoutSeconds"] == "1" for w in watches)
    assert len(api.calls("list", "hotimagesets")) == 1
    api.create("hotimagesets", hot_set("a", "nginx:1"), group="nodeagent.io")
    await eventually(lambda: names(mirror) == {"a"})
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_mirror_relists_when_a_watch_is_refused_with_http_410(api, client):
    res = api_resource(HOTIMAGESET)
    api.create("hotimagesets", hot_set("a", "nginx:1"), group="nodeagent.io")
    api.watch_gone_as_http = True
    mirror, _changes, stop, task = await start_mirror(client, res)
    await eventually(lambda: api.calls("watch", "hotimagesets"), what="watch open")
    api.stop()
    api.delete("hotimagesets", "a", group="nodeagent.io")
    api.compact()
    api.start()
    await eventually(lambda: names(mirror) == set(), what="re-list after HTTP 410")
    assert 410 in [w.status for w in api.calls("watch", "hotimagesets")]
    assert mirror.relists >= 1
    stop.set()
    await asyncio.wait_for(task, 5)
