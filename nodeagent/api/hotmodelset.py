"""HotModelSet: which ML models every matching node keeps in its local model cache.

    apiVersion: nodeagent.io/v1alpha1
    kind: HotModelSet                     # cluster-scoped
    metadata: {name: serving}
    spec:
      nodeSelector: {matchLabels: {workload: inference}}   # absent: all nodes
      models:
        - name: llama-3-8b                # DNS-1123 label: <cache dir>/llama-3-8b/
          source: s3://models/llama-3-8b/ # a prefix (every object below it) or one key
          priority: 10                    # higher first, evicted last (default 0)
          required: true                  # the startup taint waits for it
        - name: bert-base
          source: oci://registry.example.com/models/bert:v1   # ORAS-style artifact

Like HotImageSet (``hotimageset.py``), the same documents come from files
(``load_hotmodelsets``) or from the cluster (``parse_hotmodelset``); every problem of a
file is reported together, naming file, document, set, field path and value, and a file
with any problem yields nothing. Source URLs are understood by ``model_source.py``; which
sets apply to a node, merged, is the model cache's decision (``models/desired.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodeagent.api.group import HOTMODELSET
from nodeagent.api.loading import load_sets, parse_set
from nodeagent.api.model_source import SOURCE_FORMS, source_problem
from nodeagent.api.selector import LabelSelector, check_label_selector
from nodeagent.api.validation import Checker, InvalidObjects, show_value

_SPEC_FIELDS = ("models", "nodeSelector")
_MODEL_FIELDS = ("name", "source", "priority", "required")


@dataclass(frozen=True)
class ModelEntry:
    """One entry of spec.models."""

    name: str
    source: str
    priority: int = 0
    required: bool = False


@dataclass(frozen=True)
class HotModelSet:
    name: str
    models: tuple[ModelEntry, ...]
    node_selector: LabelSelector = field(default_factory=LabelSelector)


class ModelListError(InvalidObjects):
    """One or more invalid HotModelSet documents; ``problems`` lists each one."""

    what = "model list"
    consequence = "nothing was downloaded from it"


def load_hotmodelsets(paths: Iterable[Path]) -> list[HotModelSet]:
    """Load files and directories (their *.yaml, *.yml, *.json, sorted) as one list.

    Set names must be unique across all of them; every problem is reported together.
    """
    return load_sets(paths, HOTMODELSET, HotModelSetChecker,
                     HotModelSetChecker.hotmodelset, ModelListError)


def parse_hotmodelset(obj: Any, source: str) -> HotModelSet:
    """Validate one HotModelSet object (from a file or the API server)."""
    return parse_set(obj, source, HotModelSetChecker,
                     HotModelSetChecker.hotmodelset, ModelListError)


class HotModelSetChecker(Checker):
    """Validates one HotModelSet document, collecting problems with their field paths."""

    def __init__(self, source: str, document: int | None):
        super().__init__(HOTMODELSET, source, document)

    def hotmodelset(self, obj: Any) -> HotModelSet | None:
        doc = self.envelope(obj)
        if doc is None:
            return None
        spec_obj = doc.get("spec")
        if spec_obj is None:
            self.report("spec", "Required value: spec.models lists the models to keep cached")
            return None
        spec = self.mapping(spec_obj, "spec", _SPEC_FIELDS)
        if spec is None:
            return None
        before = len(self.problems)
        models = self.models(spec.get("models"))
        selector = self.selector(spec.get("nodeSelector"))
        if len(self.problems) != before or self.name is None:
            return None
        return HotModelSet(self.name, models, selector)

    def models(self, obj: Any) -> tuple[ModelEntry, ...]:
        if obj is None:
            self.report("spec.models", "Required value: list at least one model")
            return ()
        items = self.sequence(obj, "spec.models")
        if items is None:
            return ()
        if not items:
            self.report("spec.models", "must list at least one model")
        models: list[ModelEntry] = []
        first_seen: dict[str, int] = {}
        for index, item in enumerate(items):
            path = f"spec.models[{index}]"
            model = self.model(item, path)
            if model is None:
                continue
            if model.name in first_seen:
                self.report(f"{path}.name", f"Duplicate value: {show_value(model.name)} is "
                            f"already listed as spec.models[{first_seen[model.name]}]; a "
                            "name is the model's directory on the node")
                continue
            first_seen[model.name] = index
            models.append(model)
        return tuple(models)

    def model(self, obj: Any, path: str) -> ModelEntry | None:
        item = self.mapping(obj, path, _MODEL_FIELDS, what='an object like {name: llama, '
                            'source: "s3://bucket/prefix/"}')
        if item is None:
            return None
        before = len(self.problems)
        name = self.model_name(item.get("name"), f"{path}.name")
        source = self.model_source(item.get("source"), f"{path}.source")
        priority = self.int32(item.get("priority", 0), f"{path}.priority")
        required = self.boolean(item.get("required", False), f"{path}.required")
        if name is None or source is None or len(self.problems) != before:
            return None
        return ModelEntry(name, source, priority, required)

    def model_name(self, value: Any, path: str) -> str | None:
        if value is None:
            self.report(path, "Required value: a DNS-1123 label naming the model's directory")
            return None
        if self.string(value, path) is None or not self.dns_label(value, path):
            return None
        return value

    def model_source(self, value: Any, path: str) -> str | None:
        if value is None:
            self.report(path, f"Required value: {SOURCE_FORMS}")
            return None
        if self.string(value, path) is None:
            return None
        problem = source_problem(value)
        if problem:
            self.report(path, f"Invalid value: {show_value(value)}: {problem}")
            return None
        return value

    def selector(self, obj: Any) -> LabelSelector:
        if obj is None:
            return LabelSelector()
        selector, problems = check_label_selector(obj, "spec.nodeSelector")
        for text in problems:
            path, _, message = text.partition(": ")
            self.report(path, message)
        return selector
