"""This node's models: the HotModelSets that apply to it, merged per model name.

A model's name is its directory on the node, so it must mean one thing per node: sets
that list the same name with the same source are merged (highest priority, required if
any set requires it); the same name with different sources is a conflict, and that
model is left out (never one source picked at random) and reported. ``select_and_merge``
is the rule (the agent calls it with the node's labels); ``select_for_node`` is the CLI's
variant for runs that may not know the labels; ``load_desired_models`` reads files.
The HotModelSet model and parser are in ``nodeagent/api``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodeagent.api.hotmodelset import HotModelSet, ModelEntry, load_hotmodelsets
from nodeagent.api.selector import LabelSelector
from nodeagent.errors import UsageError
from nodeagent.log import fields
from nodeagent.models.spec import ModelSpec

log = logging.getLogger("nodeagent.models")


@dataclass(frozen=True)
class DesiredModel:
    spec: ModelSpec
    sets: tuple[str, ...]  # the sets that list it

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Conflict:
    """One name, several sources among the sets that select this node."""

    name: str
    claims: tuple[tuple[str, str], ...]  # (set, source), in the order seen

    def describe(self) -> str:
        said = "; ".join(f'HotModelSet "{s}" says {src}' for s, src in self.claims)
        return f'model name "{self.name}" has different sources on this node ({said})'


@dataclass(frozen=True)
class DesiredModels:
    models: tuple[DesiredModel, ...] = ()  # highest priority first
    conflicts: tuple[Conflict, ...] = ()

    @property
    def specs(self) -> list[ModelSpec]:
        return [m.spec for m in self.models]


@dataclass(frozen=True)
class ModelListFiles:
    """A model list read from files, and how a CLI run picks its sets."""

    paths: tuple[Path, ...]
    node_labels: Mapping[str, str] | None = None  # None: this node's labels are unknown
    all_sets: bool = False  # ignore nodeSelectors: take every set


def select_and_merge(sets: Iterable[HotModelSet], node_labels: Mapping[str, str]
                     ) -> DesiredModels:
    """This node's models: sets whose selector matches, merged by name (see module doc).
    Sorted by priority (highest first), then by first appearance."""
    merged: dict[str, DesiredModel] = {}
    claims: dict[str, list[tuple[str, str]]] = {}
    for hot_set in sets:
        if not hot_set.node_selector.matches(node_labels):
            continue
        for entry in hot_set.models:
            claims.setdefault(entry.name, []).append((hot_set.name, entry.source))
            merged[entry.name] = _merge(merged.get(entry.name), hot_set.name, entry)
    conflicts = tuple(Conflict(name, tuple(c)) for name, c in claims.items()
                      if len({src for _, src in c}) > 1)
    conflicting = {c.name for c in conflicts}
    order = {name: position for position, name in enumerate(merged)}
    models = sorted((m for m in merged.values() if m.name not in conflicting),
                    key=lambda m: (-m.spec.priority, order[m.name]))
    return DesiredModels(tuple(models), conflicts)


def _merge(current: DesiredModel | None, set_name: str, entry: ModelEntry) -> DesiredModel:
    if current is None:
        return DesiredModel(ModelSpec(entry.name, entry.source, entry.priority,
                                      entry.required), (set_name,))
    spec = current.spec
    sets = current.sets if set_name in current.sets else (*current.sets, set_name)
    return DesiredModel(ModelSpec(spec.name, spec.source, max(spec.priority, entry.priority),
                                  spec.required or entry.required), sets)


def select_for_node(sets: Sequence[HotModelSet], node_labels: Mapping[str, str] | None,
                    all_sets: bool) -> DesiredModels:
    """This node's models. Without node labels, sets with a nodeSelector are left out
    (we cannot tell whether they apply) unless ``all_sets``."""
    if all_sets:
        sets = [dataclasses.replace(s, node_selector=LabelSelector()) for s in sets]
    elif node_labels is None:
        skipped = [s.name for s in sets if not s.node_selector.is_empty()]
        if skipped:
            log.info("sets with a nodeSelector skipped: pass --node-labels or --all-sets",
                     extra=fields(sets=skipped))
        sets = [s for s in sets if s.node_selector.is_empty()]
    return select_and_merge(sets, node_labels or {})


def load_desired_models(source: ModelListFiles) -> DesiredModels:
    """Read the files (ModelListError on any problem) and pick this node's models; a name
    conflict among the selected sets is an error here (a file can be fixed before
    anything is downloaded)."""
    desired = select_for_node(load_hotmodelsets(source.paths), source.node_labels,
                              source.all_sets)
    if desired.conflicts:
        raise UsageError("invalid model list: " + "; ".join(
            c.describe() for c in desired.conflicts) + "\nnothing was downloaded; a name "
            "is the model's directory: give each source its own name")
    return desired
