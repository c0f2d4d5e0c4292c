"""The DaemonSet manifests in daemonset/: they parse, carry what the agent needs, the CRDs
are the kinds' own schemas, the examples are valid, and RBAC grants exactly the API calls
the agent makes.

RBAC is checked against the calls recorded by tests/support/kubeapi.py, a TEST DOUBLE of the
Kubernetes API server (no real API server can be installed here), while a real agent
runs every code path that talks to the API (watches, status, taint, Events, Leases,
pull secrets) with a real containerd and registry.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from support.agent_helpers import (
    GROUP,
    add_node,
    agent_config,
    events,
    eventually,
    hot_set,
    running_agent,
)
from support.kubeapi import KubeApiDouble, RbacRule, Request, rbac_allows, validate_openapi
from support.manifest_checks import (
    cloudformation_problems,
    iam_policy_problems,
    kustomize_build,
    schema_errors,
    structural_problems,
)

from nodeagent.agent.commands import agent_config as cli_agent_config
from nodeagent.api.crd import crd_manifest
from nodeagent.api.hotimageset import parse_hotimageset
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA, HOTIMAGESET_OPENAPI_SCHEMA
from nodeagent.api.hotmodelset import parse_hotmodelset
from nodeagent.api.hotmodelset_schema import HOTMODELSET_OBJECT_SCHEMA
from nodeagent.cli import build_parser
from nodeagent.kube.taint import TaintSpec

ROOT = Path(__file__).resolve().parent.parent / "daemonset"
EXAMPLES_DIR = ROOT / "examples"
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "DaemonSet", "Service",
              "ServiceMonitor", "Pod"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# The agent's own examples (examples/ also holds node-group and snapshot-builder examples
# of the snapshot feature, which its own tests check).
AGENT_EXAMPLES = ("pull-secret-role.yaml", "servicemonitor.yaml",
                  "inference-pod-model-cache.yaml")


def manifest_files() -> list[Path]:
    """The agent's Kubernetes manifests (kustomization.yaml is kustomize's own format)."""
    top = [p for p in sorted(ROOT.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return top + [ROOT / "examples" / name for name in AGENT_EXAMPLES]


def all_documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p in manifest_files() for d in documents(p)]


def one(kind: str) -> dict:
    [doc] = [d for _, d in all_documents() if d["kind"] == kind]
    return doc


def test_every_manifest_parses_and_has_required_fields():
    docs = all_documents()
    assert len(docs) >= 12
    for path, doc in docs:
        where = f"{path.name}: {doc.get('kind')}"
        assert doc.get("apiVersion") and doc.get("kind"), where
        assert doc.get("metadata", {}).get("name"), where
        if doc["kind"] in NAMESPACED:
            assert doc["metadata"].get("namespace"), where


def test_kustomization_lists_the_install():
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    for name in kust["resources"]:
        assert (ROOT / name).is_file(), name
    kinds = {d["kind"] for name in kust["resources"] for d in documents(ROOT / name)}
    assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "Role", "RoleBinding", "DaemonSet", "Service"} <= kinds


def crd(kind: str) -> dict:
    [doc] = [d for _, d in all_documents() if d["kind"] == "CustomResourceDefinition"
             and d["spec"]["names"]["kind"] == kind]
    return doc


def test_crd_file_holds_every_kind_generated():
    kinds = [d["spec"]["names"]["kind"] for d in documents(ROOT / "crd.yaml")]
    assert kinds == ["HotImageSet", "HotModelSet"]
    for kind in kinds:
        assert crd(kind) == crd_manifest(kind), \
            "regenerate: python -m nodeagent.api.crd > daemonset/crd.yaml"
    assert crd("HotModelSet")["spec"]["versions"][0]["schema"]["openAPIV3Schema"] == \
        HOTMODELSET_OBJECT_SCHEMA


def test_crd_is_the_hotlist_schema():
    doc = crd("HotImageSet")
    assert doc == crd_manifest()
    assert doc["spec"]["scope"] == "Cluster"
    [version] = doc["spec"]["versions"]
    assert (doc["spec"]["group"], version["name"]) == ("nodeagent.io", "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    assert schema == HOTIMAGESET_OBJECT_SCHEMA
    assert schema["properties"]["spec"] == HOTIMAGESET_OPENAPI_SCHEMA
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Priority", "Pin", "Age"} <= columns


def test_example_hotimageset_is_valid_and_malformed_ones_are_rejected():
    example = one("HotImageSet")
    crd_schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert validate_openapi(crd_schema, example) == []
    assert parse_hotimageset(example, "example").name == "gpu-base"
    bad = json.loads(json.dumps(example))
    bad["spec"]["images"][0] = {"image": 42, "required": "yes"}
    bad["spec"]["priority"] = "high"
    problems = {path for path, _ in validate_openapi(crd_schema, bad)}
    assert {"spec.images[0].image", "spec.images[0].required", "spec.priority"} <= problems


def test_example_hotmodelset_is_valid_and_the_pod_reads_its_model_read_only():
    example = one("HotModelSet")
    schema = crd_manifest("HotModelSet")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert validate_openapi(schema, example) == []
    model_set = parse_hotmodelset(example, "example")
    required = [m for m in model_set.models if m.required]
    assert required and {m.source.split("://")[0] for m in model_set.models} == {"s3", "oci"}
    duplicate = json.loads(json.dumps(example))
    duplicate["spec"]["models"].append(dict(duplicate["spec"]["models"][0]))
    assert any("Duplicate value" in message for _, message in validate_openapi(
        schema, duplicate))  # the list-map key: the API server refuses two same names

    pod = one("Pod")["spec"]
    assert model_set.node_selector.matches(pod["nodeSelector"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    [mount] = pod["containers"][0]["volumeMounts"]
    assert mount["readOnly"] is True
    host = volumes[mount["name"]]["hostPath"]
    assert host["type"] == "Directory"
    assert host["path"] == f"/mnt/k8s-disks/0/models/{required[0].name}"
    assert not any(t.get("key") == "nodeagent.io/not-ready" for t in pod.get("tolerations",
                                                                             []))


def test_daemonset_has_what_the_agent_needs():
    ds = one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True  # disks setup: nsenter into the host
    assert container["securityContext"]["privileged"] is True
    assert container["resources"]["requests"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    taint = TaintSpec.parse(env["NODEAGENT_STARTUP_TAINT"]["value"])
    assert any(t.get("key") == taint.key and t.get("operator") == "Exists"
               for t in pod["tolerations"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/run/containerd", "/dev", "/sys", "/run/udev", "/var/lib/nodeagent"):
        assert path in mounts, path
    # The model cache's two homes, at the host's own paths (what pods mount):
    assert mounts["/mnt/k8s-disks"]["mountPropagation"] == "HostToContainer"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/mnt/k8s-disks", "/var/lib/nodeagent"):
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    provider = Path(env["NODEAGENT_CREDENTIAL_PROVIDER_CONFIG"]["value"])
    assert mounts[str(provider.parent)]["readOnly"] is True
    port = container["ports"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    service = one("Service")
    assert service["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_daemonset_arguments_and_env_are_accepted_by_the_cli(monkeypatch):
    container = one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    for item in container["env"]:
        monkeypatch.setenv(item["name"], item.get("value", "node-from-downward-api"))
    args = build_parser().parse_args(container["args"])
    config = cli_agent_config(args)
    assert config.node_name == "node-from-downward-api"
    assert str(config.startup_taint) == "nodeagent.io/not-ready:NoSchedule"
    assert config.disks_setup is not None
    assert config.disks_setup.args == ("--strategy", "raid0")
    assert config.disks_setup.options.strategy == "raid0"
    assert args.metrics_port == container["ports"][0]["containerPort"]


def test_dockerfile_builds_the_agent_image():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT.parent / item).exists(), item
    assert 'ENTRYPOINT ["nodeagent"]' in text and 'CMD ["agent"]' in text


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


# -- against the real schemas -----------------------------------------------------------------

# Kubernetes versions EKS supports (standard and extended support); the schemas are the
# official OpenAPI ones bundled by kubernetes-validate (offline).
EKS_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.35")

# Every file in daemonset/ and daemonset/examples/ and how it is checked; a new file
# fails test_every_file_is_checked until it is added here.
CHECKED = {
    "namespace.yaml": "kubernetes", "crd.yaml": "kubernetes",
    "serviceaccount.yaml": "kubernetes", "rbac.yaml": "kubernetes",
    "daemonset.yaml": "kubernetes", "service.yaml": "kubernetes",
    "kustomization.yaml": "kustomize (rendered, output against the schemas)",
    "hotimageset-example.yaml": "the CRD's schema (test_example_hotimageset_is_valid...)",
    "hotmodelset-example.yaml": "the CRD's schema (test_example_hotmodelset_is_valid...)",
    "examples/inference-pod-model-cache.yaml": "kubernetes",
    "examples/pull-secret-role.yaml": "kubernetes",
    "examples/servicemonitor.yaml": "skipped: a Prometheus Operator CRD (monitoring."
                                    "coreos.com), not part of the Kubernetes schemas",
    "examples/karpenter-ec2nodeclass-snapshot.yaml": "skipped: a Karpenter CRD "
        "(karpenter.k8s.aws), not part of the Kubernetes schemas; its fields: "
        "test_snapshot_examples",
    "examples/managed-nodegroup-launch-template-snapshot.yaml": "cloudformation",
    "examples/iam-policy-snapshot.json": "iam",
    "examples/bottlerocket-snapshot-builder.toml": "toml",
    "examples/al2023-snapshot-builder.sh": "shell", "examples/bottlerocket-builder.sh": "shell",
    "Dockerfile": "skipped: no Dockerfile linter here; COPY sources: "
                  "test_dockerfile_builds_the_agent_image",
    "Dockerfile.dockerignore": "skipped: ignore patterns, nothing to validate",
    "examples/bottlerocket-builder.Dockerfile": "skipped: no Dockerfile linter here",
    "README.md": "skipped: documentation",
}


def test_every_file_is_checked():
    files = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()}
    assert files == set(CHECKED), "add the new file to CHECKED with how it is validated"


def kubernetes_documents() -> list[tuple[str, dict]]:
    rendered = [("kustomize build daemonset/", d) for d in kustomize_build(ROOT)]
    own = [(name, d) for name, how in CHECKED.items() if how == "kubernetes"
           for d in documents(ROOT / name)]
    return rendered + own


@pytest.mark.parametrize("version", EKS_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    docs = kubernetes_documents()
    assert len(docs) >= 20
    problems = [f"{where}: {d['kind']}/{d['metadata']['name']}: {error}"
                for where, d in docs for error in schema_errors(d, version)]
    assert not problems, "\n".join(problems)


def test_schema_validation_catches_mistakes():
    ds = json.loads(json.dumps(one("DaemonSet")))
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 42
    ds["spec"]["template"]["spec"]["hostPid"] = True  # a typo of hostPID
    errors = schema_errors(ds, EKS_VERSIONS[-1])
    assert errors and ("hostPid" in errors[0] or "imagePullPolicy" in errors[0])


def test_kustomize_rendering_sets_the_image():
    rendered = kustomize_build(ROOT)
    [ds] = [d for d in rendered if d["kind"] == "DaemonSet"]
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    [rule] = kust["images"]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"{rule['newName']}:{rule['newTag']}"
    assert len(rendered) == sum(len(documents(ROOT / n)) for n in kust["resources"])


@pytest.mark.skipif(shutil.which("kubectl") is None,
                    reason="kubectl (with kustomize) is not installed here")
def test_python_rendering_matches_kubectl_kustomize(tmp_path):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    theirs = {key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {key(d): d for d in kustomize_build(ROOT)}
    assert ours == theirs


def test_crd_is_a_structural_schema():
    for kind in ("HotImageSet", "HotModelSet"):
        for version in crd(kind)["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            assert structural_problems(schema) == [], (kind, version["name"])
    bad = {"type": "object", "properties": {
        "spec": {"properties": {"n": {"type": "integer"}}, "additionalProperties": True},
        "list": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "string"}},
        "any": {"anyOf": [{"type": "string"}]},
        "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}
    problems = "\n".join(structural_problems(bad))
    for expected in ("properties.spec: type is required",
                     "properties and additionalProperties are mutually exclusive",
                     "a map list needs", "type is not allowed inside a logic junctor",
                     "only name/generateName"):
        assert expected in problems


def test_cloudformation_and_iam_examples():
    template = (EXAMPLES_DIR / "managed-nodegroup-launch-template-snapshot.yaml").read_text()
    assert cloudformation_problems(template) == []
    broken = template.replace("!Ref SnapshotId", "!Ref SnapshotIdd", 1)
    assert cloudformation_problems(broken) == ["reference to undefined 'SnapshotIdd'"]
    policy = json.loads((EXAMPLES_DIR / "iam-policy-snapshot.json").read_text())
    assert iam_policy_problems(policy) == []
    assert iam_policy_problems({"Version": "2012-10-17", "Statement": [
        {"Effect": "allow", "Action": "ec2 CreateSnapshot", "Resource": "*"}]})


def test_toml_and_shell_examples_parse():
    tomllib.loads((EXAMPLES_DIR / "bottlerocket-snapshot-builder.toml").read_text())
    for name, how in CHECKED.items():
        if how == "shell":
            result = subprocess.run(["bash", "-n", str(ROOT / name)], capture_output=True,
                                    text=True, timeout=30)
            assert result.returncode == 0, f"{name}: {result.stderr}"
