"""HotImageSet: which images every matching node keeps warm (model and parser).

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

The same documents come from YAML files (``load_hotimagesets``) or from the cluster as
custom resources (``parse_hotimageset``). Validation collects every problem in a file and
raises one HotListError naming file, document, set name, field path and value, so the
user fixes the file in one go; nothing is returned (so nothing is pulled) from a file
with any problem. The CRD's OpenAPI schema is in ``hotimageset_schema``; which sets
apply to a node, merged, is prewarm's decision (``prewarm/desired.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.api.group import HOTIMAGESET
from nodeagent.api.loading import load_sets, parse_set
from nodeagent.api.selector import LabelSelector, check_label_selector
from nodeagent.api.validation import Checker, InvalidObjects, show_value
from nodeagent.registry.platform import normalize_platform
from nodeagent.registry.reference import ImageReference, ReferenceError, parse_reference

_SPEC_FIELDS = ("images", "nodeSelector", "pin", "priority", "imagePullSecrets")
_IMAGE_FIELDS = ("image", "platform", "required")
_SECRET_FIELDS = ("name", "namespace")


@dataclass(frozen=True)
class ImageEntry:
    """One entry of spec.images."""

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
    images: tuple[ImageEntry, ...]
    node_selector: LabelSelector = field(default_factory=LabelSelector)
    pin: bool = True
    priority: int = 0
    image_pull_secrets: tuple[SecretRef, ...] = ()


class HotListError(InvalidObjects):
    """One or more invalid HotImageSet documents; ``problems`` lists each one."""

    what = "hot list"
    consequence = "nothing was pulled from it"


# ----------------------------------------------------------------------------- loading


def load_hotimageset_file(path: Path) -> list[HotImageSet]:
    """Parse every document of a YAML (or JSON) file; raise HotListError on any problem."""
    return load_hotimagesets([Path(path)])


def load_hotimagesets(paths: Iterable[Path]) -> list[HotImageSet]:
    """Load several files and directories (their *.yaml, *.yml, *.json, sorted) as one list.

    Set names must be unique across all of them; every problem is reported together.
    """
    return load_sets(paths, HOTIMAGESET, HotImageSetChecker,
                     HotImageSetChecker.hotimageset, HotListError)


def parse_hotimageset(obj: Any, source: str) -> HotImageSet:
    """Validate one HotImageSet object (from a file or the API server)."""
    return parse_set(obj, source, HotImageSetChecker,
                     HotImageSetChecker.hotimageset, HotListError)


# ----------------------------------------------------------------------------- validation


class HotImageSetChecker(Checker):
    """Validates one HotImageSet document, collecting problems with their field paths."""

    def __init__(self, source: str, document: int | None):
        super().__init__(HOTIMAGESET, source, document)

    def hotimageset(self, obj: Any) -> HotImageSet | None:
        doc = self.envelope(obj)
        if doc is None:
            return None
        spec = self.spec(doc.get("spec"))
        if spec is None or self.name is None:
            return None
        images, selector, pin, priority, secrets = spec
        return HotImageSet(self.name, images, selector, pin, priority, secrets)

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
        priority = self.int32(spec.get("priority", 0), "spec.priority")
        secrets = self.secrets(spec.get("imagePullSecrets"))
        if len(self.problems) != before:
            return None
        return images, selector, pin, priority, secrets

    def images(self, obj: Any) -> tuple[ImageEntry, ...]:
        if obj is None:
            self.report("spec.images", "Required value: list at least one image")
            return ()
        items = self.sequence(obj, "spec.images")
        if items is None:
            return ()
        if not items:
            self.report("spec.images", "must list at least one image")
        images: list[ImageEntry] = []
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

    def image(self, obj: Any, path: str) -> ImageEntry | None:
        item = self.mapping(obj, path, _IMAGE_FIELDS, what='an object like {image: "nginx:1.25"}')
        if item is None:
            return None
        before = len(self.problems)
        reference = self.reference(item.get("image"), f"{path}.image")
        platform = self.platform(item.get("platform"), f"{path}.platform")
        required = self.boolean(item.get("required", False), f"{path}.required")
        if reference is None or len(self.problems) != before:
            return None
        return ImageEntry(reference, platform, required)

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
        for key, value, check in (("name", name, self.dns_subdomain),
                                  ("namespace", namespace, self.dns_label)):
            if value is None:
                why = (" (HotImageSet is cluster-scoped, so the secret's namespace must be "
                       "given)") if key == "namespace" else ""
                self.report(f"{path}.{key}", f"Required value{why}")
                ok = False
            elif self.string(value, f"{path}.{key}") is None or not check(
                    value, f"{path}.{key}"):
                ok = False
        return SecretRef(namespace, name) if ok else None

