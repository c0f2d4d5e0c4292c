"""This node's desired images: the HotImageSets that apply to it, merged per image.

``select_and_merge`` is the rule (used by the agent with the node's labels);
``select_for_node`` is the CLI's variant for runs that may not know the node's labels;
``load_desired`` reads a hot list from files (``HotListFiles``: `prewarm`, `snapshot
build`, `hydrate`). The HotImageSet model and parser are in ``nodeagent/api``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodeagent.api.hotimageset import HotImageSet, ImageEntry, SecretRef, load_hotimagesets
from nodeagent.api.selector import LabelSelector
from nodeagent.log import fields
from nodeagent.registry.reference import ImageReference

log = logging.getLogger(__name__)


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

    @property
    def name(self) -> str:
        """How the engine and its reports name it: the reference, plus the platform."""
        return str(self.reference) if self.platform is None else (
            f"{self.reference} ({self.platform})")


@dataclass(frozen=True)
class HotListFiles:
    """A hot list read from files, and how a CLI run picks its sets."""

    paths: tuple[Path, ...]
    node_labels: Mapping[str, str] | None = None  # None: this node's labels are unknown
    all_sets: bool = False  # ignore nodeSelectors: take every set


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


def _merge(current: DesiredImage | None, hot_set: HotImageSet, image: ImageEntry
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


def select_for_node(
    sets: Sequence[HotImageSet], node_labels: Mapping[str, str] | None, all_sets: bool
) -> list[DesiredImage]:
    """This node's desired images. Without node labels, sets with a nodeSelector are left
    out (we cannot tell whether they apply) unless ``all_sets``."""
    if all_sets:
        sets = [dataclasses.replace(s, node_selector=LabelSelector()) for s in sets]
    elif node_labels is None:
        skipped = [s.name for s in sets if not s.node_selector.is_empty()]
        if skipped:
            log.info("sets with a nodeSelector skipped: pass --node-labels or --all-sets",
                     extra=fields(sets=skipped))
        sets = [s for s in sets if s.node_selector.is_empty()]
    return select_and_merge(sets, node_labels or {})


def load_desired(source: HotListFiles) -> list[DesiredImage]:
    """Read the files (HotListError on any problem) and pick this node's images."""
    sets = load_hotimagesets(source.paths)
    desired = select_for_node(sets, source.node_labels, source.all_sets)
    secrets = sorted({str(s) for d in desired for s in d.pull_secrets})
    if secrets:
        log.info("imagePullSecrets are read by the in-cluster agent; here the node's "
                 "credentials (--docker-config, credential provider) are used",
                 extra=fields(secrets=secrets))
    return desired
