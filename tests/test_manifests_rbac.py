"""RBAC in daemonset/ grants exactly the API calls the agent makes.

RBAC is checked against the calls recorded by tests/support/kubeapi/, a TEST DOUBLE of the
Kubernetes API server (no real API server can be installed here), while a real agent
runs every code path that talks to the API (watches, status, taint, Events, Leases,
pull secrets) with a real containerd and registry.
"""

from __future__ import annotations

import base64
import json

import pytest
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    events,
    eventually,
    hot_set,
    running_agent,
)
from support.daemonset_manifests import ROOT, all_documents, documents, one
from support.kubeapi import KubeApiDouble, RbacRule, Request, rbac_allows

from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA
from nodeagent.api.hotmodelset_schema import HOTMODELSET_OBJECT_SCHEMA
from nodeagent.kube.taint import TaintSpec

# -- RBAC covers exactly what the agent does ---------------------------------------------


def rbac_rules() -> list[tuple[str | None, list[RbacRule]]]:
    """(namespace or None for cluster-wide, rules) for every role bound to the agent."""
    sa = one("ServiceAccount")["metadata"]
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
             for _, b in all_documents() if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
             in b["subjects"]}
    out = []
    for _, doc in all_documents():
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        ns = doc["metadata"].get("namespace")
        if (doc["kind"], doc["metadata"]["name"], ns) not in bound:
            continue
        rules = [RbacRule(r["apiGroups"], r["resources"], r["verbs"],
                          r.get("resourceNames", [])) for r in doc["rules"]]
        out.append((ns, rules))
    return out


def allowed(req: Request, roles) -> bool:
    return any(rbac_allows(rules, req) for ns, rules in roles
               if ns is None or ns == req.namespace)


@pytest.fixture
def api():
    with KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA,
                       crd_schemas={"HotModelSet": HOTMODELSET_OBJECT_SCHEMA}) as server:
        yield server


async def test_rbac_allows_every_call_the_agent_makes_and_nothing_more(
        api, containerd, auth_sample_images, auth_credentials):
    image = auth_sample_images["python"]
    host = image.ref.split("/", 1)[0]
    config_json = {"auths": {host: {"username": auth_credentials.username,
                                    "password": auth_credentials.password}}}
    secret_role = documents(ROOT / "examples" / "pull-secret-role.yaml")[0]
    secret_ns = secret_role["metadata"]["namespace"]
    [secret_name] = secret_role["rules"][0]["resourceNames"]
    api.create("secrets", {"metadata": {"name": secret_name, "namespace": secret_ns},
                           "type": "kubernetes.io/dockerconfigjson",
                           "data": {".dockerconfigjson": base64.b64encode(
                               json.dumps(config_json).encode()).decode()}})
    add_node(api, "n1", taints=[{"key": "nodeagent.io/not-ready", "effect": "NoSchedule"}])
    api.create("hotimagesets", hot_set("private", image.ref, required=True, imagePullSecrets=[
        {"name": secret_name, "namespace": secret_ns}]), group=GROUP)
    lease_ns = lease_role_namespace()
    config = agent_config("n1", containerd.address, rollout_limit=1, lease_namespace=lease_ns,
                          startup_taint=TaintSpec.parse("nodeagent.io/not-ready:NoSchedule"))
    async with running_agent(api, config):
        await eventually(lambda: events(api, "StartupTaintRemoved"), what="taint removed")
        await eventually(lambda: events(api, "ImagesPrewarmed"), what="prewarmed")
    calls = [r for r in api.requests if r.status < 400 or r.status in (404, 409, 422)]
    assert calls
    secret_rules = [RbacRule(r["apiGroups"], r["resources"], r["verbs"],
                             r.get("resourceNames", [])) for r in secret_role["rules"]]
    roles = [*rbac_rules(), (secret_ns, secret_rules)]
    denied = sorted({(r.verb, r.group, r.resource, r.subresource, r.namespace) for r in calls
                     if not allowed(r, roles)})
    assert not denied, f"calls the RBAC manifests do not allow: {denied}"
    used = {(r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource, r.verb)
            for r in calls}
    granted = {(g, res, v) for _, rules in roles for rule in rules for g in rule.api_groups
               for res in rule.resources for v in rule.verbs}
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"


def lease_role_namespace() -> str:
    [ns] = [d["metadata"]["namespace"] for _, d in all_documents() if d["kind"] == "Role"
            and any("leases" in r["resources"] for r in d["rules"])]
    return ns
