"""The DaemonSet manifests in daemonset/: they parse, carry what the agent needs, the CRDs
are the kinds' own schemas, the examples are valid, the CLI accepts the DaemonSet's
arguments, and the Dockerfile copies what exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from support.daemonset_manifests import ROOT, all_documents, crd, documents, one
from support.kubeapi import validate_openapi

from nodeagent.agent.commands import agent_config as cli_agent_config
from nodeagent.api.crd import crd_manifest
from nodeagent.api.hotimageset import parse_hotimageset
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA, HOTIMAGESET_OPENAPI_SCHEMA
from nodeagent.api.hotmodelset import parse_hotmodelset
from nodeagent.api.hotmodelset_schema import HOTMODELSET_OBJECT_SCHEMA
from nodeagent.cli import build_parser
from nodeagent.kube.taint import TaintSpec

NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "DaemonSet", "Service",
              "ServiceMonitor", "Pod"}


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
