"""What containerd holds, image by image: the rows of `nodeagent images`.

One row per image (the records that share a target digest), with CRI's view (size,
pinned) and whether nodeagent pinned or pulled it and, given a hot list, whether the
list names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nodeagent.console import fmt_bytes
from nodeagent.prewarm import plan

if TYPE_CHECKING:
    from nodeagent.prewarm.desired import DesiredImage


async def list_images(address: str, hot: list[DesiredImage] | None) -> list[dict[str, Any]]:
    from nodeagent.containerd.client import ContainerdClient

    async with ContainerdClient(address) as client:
        records = await client.list_image_records()
        cri = await client.list_images()
    return image_rows(records, cri, hot)


def image_rows(records: Sequence[Any], cri: Sequence[Any],
               hot: Sequence[DesiredImage] | None) -> list[dict[str, Any]]:
    """One row per image (records sharing a target digest), enriched with CRI's view."""
    by_id = {c.id: c for c in cri}
    hot_targets = None
    if hot is not None:
        hot_targets = {plan.find_target(d.reference, records) for d in hot} - {None}
    rows = []
    for target, recs in sorted(plan.group_by_target(records).items(),
                               key=lambda kv: plan.display_name(kv[1])):
        names = sorted(r.name for r in recs)
        image_id = next((n for n in names if n.startswith("sha256:")), None)
        info = by_id.get(image_id) if image_id else None
        labels = [r.labels for r in recs]
        rows.append({
            "image": plan.display_name(recs),
            "references": [n for n in names if not n.startswith("sha256:")],
            "id": image_id,
            "digest": target,
            "size": info.size if info else None,
            "pinned_by_nodeagent": any(lb.get(plan.PINNED_LABEL) == "true" for lb in labels),
            "pin_label": plan.is_pinned(recs),
            "cri_pinned": info.pinned if info else None,
            "pulled_by_nodeagent": any(plan.is_ours(r) for r in recs),
            "hot": None if hot_targets is None else target in hot_targets,
        })
    return rows


def images_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def yes(value: bool | None) -> str:
        return "-" if value is None else ("yes" if value else "no")

    def pinned(row: Mapping[str, Any]) -> str:
        if row["pinned_by_nodeagent"]:
            return "nodeagent"
        return "other" if row["pin_label"] else "no"

    header = ("IMAGE", "DIGEST", "SIZE", "PINNED", "CRI-PINNED", "HOT")
    table = [header] + [
        (r["image"], r["digest"][:19], fmt_bytes(r["size"]) if r["size"] is not None else "-",
         pinned(r), yes(r["cri_pinned"]), yes(r["hot"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in table)
