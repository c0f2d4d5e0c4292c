"""Every file in daemonset/ is checked: the Kubernetes manifests (and kustomize's
rendering of them) against the official schemas of each EKS Kubernetes version, the CRDs
for being structural, the CloudFormation, IAM, TOML and shell examples by their own
rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib

import pytest
import yaml
from support.daemonset_manifests import ROOT, crd, documents, one
from support.manifest_checks import (
    cloudformation_problems,
    iam_policy_problems,
    kustomize_build,
    schema_errors,
    structural_problems,
)

EXAMPLES_DIR = ROOT / "examples"

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
