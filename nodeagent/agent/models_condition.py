"""The agent's Node condition ``ModelsPrewarmed``: what it says, decided purely.

kube/nodestatus.py patches it (only on change, rate-limited, with a heartbeat), as for
``ImagesPrewarmed`` (agent/condition.py). The rule: local storage first (the cache is on
it), then a cache that cannot be used, then the models' states, then name conflicts
between HotModelSets; invalid HotModelSets add a note.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nodeagent.agent.condition import MAX_MESSAGE
from nodeagent.kube.nodestatus import Condition
from nodeagent.models.keeper import FAILED, PRESENT, SKIPPED, ModelState

CONDITION_TYPE = "ModelsPrewarmed"


def compute_models_condition(states: Iterable[ModelState], invalid_sets: Sequence[str] = (),
                             conflicts: Sequence[str] = (), storage_problem: str | None = None,
                             cache_problem: str | None = None) -> Condition:
    """What the condition says now; pure."""
    states = list(states)
    note = _note("invalid HotModelSet skipped", invalid_sets)
    if storage_problem:
        return Condition("False", "StorageNotReady", _cap(storage_problem + note))
    if cache_problem:
        return Condition("False", "CacheUnavailable", _cap(cache_problem + note))
    total = len(states)
    present = [s for s in states if s.state == PRESENT]
    failed = [s for s in states if s.state == FAILED]
    skipped = [s for s in states if s.state == SKIPPED]
    counts = f"{len(present)}/{total} models present"
    required = [s for s in states if s.required]
    if required and len(required) != total:
        counts += f" (required {sum(s.state == PRESENT for s in required)}/{len(required)})"
    if failed or skipped:
        worst = (failed or skipped)[0]
        reason = "DownloadFailed" if failed else "DiskSpaceLow"
        detail = (f"{len(failed)} failed, {len(skipped)} skipped; {worst.name}: "
                  f"{worst.message or worst.reason}")
        return Condition("False", reason, _cap(f"{counts}, {detail}{note}"))
    if len(present) != total:
        return Condition("False", "Downloading",
                         _cap(f"{counts}, {total - len(present)} downloading{note}"))
    if conflicts:
        return Condition("False", "NameConflict", _cap(
            f"{counts}; " + _note("left out, sets disagree on the source of", conflicts)[2:]
            + " (see Events)" + note))
    if not states:
        return Condition("True", "NoHotModels", _cap("no HotModelSet selects this node" + note))
    return Condition("True", "AllModelsPresent", _cap(counts + note))


def _note(what: str, names: Sequence[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(sorted(names)[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"; {what}: {shown}{more}"


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
