"""The volumes of a disks plan: one md array (raid0/raid10) or one disk, or each disk on
its own mount point (the mount strategy), reusing what nodeagent made before.

Decided from the disks themselves: md superblocks name our array (assemble it, or
re-create it over forced disks), our filesystem labels (k8s-disks-N) name our volumes.
"""

from __future__ import annotations

from nodeagent.disks import steps as st
from nodeagent.disks.candidates import (
    DiskCandidate,
    foreign,
    is_our_fs,
    note_unused,
    refuse_disk,
)
from nodeagent.disks.decisions import DiskDecision, Plan, Volume
from nodeagent.disks.model import Facts, MdArray, Signature
from nodeagent.disks.options import LABEL_PREFIX, XFS_MAX_LOG_SU_KIB, Options

USABLE_FS = ("xfs", "ext4", "ext3", "ext2")


# ------------------------------------------------------------------ raid0 / raid10


def plan_array_strategy(facts: Facts, opts: Options, plan: Plan,
                         candidates: list[DiskCandidate]) -> None:
    ours_active = [a for a in facts.arrays if a.short_name == opts.array_name and a.active]
    usable: list[DiskCandidate] = []
    for c in candidates:
        why = foreign(c, opts)
        if why and not c.forced:
            refuse_disk(plan, c, why)
        else:
            usable.append(c)
    if plan.refusals:
        note_unused(plan, usable)
        return
    names = {c.disk.name for c in usable}
    for array in ours_active:
        if set(array.members) <= names:
            _reuse_array(plan, opts, array, usable)
            return
        plan.notes.append(f"array {array.name} is named '{opts.array_name}' but is built "
                          "from disks that are not eligible instance store: left alone")
    groups = _md_groups(usable, opts)
    if groups:
        _assemble_or_recreate(plan, opts, facts, groups, usable)
        return
    fresh = [c for c in usable if c.sig.blank or c.forced]
    ours_fs = [c for c in usable if is_our_fs(c.sig) and not c.forced]
    if ours_fs:
        _single_disk_fs(plan, opts, ours_fs, fresh)
        return
    _new_volume(plan, opts, fresh)


def _md_groups(usable: list[DiskCandidate], opts: Options) -> dict[str, list[DiskCandidate]]:
    groups: dict[str, list[DiskCandidate]] = {}
    for c in usable:
        if c.sig.md and not c.forced and c.sig.md.short_name == opts.array_name:
            groups.setdefault(c.sig.md.array_uuid, []).append(c)
    return groups


def _level_name(level: int | str) -> str:
    return level if isinstance(level, str) else f"raid{level}"


def _reuse_array(plan: Plan, opts: Options, array: MdArray, usable: list[DiskCandidate]) -> None:
    for c in usable:
        if c.disk.name in array.members:
            plan.decisions.append(DiskDecision(c.disk.name, True,
                                               f"member of array '{opts.array_name}' "
                                               f"({array.name}, {array.state})"))
        else:
            plan.decisions.append(DiskDecision(c.disk.name, False,
                                               f"not in the existing array '{opts.array_name}'"
                                               " (left unused)"))
    if array.level != opts.strategy:
        plan.notes.append(f"existing array {array.name} is {array.level}; --strategy "
                          f"{opts.strategy} is not applied over its data (re-create it "
                          "with --force naming its disks)")
    if array.degraded:
        plan.notes.append(f"array {array.name} is degraded ({array.degraded} member(s) "
                          "missing)")
    volume = Volume(index=0, mountpoint=opts.volume_mountpoint(0), kind="md",
                    members=array.members, level=array.level, device=array.name,
                    devnum=array.devnum)
    _plan_existing_fs(plan, opts, volume, array.filesystem, forced=False)


def _assemble_or_recreate(plan: Plan, opts: Options, facts: Facts,
                          groups: dict[str, list[DiskCandidate]],
                          usable: list[DiskCandidate]) -> None:
    # The group with most members present (then the most recent) is the array; any other
    # group is an older, abandoned array of the same name.
    best = max(groups.values(), key=lambda g: (len(g), max(c.sig.md.events for c in g)))
    md = best[0].sig.md
    assert md is not None
    for uuid, group in groups.items():
        if group is not best:
            for c in group:
                refuse_disk(plan, c, f"holds a stale member of an older array "
                                      f"'{md.short_name}' (uuid {uuid})")
    if plan.refusals:
        return
    present = len(best)
    needed = md.raid_disks if md.level == 0 else md.raid_disks // 2 + md.raid_disks % 2
    names = tuple(c.disk.name for c in best)
    if present < needed:
        plan.refusals.append(
            f"array '{md.short_name}' (uuid {md.array_uuid}, raid{md.level}) has only "
            f"{present} of {md.raid_disks} members ({', '.join(names)}); its data cannot "
            f"be read. To re-create it over them, pass --force for each: "
            + " ".join(f"--force {n}" for n in names))
        return
    for array in facts.arrays:
        if not array.active and set(array.members) & set(names):
            plan.steps.append(st.StopArray(array.name, "holds some members, not running"))
    plan.steps.append(st.AssembleArray(opts.array_name, md.array_uuid, names))
    for c in usable:
        used = c.disk.name in names
        plan.decisions.append(DiskDecision(
            c.disk.name, used, f"member of array '{md.short_name}' (to assemble)" if used
            else "not in the existing array (left unused)"))
    volume = Volume(index=0, mountpoint=opts.volume_mountpoint(0), kind="md", members=names,
                    level=_level_name(md.level))
    plan.volumes.append(volume)
    # The array's own chunk (capped: XFS's log stripe unit may not exceed 256 KiB).
    chunk = min(md.chunk_bytes // 1024, XFS_MAX_LOG_SU_KIB)
    plan.steps.append(st.MakeFilesystem(0, opts.filesystem, f"{LABEL_PREFIX}0",
                                        when="if-blank", chunk_kib=chunk))


def _single_disk_fs(plan: Plan, opts: Options, ours_fs: list[DiskCandidate],
                    fresh: list[DiskCandidate]) -> None:
    if len(ours_fs) > 1:
        for c in ours_fs:
            refuse_disk(plan, c, f"carries a nodeagent filesystem ({c.sig.describe()}) "
                                  "from the mount strategy; an array over them would "
                                  "destroy it")
        return
    c = ours_fs[0]
    plan.decisions.append(DiskDecision(c.disk.name, True, f"volume 0 ({c.sig.describe()})"))
    for other in fresh:
        plan.decisions.append(DiskDecision(other.disk.name, False,
                                           "blank, but volume 0 already exists on "
                                           f"{c.disk.name} (left unused)"))
    volume = Volume(index=0, mountpoint=opts.volume_mountpoint(0), kind="disk",
                    members=(c.disk.name,), device=c.disk.name, devnum=c.disk.devnum)
    _plan_existing_fs(plan, opts, volume, c.sig, forced=False)


def _new_volume(plan: Plan, opts: Options, fresh: list[DiskCandidate]) -> None:
    if not fresh:
        plan.notes.append("no instance-store disks to use: nothing to do")
        return
    if opts.strategy == "raid10" and len(fresh) < 4:
        plan.refusals.append(f"raid10 needs at least 4 disks; found {len(fresh)} "
                             f"({', '.join(c.disk.name for c in fresh)})")
        return
    for c in fresh:
        if c.forced and not c.sig.blank:
            plan.steps.append(st.WipeDisk(c.disk.name, c.sig.describe(), c.disk.partitions))
    names = tuple(c.disk.name for c in fresh)
    if len(fresh) == 1 and opts.strategy == "raid0":
        c = fresh[0]
        plan.decisions.append(DiskDecision(c.disk.name, True,
                                           "blank: volume 0 (one disk, used directly)"))
        volume = Volume(index=0, mountpoint=opts.volume_mountpoint(0), kind="disk",
                        members=names, device=c.disk.name, devnum=c.disk.devnum)
    else:
        for c in fresh:
            plan.decisions.append(DiskDecision(c.disk.name, True,
                                               ("forced" if c.forced and not c.sig.blank
                                                else "blank") + f": new {opts.strategy} member"))
        plan.steps.append(st.CreateArray(opts.array_name, opts.strategy, opts.chunk_kib, names))
        volume = Volume(index=0, mountpoint=opts.volume_mountpoint(0), kind="md",
                        members=names, level=opts.strategy)
    plan.volumes.append(volume)
    plan.steps.append(st.MakeFilesystem(0, opts.filesystem, f"{LABEL_PREFIX}0",
                                        when="always", chunk_kib=_chunk_for(volume, opts)))


def _chunk_for(volume: Volume, opts: Options) -> int:
    return opts.chunk_kib if volume.kind == "md" else 0


def _plan_existing_fs(plan: Plan, opts: Options, volume: Volume, fs: Signature,
                      forced: bool) -> None:
    """An existing volume: keep its filesystem, make one if blank, refuse anything else."""
    label = f"{LABEL_PREFIX}{volume.index}"
    chunk = _chunk_for(volume, opts)
    if fs.blank or (fs.incomplete and fs.label == label):
        why = "blank" if fs.blank else "unfinished mkfs"
        plan.notes.append(f"volume {volume.index} ({volume.device}) is {why}: making "
                          f"{opts.filesystem}")
        plan.steps.append(st.MakeFilesystem(volume.index, opts.filesystem, label,
                                            when="always", overwrite=not fs.blank,
                                            chunk_kib=chunk))
        plan.volumes.append(volume)
        return
    if fs.kind != "filesystem" or fs.fstype not in USABLE_FS or fs.incomplete:
        plan.refusals.append(f"volume {volume.index} ({volume.device}) carries "
                             f"{fs.describe()}: not formatting it")
        return
    if fs.fstype != opts.filesystem:
        plan.notes.append(f"volume {volume.index} keeps its {fs.fstype} filesystem "
                          f"(--filesystem {opts.filesystem} applies to new volumes only)")
    plan.volumes.append(Volume(**{**volume.__dict__, "fstype": fs.fstype,
                                  "fs_uuid": fs.uuid, "label": fs.label}))


# ------------------------------------------------------------------ mount strategy


def plan_mount_strategy(facts: Facts, opts: Options, plan: Plan,
                         candidates: list[DiskCandidate]) -> None:
    taken: dict[int, DiskCandidate] = {}
    fresh: list[DiskCandidate] = []
    for c in candidates:
        index = _label_index(c.sig) if not c.forced else None
        if index is not None and index not in taken:
            taken[index] = c
        elif c.sig.blank or c.forced:
            fresh.append(c)
        else:
            refuse_disk(plan, c, foreign(c, opts) or f"carries {c.sig.describe()}")
    if plan.refusals:
        note_unused(plan, [*taken.values(), *fresh])
        return
    if not taken and not fresh:
        plan.notes.append("no instance-store disks to use: nothing to do")
        return
    for index, c in sorted(taken.items()):
        plan.decisions.append(DiskDecision(c.disk.name, True,
                                           f"volume {index} ({c.sig.describe()})"))
        volume = Volume(index=index, mountpoint=opts.volume_mountpoint(index), kind="disk",
                        members=(c.disk.name,), device=c.disk.name, devnum=c.disk.devnum)
        _plan_existing_fs(plan, opts, volume, c.sig, forced=False)
    free = (i for i in range(len(candidates) + len(taken)) if i not in taken)
    for c, index in zip(fresh, free, strict=False):
        if c.forced and not c.sig.blank:
            plan.steps.append(st.WipeDisk(c.disk.name, c.sig.describe(), c.disk.partitions))
        plan.decisions.append(DiskDecision(c.disk.name, True, f"blank: volume {index}"))
        plan.volumes.append(Volume(index=index, mountpoint=opts.volume_mountpoint(index),
                                   kind="disk", members=(c.disk.name,), device=c.disk.name,
                                   devnum=c.disk.devnum))
        plan.steps.append(st.MakeFilesystem(index, opts.filesystem, f"{LABEL_PREFIX}{index}",
                                            when="always"))


def _label_index(sig: Signature) -> int | None:
    if not is_our_fs(sig) or sig.incomplete:
        return None
    suffix = sig.label[len(LABEL_PREFIX):]
    return int(suffix) if suffix.isdigit() else None
