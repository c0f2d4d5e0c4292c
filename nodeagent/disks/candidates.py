"""Which disks a disks plan may use: every disk is judged, with the reason.

Never a candidate: non-NVMe disks, EBS volumes, disks whose model does not match
--instance-store-model, disks not chosen with --disk, and disks in use (root, mounted,
swap, held by a foreign md/dm device, read-only). Among candidates, one whose content is
not ours (partitions, a foreign filesystem or array) is refused unless --force names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.disks.decisions import DiskDecision, Plan
from nodeagent.disks.model import Facts, Signature
from nodeagent.disks.options import LABEL_PREFIX, Options
from nodeagent.hostfacts.nvme import EBS_MODEL
from nodeagent.hostfacts.sysfs import BlockDevice


@dataclass
class DiskCandidate:
    disk: BlockDevice
    sig: Signature
    forced: bool


def matches(disk: BlockDevice, names: tuple[str, ...]) -> bool:
    keys = {disk.name, f"/dev/{disk.name}", disk.serial}
    return any(n in keys for n in names)


def classify_disks(facts: Facts, opts: Options, plan: Plan) -> list[DiskCandidate]:
    """Decide for every disk; return the eligible ones (blank, ours, or forced)."""
    for flag, names in (("--force", opts.force), ("--disk", opts.only)):
        for name in names:
            if not any(matches(d, (name,)) for d in facts.disks):
                plan.refusals.append(f"{flag} {name}: no such disk (give a kernel name like "
                                     "nvme1n1, a /dev path or a serial)")
    candidates = []
    for disk in sorted(facts.disks, key=lambda d: d.name):
        if disk.hidden:
            continue
        reason = _exclusion(facts, opts, disk)
        forced = matches(disk, opts.force)
        if reason:
            plan.decisions.append(DiskDecision(disk.name, False, reason))
            if forced:
                plan.refusals.append(f"--force {disk.name}: cannot be forced: {reason}")
            continue
        sig = facts.signatures.get(disk.name)
        if sig is None:  # not probed: discovery judged it no candidate
            plan.decisions.append(DiskDecision(disk.name, False, "not probed"))
            continue
        candidates.append(DiskCandidate(disk, sig, forced))
    return candidates


def _exclusion(facts: Facts, opts: Options, disk: BlockDevice) -> str:
    """Why a disk is never a candidate ("" when it is one)."""
    if not disk.is_nvme:
        return "not an NVMe disk"
    if disk.model == EBS_MODEL:
        return f"EBS volume (model '{EBS_MODEL}'): never used"
    if not opts.model_re.match(disk.model):
        return (f"model '{disk.model}' does not match --instance-store-model "
                f"'{opts.instance_store_model}'")
    if opts.only and not matches(disk, opts.only):
        return "not selected by --disk"
    return _in_use(facts, opts, disk)


def _in_use(facts: Facts, opts: Options, disk: BlockDevice) -> str:
    own = {disk.devnum, *disk.partition_devnums}
    via = {a.devnum: a.name for a in facts.arrays if disk.name in a.members}
    if facts.root_devnum in own:
        return "holds the root filesystem"
    if facts.root_devnum in via:
        return f"holds the root filesystem (through {via[facts.root_devnum]})"
    mounted = facts.mounts_of(own)
    if mounted:
        return f"holds a mounted filesystem ({mounted[0].mountpoint})"
    if own & set(facts.swaps):
        return "in use as swap"
    ours = {a.name for a in facts.arrays if a.short_name == opts.array_name}
    foreign = [h for h in disk.holders if h not in ours]
    if foreign:
        return f"in use by {', '.join(foreign)}"
    if disk.readonly:
        return "read-only"
    return ""


def is_our_fs(sig: Signature) -> bool:
    return sig.kind == "filesystem" and sig.label.startswith(LABEL_PREFIX)


def refuse_disk(plan: Plan, c: DiskCandidate, what: str) -> None:
    plan.decisions.append(DiskDecision(c.disk.name, False, what, blocking=True))
    plan.refusals.append(f"{c.disk.name} ({c.disk.serial or 'no serial'}) {what}: not "
                         f"touching it; if its data may be destroyed, pass --force "
                         f"{c.disk.name}")


def foreign(c: DiskCandidate, opts: Options) -> str:
    """Why an eligible disk's content is not ours ("" when blank or ours)."""
    if c.disk.partitions:
        return f"has partitions ({', '.join(c.disk.partitions)})"
    sig = c.sig
    if sig.blank or is_our_fs(sig):
        return ""
    if sig.md and sig.md.short_name == opts.array_name:
        return ""
    return f"carries {sig.describe()}"


def note_unused(plan: Plan, usable: list[DiskCandidate]) -> None:
    for c in usable:
        plan.decisions.append(DiskDecision(c.disk.name, False,
                                           f"eligible ({c.sig.describe()}), but setup is "
                                           "refused"))
