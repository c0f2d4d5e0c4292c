"""The hot list: HotImageSet documents saying which images every matching node keeps warm.

    apiVersion: nodeagent.io/v1alpha1
    kind: HotImageSet                     # cluster-scoped
    metadata: {name: gpu-base}
    spec:
      images:
        - image: nvcr.io/nvidia/pytorch:24.05-py3     # tag or digest
          platform: linux/amd64                       # optional, os/arch[/variant]
          required: true                              # startup taint waits for it
      nodeSelector: {matchLabels: {nvidia.com/gpu.present: "true"}}   # absent: all nodes
      pin: true                                       # default true
      priority: 10                                    # higher first, default 0
      imagePullSecrets: [{name: ngc, namespace: ml}]

The same documents come from YAML files (``load_hotlist_file``) or from the cluster as
custom resources (``parse_hotimageset``). Validation collects every problem in a file and
raises one HotListError naming file, document, set name, field path and value, so the
user fixes the file in one go; nothing is returned (so nothing is pulled) from a file
with any problem. ``select_and_merge`` turns the sets into this node's desired images.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.errors import NodeagentError
from nodeagent.kube.selector import (
    OPERATORS,
    LabelSelector,
    check_label_selector,
    describe_value,
    show_value,
)
from nodeagent.registry.platform import normalize_platform
from nodeagent.registry.reference import ImageReference, ReferenceError, parse_reference

API_VERSION = "nodeagent.io/v1alpha1"
KIND = "HotImageSet"
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
# ObjectMeta fields a custom resource read back from the API server may carry.
_METADATA_FIELDS = (
    "name", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers",
    "ownerReferences", "managedFields", "generateName", "selfLink", "namespace",
)
_SPEC_FIELDS = ("images", "nodeSelector", "pin", "priority", "imagePullSecrets")
_IMAGE_FIELDS = ("image", "platform", "required")
_SECRET_FIELDS = ("name", "namespace")
_DNS_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_DNS_LABEL_RE)
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL_RE}(\.{_DNS_LABEL_RE})*")


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class HotImage:
    reference: ImageReference
    platform: str | None = None
    required: bool = False


@dataclass(frozen=True)
class SecretRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class HotImageSet:
    name: str
    images: tuple[HotImage, ...]
    node_selector: LabelSelector = field(default_factory=LabelSelector)
    pin: bool = True
    priority: int = 0
    image_pull_secrets: tuple[SecretRef, ...] = ()


@dataclass(frozen=True)
class DesiredImage:
    reference: ImageReference
    platform: str | None
    pin: bool
    priority: int
    required: bool
    pull_secrets: tuple[SecretRef, ...]
    sets: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str | None]:
        """Identity used for de-duplication: normalized reference plus platform."""
        return (str(self.reference), self.platform)


@dataclass(frozen=True)
class Problem:
    source: str
    document: int | None  # 1-based position in a multi-document file
    set_name: str | None
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.location()}: {self.path}: {self.message}" if self.path else (
            f"{self.location()}: {self.message}")

    def location(self) -> str:
        text = self.source
        if self.document is not None:
            text += f" document {self.document}"
        if self.set_name:
            text += f' (HotImageSet "{self.set_name}")'
        return text


class HotListError(NodeagentError):
    """One or more invalid HotImageSet documents; ``problems`` lists each one."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"invalid hot list: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid hot list: {len(self.problems)} problems:\n{lines}"
        super().__init__(message + "\nnothing was pulled from it; fix and retry")


# ----------------------------------------------------------------------------- loading


def load_hotlist_file(path: Path) -> list[HotImageSet]:
    """Parse every document of a YAML (or JSON) file; raise HotListError on any problem."""
    return load_hotlist_paths([Path(path)])


def load_hotlist_paths(paths: Iterable[Path]) -> list[HotImageSet]:
    """Load several files and directories (their *.yaml, *.yml, *.json, sorted) as one list.

    Set names must be unique across all of them; every problem is reported together.
    """
    problems: list[Problem] = []
    sets: list[HotImageSet] = []
    seen: dict[str, str] = {}
    for file in _expand(paths, problems):
        for index, doc in _read_documents(file, problems):
            _add_document(doc, str(file), index, sets, seen, problems)
    if problems:
        raise HotListError(problems)
    return sets


def parse_hotimageset(obj: Any, source: str) -> HotImageSet:
    """Validate one HotImageSet object (from a file or the API server)."""
    checker = _Checker(source, None)
    result = checker.hotimageset(obj)
    if checker.problems or result is None:
        raise HotListError(checker.problems)
    return result


def _add_document(
    doc: Any, source: str, index: int, sets: list[HotImageSet], seen: dict[str, str],
    problems: list[Problem],
) -> None:
    checker = _Checker(source, index)
    result = checker.hotimageset(doc)
    name = checker.set_name
    if name is not None and name in seen:
        checker.report("metadata.name", f'duplicate HotImageSet name "{name}" (already '
                       f"defined in {seen[name]}); set names must be unique")
    elif name is not None:
        seen[name] = f"{source} document {index}"
    problems.extend(checker.problems)
    if result is not None and not checker.problems:
        sets.append(result)


def _expand(paths: Iterable[Path], problems: list[Problem]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            if not found:  # an empty list would mean "no hot images": say so instead
                problems.append(Problem(str(path), None, None, "",
                                        "directory has no *.yaml, *.yml or *.json file"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(Problem(str(path), None, None, "", "file does not exist"))
    return files


def _read_documents(path: Path, problems: list[Problem]) -> list[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), None, None, "", f"cannot read: {_reason(exc)}"))
        return []
    if path.suffix == ".json":  # JSON may use tabs, which YAML rejects
        try:
            return [(1, json.loads(text))]
        except ValueError as exc:
            problems.append(Problem(str(path), None, None, "", f"not valid JSON: {exc}"))
            return []
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        problems.append(Problem(str(path), None, None, "", f"not valid YAML: {_yaml_reason(exc)}"))
        return []
    numbered = [(i, doc) for i, doc in enumerate(docs, start=1) if doc is not None]
    if not numbered:
        problems.append(Problem(str(path), None, None, "", "contains no HotImageSet document"))
    return numbered


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (the later value would win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# ----------------------------------------------------------------------------- validation


class _Checker:
    """Validates one document, collecting problems with their field paths."""

    def __init__(self, source: str, document: int | None):
        self.source = source
        self.document = document
        self.set_name: str | None = None
        self.problems: list[Problem] = []

    def report(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.source, self.document, self.set_name, path, message))

    def hotimageset(self, obj: Any) -> HotImageSet | None:
        if not isinstance(obj, Mapping):
            self.report("", f"must be a HotImageSet object, got {describe_value(obj)}")
            return None
        self.metadata(obj.get("metadata"))  # first, so later problems carry the set name
        doc = self.mapping(obj, "", _TOP_FIELDS)
        self.constant(doc, "apiVersion", API_VERSION)
        self.constant(doc, "kind", KIND)
        spec = self.spec(doc.get("spec"))
        if spec is None or self.set_name is None:
            return None
        images, selector, pin, priority, secrets = spec
        return HotImageSet(self.set_name, images, selector, pin, priority, secrets)

    def constant(self, doc: Mapping, key: str, expected: str) -> None:
        value = doc.get(key)
        if value is None:
            self.report(key, f'Required value: must be "{expected}"')
        elif value != expected:
            self.report(key, f'Unsupported value: {show_value(value)}: must be "{expected}"')

    def metadata(self, obj: Any) -> None:
        if obj is None:
            self.report("metadata", "Required value: metadata.name is required")
            return
        name = obj.get("name") if isinstance(obj, Mapping) else None
        if isinstance(name, str) and _dns_name_ok(name, "metadata.name", self.report):
            self.set_name = name  # known first, so every later problem carries it
        meta = self.mapping(obj, "metadata", _METADATA_FIELDS)
        if meta is None:
            return
        if name is None:
            self.report("metadata.name", "Required value")
        else:
            self.string(name, "metadata.name")
        if meta.get("namespace") not in (None, ""):
            self.report("metadata.namespace", f"HotImageSet is cluster-scoped: remove the "
                        f"namespace {show_value(meta['namespace'])}")

    def spec(self, obj: Any) -> tuple | None:
        if obj is None:
            self.report("spec", "Required value: spec.images lists the images to keep warm")
            return None
        spec = self.mapping(obj, "spec", _SPEC_FIELDS)
        if spec is None:
            return None
        before = len(self.problems)
        images = self.images(spec.get("images"))
        selector = self.selector(spec.get("nodeSelector"))
        pin = self.boolean(spec.get("pin", True), "spec.pin")
        priority = self.priority(spec.get("priority", 0))
        secrets = self.secrets(spec.get("imagePullSecrets"))
        if len(self.problems) != before:
            return None
        return images, selector, pin, priority, secrets

    def images(self, obj: Any) -> tuple[HotImage, ...]:
        if obj is None:
            self.report("spec.images", "Required value: list at least one image")
            return ()
        items = self.sequence(obj, "spec.images")
        if items is None:
            return ()
        if not items:
            self.report("spec.images", "must list at least one image")
        images: list[HotImage] = []
        first_seen: dict[tuple[str, str | None], int] = {}
        for index, item in enumerate(items):
            path = f"spec.images[{index}]"
            image = self.image(item, path)
            if image is None:
                continue
            key = (str(image.reference), image.platform)
            if key in first_seen:
                self.report(f"{path}.image", f"Duplicate value: {show_value(item.get('image'))} is "
                            f"already listed as spec.images[{first_seen[key]}]")
                continue
            first_seen[key] = index
            images.append(image)
        return tuple(images)

    def image(self, obj: Any, path: str) -> HotImage | None:
        item = self.mapping(obj, path, _IMAGE_FIELDS, what='an object like {image: "nginx:1.25"}')
        if item is None:
            return None
        before = len(self.problems)
        reference = self.reference(item.get("image"), f"{path}.image")
        platform = self.platform(item.get("platform"), f"{path}.platform")
        required = self.boolean(item.get("required", False), f"{path}.required")
        if reference is None or len(self.problems) != before:
            return None
        return HotImage(reference, platform, required)

    def reference(self, value: Any, path: str) -> ImageReference | None:
        if value is None:
            self.report(path, 'Required value: an image reference such as "nginx:1.25" or '
                        '"repo@sha256:..."')
            return None
        if self.string(value, path) is None:
            return None
        try:
            return parse_reference(value)
        except ReferenceError as exc:
            self.report(path, f"Invalid value: {show_value(value)}: {exc.problem}")
            return None

    def platform(self, value: Any, path: str) -> str | None:
        if value is None or self.string(value, path) is None:
            return None
        platform, problem = normalize_platform(value)
        if problem:
            self.report(path, f"Invalid value: {show_value(value)}: {problem}")
        return platform

    def selector(self, obj: Any) -> LabelSelector:
        if obj is None:
            return LabelSelector()
        selector, problems = check_label_selector(obj, "spec.nodeSelector")
        for text in problems:
            path, _, message = text.partition(": ")
            self.report(path, message)
        return selector

    def priority(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.report("spec.priority", f"must be an integer, got {describe_value(value)}")
            return 0
        if not INT32_MIN <= value <= INT32_MAX:
            self.report("spec.priority", f"Invalid value: {value}: must fit in a 32-bit "
                        "signed integer")
        return value

    def secrets(self, obj: Any) -> tuple[SecretRef, ...]:
        if obj is None:
            return ()
        items = self.sequence(obj, "spec.imagePullSecrets")
        refs: list[SecretRef] = []
        for index, item in enumerate(items or ()):
            ref = self.secret(item, f"spec.imagePullSecrets[{index}]")
            if ref is not None and ref not in refs:
                refs.append(ref)
        return tuple(refs)

    def secret(self, obj: Any, path: str) -> SecretRef | None:
        item = self.mapping(obj, path, _SECRET_FIELDS,
                            what="an object like {name: regcred, namespace: default}")
        if item is None:
            return None
        name, namespace = item.get("name"), item.get("namespace")
        ok = True
        for key, value, check in (("name", name, _dns_name_ok), ("namespace", namespace,
                                                                 _dns_label_ok)):
            if value is None:
                why = (" (HotImageSet is cluster-scoped, so the secret's namespace must be "
                       "given)") if key == "namespace" else ""
                self.report(f"{path}.{key}", f"Required value{why}")
                ok = False
            elif self.string(value, f"{path}.{key}") is None or not check(
                    value, f"{path}.{key}", self.report):
                ok = False
        return SecretRef(namespace, name) if ok else None

    # -- generic type checks

    def mapping(self, obj: Any, path: str, allowed: Sequence[str],
                what: str = "an object") -> Mapping | None:
        if not isinstance(obj, Mapping):
            self.report(path, f"must be {what}, got {describe_value(obj)}")
            return None
        for key in obj:
            if key not in allowed:
                self.report(_join(path, str(key)), _unknown_field(key, allowed))
        return obj

    def sequence(self, obj: Any, path: str) -> list | None:
        if not isinstance(obj, list):
            self.report(path, f"must be a list, got {describe_value(obj)}")
            return None
        return obj

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str):
            self.report(path, f"must be a string, got {describe_value(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.report(path, f"must be a boolean (true or false), got {describe_value(value)}")
            return False
        return value


# ----------------------------------------------------------------------------- merge


def select_and_merge(sets: Iterable[HotImageSet], node_labels: Mapping[str, str]
                     ) -> list[DesiredImage]:
    """This node's images: sets whose selector matches, merged and de-duplicated.

    Per image (normalized reference + platform): highest priority of its sets, pinned
    if any set pins it, required if any set requires it, the union of pull secrets, and
    the names of the sets that listed it. Sorted by priority (highest first), then by
    first appearance.
    """
    merged: dict[tuple[str, str | None], DesiredImage] = {}
    for hot_set in sets:
        if not hot_set.node_selector.matches(node_labels):
            continue
        for image in hot_set.images:
            key = (str(image.reference), image.platform)
            merged[key] = _merge(merged.get(key), hot_set, image)
    order = {key: position for position, key in enumerate(merged)}
    return sorted(merged.values(), key=lambda d: (-d.priority, order[d.key]))


def _merge(current: DesiredImage | None, hot_set: HotImageSet, image: HotImage
           ) -> DesiredImage:
    if current is None:
        return DesiredImage(image.reference, image.platform, hot_set.pin, hot_set.priority,
                            image.required, hot_set.image_pull_secrets, (hot_set.name,))
    secrets = current.pull_secrets + tuple(
        s for s in hot_set.image_pull_secrets if s not in current.pull_secrets)
    sets = current.sets if hot_set.name in current.sets else (*current.sets, hot_set.name)
    return DesiredImage(current.reference, current.platform, current.pin or hot_set.pin,
                        max(current.priority, hot_set.priority),
                        current.required or image.required, secrets, sets)


# ----------------------------------------------------------------------------- helpers


def _dns_name_ok(value: str, path: str, report) -> bool:
    """DNS-1123 subdomain, as Kubernetes requires for object names."""
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        report(path, f"Invalid value: {show_value(value)}: must be a lowercase RFC 1123 subdomain "
               "(a-z, 0-9, '-', '.'; start and end alphanumeric; at most 253 characters)")
        return False
    return True


def _dns_label_ok(value: str, path: str, report) -> bool:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        report(path, f"Invalid value: {show_value(value)}: must be a lowercase RFC 1123 label "
               "(a-z, 0-9, '-'; start and end alphanumeric; at most 63 characters)")
        return False
    return True


def _unknown_field(key: Any, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f"unknown field {show_value(key)} (allowed: {', '.join(allowed)}){hint}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ----------------------------------------------------------------------------- CRD schema
# Structural OpenAPI v3 schema of HotImageSet.spec for the CRD (apiextensions.k8s.io/v1).
# Unknown fields are not listed with additionalProperties: false (a CRD may not use it);
# a structural schema without x-kubernetes-preserve-unknown-fields makes the API server
# prune them, and kubectl's strict field validation rejects them. The agent re-validates
# every object with parse_hotimageset, which also checks what OpenAPI cannot express
# (reference grammar, known platforms, duplicate images).

_DNS_SUBDOMAIN_PATTERN = rf"^{_DNS_LABEL_RE}(\.{_DNS_LABEL_RE})*$"
_LABEL_SELECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Nodes whose labels match get this set; absent means all nodes.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": list(OPERATORS)},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
HOTIMAGESET_OPENAPI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Images that matching nodes keep pulled (and pinned) in containerd.",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {
                        "type": "string",
                        "description": "Image reference, by tag or digest.",
                        "minLength": 1,
                        "maxLength": 512,
                        "pattern": r"^[A-Za-z0-9\[][A-Za-z0-9._:/@\[\]-]*$",
                    },
                    "platform": {
                        "type": "string",
                        "description": "os/arch[/variant], e.g. linux/arm64.",
                        "pattern": r"^[A-Za-z0-9_]+/[A-Za-z0-9_-]+(/[A-Za-z0-9]+)?$",
                    },
                    "required": {
                        "type": "boolean",
                        "default": False,
                        "description": "The node's startup taint waits for this image.",
                    },
                },
            },
        },
        "nodeSelector": _LABEL_SELECTOR_SCHEMA,
        "pin": {"type": "boolean", "default": True,
                "description": "Pin the images so kubelet image GC keeps them."},
        "priority": {"type": "integer", "format": "int32", "default": 0,
                     "minimum": INT32_MIN, "maximum": INT32_MAX,
                     "description": "Higher priority sets are pulled first."},
        "imagePullSecrets": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253,
                             "pattern": _DNS_SUBDOMAIN_PATTERN},
                    "namespace": {"type": "string", "minLength": 1, "maxLength": 63,
                                  "pattern": f"^{_DNS_LABEL_RE}$"},
                },
            },
        },
    },
}
# The whole object (openAPIV3Schema) without status, which the CRD's owner adds.
HOTIMAGESET_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": HOTIMAGESET_OPENAPI_SCHEMA,
    },
}
