"""Pure planning: desired hot images + containerd's image records -> actions.

No I/O here. The engine lists the records (native Images API, namespace k8s.io), calls
``plan_images`` and applies the result; ``pick_next`` chooses which waiting pull takes a
free slot. One CRI pull creates three records that share one
target (manifest or index) digest: the tag, ``repo@digest`` and the config id
(``sha256:...``). An image is identified by that target digest throughout.

Pinning sets ``io.cri-containerd.pinned=pinned`` (kubelet image GC skips pinned images)
and our marker ``nodeagent.io/pinned=true`` on every record of the image, so that we
only ever unpin what we pinned: a record that was pinned by someone else (containerd
pins its sandbox image itself) carries no marker and is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodeagent.containerd.client import ImageRecord
    from nodeagent.prewarm.desired import DesiredImage
    from nodeagent.registry.reference import ImageReference

CRI_PINNED_LABEL = "io.cri-containerd.pinned"
CRI_PINNED_VALUE = "pinned"
PINNED_LABEL = "nodeagent.io/pinned"  # we set the CRI pin on this record
PULLED_LABEL = "nodeagent.io/pulled"  # nodeagent pulled this image (for --remove-unlisted)
MARKER_VALUE = "true"

PIN_LABELS = {CRI_PINNED_LABEL: CRI_PINNED_VALUE, PINNED_LABEL: MARKER_VALUE}
UNPIN_LABELS = {CRI_PINNED_LABEL: "", PINNED_LABEL: ""}  # "" deletes a label


@dataclass(frozen=True)
class LabelUpdate:
    """Set (or, with value "", delete) labels on one image record."""

    name: str
    labels: dict[str, str]
    image: str  # what the user knows it as, for logs


@dataclass(frozen=True)
class Removal:
    """Remove one image (all its records) through CRI. Only with --remove-unlisted."""

    ref: str  # a record name CRI RemoveImage resolves (the config id when we have it)
    target_digest: str
    names: tuple[str, ...]


@dataclass
class ImagePlan:
    """What one reconcile pass does, decided by ``plan_images``."""

    present: list[tuple[DesiredImage, str]] = field(default_factory=list)  # (image, target)
    pulls: list[DesiredImage] = field(default_factory=list)  # priority order
    pins: list[LabelUpdate] = field(default_factory=list)
    unpins: list[LabelUpdate] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)


def tag_record_name(ref: ImageReference) -> str:
    """The record name containerd's CRI gives a pull of ``ref``.

    A digest wins over a tag (CRI drops the tag of ``repo:tag@digest``); a reference with
    neither means ``:latest``.
    """
    base = f"{ref.registry}/{ref.repository}"
    if ref.digest:
        return f"{base}@{ref.digest}"
    return f"{base}:{ref.tag or 'latest'}"


def group_by_target(records: Iterable[ImageRecord]) -> dict[str, list[ImageRecord]]:
    groups: dict[str, list[ImageRecord]] = {}
    for record in records:
        groups.setdefault(record.target_digest, []).append(record)
    return groups


def find_target(ref: ImageReference, records: Sequence[ImageRecord]) -> str | None:
    """Target digest of ``ref`` if containerd has it: by digest when the reference pins
    one (any record of that digest counts, whatever its name), else by the tag record."""
    if ref.digest:
        for record in records:
            if record.target_digest == ref.digest:
                return record.target_digest
        return None
    name = tag_record_name(ref)
    for record in records:
        if record.name == name:
            return record.target_digest
    return None


def pin_updates(records: Iterable[ImageRecord], image: str) -> list[LabelUpdate]:
    """Label updates that pin every record of one image (none for already pinned ones)."""
    return [
        LabelUpdate(r.name, dict(PIN_LABELS), image)
        for r in records
        if r.labels.get(CRI_PINNED_LABEL) != CRI_PINNED_VALUE
    ]


def is_pinned(records: Iterable[ImageRecord]) -> bool:
    records = list(records)
    return bool(records) and all(
        r.labels.get(CRI_PINNED_LABEL) == CRI_PINNED_VALUE for r in records
    )


def is_ours(record: ImageRecord) -> bool:
    return MARKER_VALUE in (record.labels.get(PINNED_LABEL), record.labels.get(PULLED_LABEL))


def plan_images(
    desired: Sequence[DesiredImage],
    records: Sequence[ImageRecord],
    *,
    unpin_removed: bool = True,
    remove_unlisted: bool = False,
) -> ImagePlan:
    """Decide what to pull, pin, unpin and (only if asked) remove.

    - desired and present: pin it when ``pin`` (else unpin it if we had pinned it);
    - desired and absent: pull, highest priority first (stable for equal priority);
    - pinned by us but no longer desired (or desired with ``pin: false``): unpin;
    - ``remove_unlisted``: remove images carrying our marker that nobody desires.
    """
    plan = ImagePlan()
    groups = group_by_target(records)
    keep_pinned: set[str] = set()
    wanted: set[str] = set()
    for image in sorted(desired, key=lambda d: -d.priority):
        target = find_target(image.reference, records)
        if target is None:
            plan.pulls.append(image)
            continue
        plan.present.append((image, target))
        wanted.add(target)
        if image.pin:
            keep_pinned.add(target)
            plan.pins.extend(pin_updates(groups[target], str(image.reference)))
    plan.pins = _dedup(plan.pins)
    if unpin_removed:
        plan.unpins = unpin_updates(groups, keep_pinned)
    if remove_unlisted:
        plan.removals = removals(groups, wanted)
    return plan


def unpin_updates(groups: dict[str, list[ImageRecord]], keep: set[str]) -> list[LabelUpdate]:
    """Unpin records we pinned whose image is no longer a pinned hot image."""
    updates = []
    for target, recs in groups.items():
        if target in keep:
            continue
        for r in recs:
            if r.labels.get(PINNED_LABEL) == MARKER_VALUE:
                updates.append(LabelUpdate(r.name, dict(UNPIN_LABELS), display_name(recs)))
    return updates


def removals(groups: dict[str, list[ImageRecord]], wanted: set[str]) -> list[Removal]:
    """Images nodeagent pulled or pinned that no hot list wants any more."""
    out = []
    for target, recs in groups.items():
        if target in wanted or not any(is_ours(r) for r in recs):
            continue
        names = tuple(sorted(r.name for r in recs))
        ids = [n for n in names if n.startswith("sha256:")]
        out.append(Removal(ref=(ids or list(names))[0], target_digest=target, names=names))
    return out


def pinned_images(records: Sequence[ImageRecord]) -> list[tuple[str, str]]:
    """(display name, target digest) of every image nodeagent pinned, by name."""
    found = [(display_name(recs), target) for target, recs in group_by_target(records).items()
             if any(r.labels.get(PINNED_LABEL) == MARKER_VALUE for r in recs)]
    return sorted(found)


def present_and_pinned_problems(desired: Sequence[DesiredImage],
                                records: Sequence[ImageRecord]) -> list[str]:
    """What keeps the desired images from being on disk as asked: absent, or not pinned
    although ``pin`` (a snapshot builder checks this before it snapshots)."""
    groups = group_by_target(records)
    problems = []
    for image in desired:
        target = find_target(image.reference, records)
        if target is None:
            problems.append(f"{image.reference} is not in containerd")
        elif image.pin and not is_pinned(groups[target]):
            problems.append(f"{image.reference} is present but not pinned")
    return problems


def display_name(records: Sequence[ImageRecord]) -> str:
    """The most human name among an image's records: a tag, else repo@digest, else id."""
    names = [r.name for r in records]
    tagged = [n for n in names if "@" not in n and not n.startswith("sha256:")]
    digested = [n for n in names if "@" in n]
    return sorted(tagged or digested or names)[0]


def _dedup(updates: list[LabelUpdate]) -> list[LabelUpdate]:
    seen: set[str] = set()
    out = []
    for u in updates:
        if u.name not in seen:
            seen.add(u.name)
            out.append(u)
    return out


@dataclass(frozen=True)
class PullCandidate:
    """A pull waiting for a slot: its priority, hot-list position and layers (if known)."""

    priority: int
    order: int
    layers: Mapping[str, int] | None  # digest -> compressed size


def pick_next(waiting: Sequence[PullCandidate], busy_layers: Mapping[str, int]) -> int:
    """Index of the waiting pull to start next.

    Highest priority first, always. Among equal priorities, prefer the image sharing the
    fewest layer bytes with pulls in flight: containerd downloads and unpacks a shared
    layer once, so a second image needing it would mostly wait (and, once the first is
    done, will need much less work). Ties keep hot-list order.
    """
    top = max(c.priority for c in waiting)

    def cost(i: int) -> tuple[int, int]:
        layers = waiting[i].layers or {}
        shared = sum(size for digest, size in layers.items() if digest in busy_layers)
        return shared, waiting[i].order

    return min((i for i, c in enumerate(waiting) if c.priority == top), key=cost)
