"""The agent's Node condition ``ImagesPrewarmed``: what it says, decided purely.

kube/nodestatus.py patches it (only when it changes, rate-limited, with a heartbeat);
this module is the rule: storage first, then the images' states, with a note about
HotImageSets that were skipped as invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nodeagent.kube.nodestatus import Condition
from nodeagent.prewarm.state import FAILED, PRESENT, SKIPPED, ImageState

CONDITION_TYPE = "ImagesPrewarmed"
MAX_MESSAGE = 512


def compute_condition(states: Iterable[ImageState], invalid_sets: Sequence[str] = (),
                      storage_problem: str | None = None) -> Condition:
    """What the condition says now; pure."""
    states = list(states)
    note = _invalid_note(invalid_sets)
    if storage_problem:
        return Condition("False", "StorageNotReady", _cap(storage_problem + note))
    if not states:
        return Condition("True", "NoHotImages", _cap("no HotImageSet selects this node" + note))
    total = len(states)
    present = [s for s in states if s.state == PRESENT]
    failed = [s for s in states if s.state == FAILED]
    skipped = [s for s in states if s.state == SKIPPED]
    counts = f"{len(present)}/{total} hot images present"
    required = [s for s in states if s.required]
    if required and len(required) != total:
        done = sum(1 for s in required if s.state == PRESENT)
        counts += f" (required {done}/{len(required)})"
    if len(present) == total:
        return Condition("True", "AllImagesPresent", _cap(counts + note))
    if failed or skipped:
        worst = (failed or skipped)[0]
        reason = "PullFailed" if failed else "DiskSpaceLow"
        detail = f"{len(failed)} failed, {len(skipped)} skipped; {worst.image}: " \
                 f"{worst.message or worst.reason}"
        return Condition("False", reason, _cap(f"{counts}, {detail}{note}"))
    active = total - len(present)
    return Condition("False", "Pulling", _cap(f"{counts}, {active} pulling{note}"))


def _invalid_note(invalid_sets: Sequence[str]) -> str:
    if not invalid_sets:
        return ""
    shown = ", ".join(sorted(invalid_sets)[:5])
    more = f" and {len(invalid_sets) - 5} more" if len(invalid_sets) > 5 else ""
    return f"; invalid HotImageSet skipped: {shown}{more} (see the agent log)"


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
