"""Checks for the files in daemonset/: kustomize rendering, Kubernetes OpenAPI schemas,
the CRD structural-schema rules, and the non-Kubernetes files (CloudFormation, IAM).

kustomize itself is not packaged on the registries this project installs from (kubectl,
which embeds it, is not either), so ``kustomize_build`` renders the kustomization in
Python for the fields daemonset/kustomization.yaml uses (``resources`` in order and the
``images`` transformer); a test compares it with ``kubectl kustomize`` where kubectl is
installed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "images"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomize_build(directory: Path) -> list[dict]:
    """``kustomize build DIR`` for resources + images (other fields: an error, so that a
    kustomization using more cannot pass unchecked)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"kustomization.yaml uses {sorted(unknown)}: extend kustomize_build")
    docs = [d for name in kustomization["resources"] for d in documents(directory / name)]
    for rule in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                container["image"] = _retag(container["image"], rule)
    return docs


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def _retag(image: str, rule: dict) -> str:
    name, digest = image.split("@", 1) if "@" in image else (image, None)
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag", tag)
    suffix = f":{tag}" if tag else ""
    return f"{name}{suffix}@{digest}" if digest and "newTag" not in rule else f"{name}{suffix}"


def schema_errors(doc: dict, version: str) -> list[str]:
    """Problems of ``doc`` against the official OpenAPI schema of Kubernetes ``version``
    (strict: unknown fields are errors, as ``kubectl apply --validate=strict``)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        return [f"{where}: {exc.message}"]
    return []


# -- CRD structural schemas (apiextensions.k8s.io/v1) --------------------------------------

_NOT_ALLOWED = ("$ref", "definitions", "dependencies", "patternProperties", "additionalItems",
                "id", "$schema")
_LIST_TYPES = ("atomic", "set", "map")


def structural_problems(schema: dict, path: str = "") -> list[str]:
    """The structural-schema rules the API server enforces for apiextensions/v1 CRDs:
    every node has a type (unless x-kubernetes-int-or-string or
    x-kubernetes-preserve-unknown-fields says otherwise), ``properties`` and
    ``additionalProperties`` are exclusive, no JSON-Schema keywords outside the allowed
    subset, x-kubernetes-* extensions used as defined, logic junctors only restate
    structure, and ``metadata`` at the root restricts name only."""
    out: list[str] = []
    _structural(schema, path or "openAPIV3Schema", out, root=not path)
    return out


def _structural(node: dict, path: str, out: list[str], *, root: bool = False) -> None:
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "type" not in node and not (int_or_string or preserve):
        out.append(f"{path}: type is required")
    if int_or_string and "type" in node:
        out.append(f"{path}: x-kubernetes-int-or-string must not set a type")
    for key in ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                "x-kubernetes-embedded-resource"):
        if key in node and node[key] is not True:
            out.append(f"{path}: {key} may only be true")
    if node.get("x-kubernetes-embedded-resource") and node.get("type") != "object":
        out.append(f"{path}: x-kubernetes-embedded-resource needs type object")
    for key in _NOT_ALLOWED:
        if key in node:
            out.append(f"{path}: {key} is not allowed")
    if node.get("uniqueItems") is True:
        out.append(f"{path}: uniqueItems cannot be true")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("nullable") and "type" not in node:
        out.append(f"{path}: nullable needs a type")
    _list_extensions(node, path, out)
    for junctor in ("allOf", "anyOf", "oneOf", "not"):
        for i, sub in enumerate(node.get(junctor, []) if junctor != "not"
                                else [node["not"]] if "not" in node else []):
            _value_validation_only(sub, f"{path}.{junctor}[{i}]", out)
    for name, sub in node.get("properties", {}).items():
        _structural(sub, f"{path}.properties.{name}", out)
        if root and name == "metadata":
            extra = set(sub.get("properties", {})) - {"name", "generateName"}
            if extra or set(sub) - {"type", "properties"}:
                out.append(f"{path}.properties.metadata: only name/generateName may be "
                           "restricted")
    if isinstance(node.get("additionalProperties"), dict):
        _structural(node["additionalProperties"], f"{path}.additionalProperties", out)
    if isinstance(node.get("items"), dict):
        _structural(node["items"], f"{path}.items", out)
    elif "items" in node:
        out.append(f"{path}: items must be one schema")
    if node.get("type") == "array" and "items" not in node:
        out.append(f"{path}: an array needs items")


def _list_extensions(node: dict, path: str, out: list[str]) -> None:
    list_type = node.get("x-kubernetes-list-type")
    if list_type is not None and list_type not in _LIST_TYPES:
        out.append(f"{path}: x-kubernetes-list-type must be one of {_LIST_TYPES}")
    if list_type is not None and node.get("type") != "array":
        out.append(f"{path}: x-kubernetes-list-type on a non-array")
    keys = node.get("x-kubernetes-list-map-keys")
    if list_type == "map":
        items = node.get("items", {})
        if not keys or items.get("type") != "object":
            out.append(f"{path}: a map list needs x-kubernetes-list-map-keys and object items")
        for key in keys or []:
            if key not in items.get("properties", {}):
                out.append(f"{path}: list-map key {key} is not a property of the items")
            elif key not in items.get("required", []) and "default" not in \
                    items["properties"][key]:
                out.append(f"{path}: list-map key {key} must be required or defaulted")
    elif keys is not None:
        out.append(f"{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type map")
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None and (map_type not in ("granular", "atomic")
                                 or node.get("type") != "object"):
        out.append(f"{path}: x-kubernetes-map-type must be granular/atomic on an object")


_STRUCTURE_KEYS = ("type", "additionalProperties", "description", "default", "nullable",
                   "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
                   "x-kubernetes-embedded-resource", "x-kubernetes-list-type",
                   "x-kubernetes-map-type", "title")


def _value_validation_only(node: dict, path: str, out: list[str]) -> None:
    for key in _STRUCTURE_KEYS:
        if key in node:
            out.append(f"{path}: {key} is not allowed inside a logic junctor")
    for name, sub in node.get("properties", {}).items():
        _value_validation_only(sub, f"{path}.properties.{name}", out)
    if isinstance(node.get("items"), dict):
        _value_validation_only(node["items"], f"{path}.items", out)


# -- CloudFormation and IAM --------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsic functions (!Ref, !Sub, ...)."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)

_CFN_SECTIONS = {"AWSTemplateFormatVersion", "Description", "Metadata", "Parameters", "Rules",
                 "Mappings", "Conditions", "Transform", "Resources", "Outputs"}
_PSEUDO = {"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition",
           "AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"}


def cloudformation_problems(text: str) -> list[str]:
    """Template anatomy: known sections, typed resources, parameters with a Type, every
    Ref / GetAtt naming a parameter, resource or pseudo parameter."""
    template = yaml.load(text, Loader=_CfnLoader)  # a SafeLoader with CloudFormation's tags
    out = [f"unknown section {key}" for key in set(template) - _CFN_SECTIONS]
    if template.get("AWSTemplateFormatVersion") not in (None, "2010-09-09"):
        out.append("AWSTemplateFormatVersion must be 2010-09-09")
    params = template.get("Parameters", {})
    resources = template.get("Resources", {})
    if not resources:
        out.append("Resources is required")
    out += [f"Parameters.{name}: Type is required" for name, p in params.items()
            if "Type" not in p]
    for name, resource in resources.items():
        if not re.fullmatch(r"(AWS|Custom|Alexa)::\w+::\w+(::\w+)?", str(resource.get("Type"))):
            out.append(f"Resources.{name}: Type {resource.get('Type')!r} is not a resource type")
    names = set(params) | set(resources) | _PSEUDO
    for ref in _refs(template):
        if ref not in names:
            out.append(f"reference to undefined {ref!r}")
    return out


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.append(value)
            elif key == "Fn::GetAtt" and isinstance(value, list) and value:
                found.append(str(value[0]))
            else:
                found += _refs(value)
        return found
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def iam_policy_problems(policy: dict) -> list[str]:
    """IAM policy grammar: Version, Statement(s) with Effect, Action/NotAction and
    Resource/NotResource, actions written service:Action."""
    out = []
    if policy.get("Version") != "2012-10-17":
        out.append("Version must be 2012-10-17")
    statements = policy.get("Statement")
    statements = [statements] if isinstance(statements, dict) else statements or []
    if not statements:
        out.append("Statement is required")
    for i, st in enumerate(statements):
        where = f"Statement[{i}]"
        if st.get("Effect") not in ("Allow", "Deny"):
            out.append(f"{where}: Effect must be Allow or Deny")
        actions = st.get("Action", st.get("NotAction"))
        if actions is None or ("Action" in st) == ("NotAction" in st):
            out.append(f"{where}: exactly one of Action/NotAction")
        for action in [actions] if isinstance(actions, str) else actions or []:
            if not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9*]+|\*", action):
                out.append(f"{where}: action {action!r} is not service:Action")
        if ("Resource" in st) == ("NotResource" in st):
            out.append(f"{where}: exactly one of Resource/NotResource")
        unknown = set(st) - {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                             "Condition", "Principal", "NotPrincipal"}
        if unknown:
            out.append(f"{where}: unknown keys {sorted(unknown)}")
    return out
