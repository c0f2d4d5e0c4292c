"""The manifests in daemonset/ as the manifest tests (tests/test_manifests_*.py) read
them: the agent's files, their YAML documents, and a document by kind."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2] / "daemonset"


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


def crd(kind: str) -> dict:
    [doc] = [d for _, d in all_documents() if d["kind"] == "CustomResourceDefinition"
             and d["spec"]["names"]["kind"] == kind]
    return doc
