"""Decide what `nodeagent disks setup` does: pure function of Facts and Options.

The plan lists every disk with the reason it is used or left alone, the volumes (an md
array, or a single disk), the directories to move, and the ordered steps. A plan with
refusals is never applied; a plan with no steps means the node already converged.
Decisions come from the disks themselves (md superblocks, filesystem labels), never from
markers on the root volume, which survive an EC2 stop/start that blanks instance store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodeagent.disks import steps as st
from nodeagent.disks.model import Facts, MdArray, Signature
from nodeagent.disks.options import LABEL_PREFIX, XFS_MAX_LOG_SU_KIB, Options
from nodeagent.disks.units import (
    BOOT_SERVICE,
    MountUnit,
    bind_target_name,
    bind_unit,
    volume_unit,
)
from nodeagent.hostfacts.nvme import EBS_MODEL
from nodeagent.hostfacts.sysfs import BlockDevice

USABLE_FS = ("xfs", "ext4", "ext3", "ext2")


@dataclass(frozen=True)
class DiskDecision:
    disk: str
    used: bool
    reason: str
    blocking: bool = False  # an eligible disk we refuse to touch: setup stops


@dataclass(frozen=True)
class Volume:
    index: int
    mountpoint: str
    kind: str  # "md" or "disk"
    members: tuple[str, ...]
    level: str = ""  # raid0 / raid10 for md
    device: str = ""  # kernel name when it exists now (md127, nvme1n1)
    devnum: str = ""
    fstype: str = ""  # existing filesystem, or the one mkfs will make
    fs_uuid: str = ""  # known when the filesystem exists
    label: str = ""
    mounted: bool = False


@dataclass(frozen=True)
class BindDecision:
    path: str
    target: str  # directory on the volume
    state: str  # "bound", "to-bind", "left-alone"
    reason: str = ""


@dataclass
class Plan:
    strategy: str
    decisions: list[DiskDecision] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    binds: list[BindDecision] = field(default_factory=list)
    steps: list[st.Step] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    units: list[MountUnit] = field(default_factory=list)  # desired (uuid known) units
    bottlerocket: bool = False

    @property
    def converged(self) -> bool:
        return not self.steps and not self.refusals


def make_plan(facts: Facts, opts: Options) -> Plan:
    plan = Plan(strategy=opts.strategy)
    if opts.strategy == "none":
        plan.notes.append("strategy none: local disks are left alone")
        return plan
    if facts.os_id == "bottlerocket":
        return _bottlerocket_plan(facts, opts, plan)
    candidates = _classify(facts, opts, plan)
    if plan.refusals:
        return plan
    if opts.strategy == "mount":
        _plan_mount_strategy(facts, opts, plan, candidates)
    else:
        _plan_array_strategy(facts, opts, plan, candidates)
    if plan.refusals or not plan.volumes:
        return plan
    for volume in list(plan.volumes):
        _plan_mount(facts, plan, volume)
    if plan.refusals:
        return plan
    if opts.strategy != "mount":
        _plan_binds(facts, opts, plan)
    _plan_units(facts, opts, plan)
    _plan_services(facts, opts, plan)
    plan.steps.sort(key=lambda s: s.order)
    return plan


# ------------------------------------------------------------------ disks


@dataclass
class Candidate:
    disk: BlockDevice
    sig: Signature
    forced: bool


def _matches(disk: BlockDevice, names: tuple[str, ...]) -> bool:
    keys = {disk.name, f"/dev/{disk.name}", disk.serial}
    return any(n in keys for n in names)


def _classify(facts: Facts, opts: Options, plan: Plan) -> list[Candidate]:
    """Decide for every disk; return the eligible ones (blank, ours, or forced)."""
    for flag, names in (("--force", opts.force), ("--disk", opts.only)):
        for name in names:
            if not any(_matches(d, (name,)) for d in facts.disks):
                plan.refusals.append(f"{flag} {name}: no such disk (give a kernel name like "
                                     "nvme1n1, a /dev path or a serial)")
    candidates = []
    for disk in sorted(facts.disks, key=lambda d: d.name):
        if disk.hidden:
            continue
        reason = _exclusion(facts, opts, disk)
        forced = _matches(disk, opts.force)
        if reason:
            plan.decisions.append(DiskDecision(disk.name, False, reason))
            if forced:
                plan.refusals.append(f"--force {disk.name}: cannot be forced: {reason}")
            continue
        sig = facts.signatures.get(disk.name)
        if sig is None:  # not probed: discovery judged it no candidate
            plan.decisions.append(DiskDecision(disk.name, False, "not probed"))
            continue
        candidates.append(Candidate(disk, sig, forced))
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
    if opts.only and not _matches(disk, opts.only):
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


def _is_our_fs(sig: Signature) -> bool:
    return sig.kind == "filesystem" and sig.label.startswith(LABEL_PREFIX)


def _refuse_disk(plan: Plan, c: Candidate, what: str) -> None:
    plan.decisions.append(DiskDecision(c.disk.name, False, what, blocking=True))
    plan.refusals.append(f"{c.disk.name} ({c.disk.serial or 'no serial'}) {what}: not "
                         f"touching it; if its data may be destroyed, pass --force "
                         f"{c.disk.name}")


def _foreign(c: Candidate, opts: Options) -> str:
    """Why an eligible disk's content is not ours ("" when blank or ours)."""
    if c.disk.partitions:
        return f"has partitions ({', '.join(c.disk.partitions)})"
    sig = c.sig
    if sig.blank or _is_our_fs(sig):
        return ""
    if sig.md and sig.md.short_name == opts.array_name:
        return ""
    return f"carries {sig.describe()}"


# ------------------------------------------------------------------ raid0 / raid10


def _plan_array_strategy(facts: Facts, opts: Options, plan: Plan,
                         candidates: list[Candidate]) -> None:
    ours_active = [a for a in facts.arrays if a.short_name == opts.array_name and a.active]
    usable: list[Candidate] = []
    for c in candidates:
        why = _foreign(c, opts)
        if why and not c.forced:
            _refuse_disk(plan, c, why)
        else:
            usable.append(c)
    if plan.refusals:
        _note_unused(plan, usable)
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
    ours_fs = [c for c in usable if _is_our_fs(c.sig) and not c.forced]
    if ours_fs:
        _single_disk_fs(plan, opts, ours_fs, fresh)
        return
    _new_volume(plan, opts, fresh)


def _note_unused(plan: Plan, usable: list[Candidate]) -> None:
    for c in usable:
        plan.decisions.append(DiskDecision(c.disk.name, False,
                                           f"eligible ({c.sig.describe()}), but setup is "
                                           "refused"))


def _md_groups(usable: list[Candidate], opts: Options) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = {}
    for c in usable:
        if c.sig.md and not c.forced and c.sig.md.short_name == opts.array_name:
            groups.setdefault(c.sig.md.array_uuid, []).append(c)
    return groups


def _level_name(level: int | str) -> str:
    return level if isinstance(level, str) else f"raid{level}"


def _reuse_array(plan: Plan, opts: Options, array: MdArray, usable: list[Candidate]) -> None:
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
                          groups: dict[str, list[Candidate]], usable: list[Candidate]) -> None:
    # The group with most members present (then the most recent) is the array; any other
    # group is an older, abandoned array of the same name.
    best = max(groups.values(), key=lambda g: (len(g), max(c.sig.md.events for c in g)))
    md = best[0].sig.md
    assert md is not None
    for uuid, group in groups.items():
        if group is not best:
            for c in group:
                _refuse_disk(plan, c, f"holds a stale member of an older array "
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


def _single_disk_fs(plan: Plan, opts: Options, ours_fs: list[Candidate],
                    fresh: list[Candidate]) -> None:
    if len(ours_fs) > 1:
        for c in ours_fs:
            _refuse_disk(plan, c, f"carries a nodeagent filesystem ({c.sig.describe()}) "
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


def _new_volume(plan: Plan, opts: Options, fresh: list[Candidate]) -> None:
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


def _plan_mount_strategy(facts: Facts, opts: Options, plan: Plan,
                         candidates: list[Candidate]) -> None:
    taken: dict[int, Candidate] = {}
    fresh: list[Candidate] = []
    for c in candidates:
        index = _label_index(c.sig) if not c.forced else None
        if index is not None and index not in taken:
            taken[index] = c
        elif c.sig.blank or c.forced:
            fresh.append(c)
        else:
            _refuse_disk(plan, c, _foreign(c, opts) or f"carries {c.sig.describe()}")
    if plan.refusals:
        _note_unused(plan, [*taken.values(), *fresh])
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
    if not _is_our_fs(sig) or sig.incomplete:
        return None
    suffix = sig.label[len(LABEL_PREFIX):]
    return int(suffix) if suffix.isdigit() else None


# ------------------------------------------------------------------ mounts, binds, units


def _plan_mount(facts: Facts, plan: Plan, volume: Volume) -> None:
    there = facts.mount_at(volume.mountpoint)
    if there is not None and volume.devnum and there.devnum == volume.devnum \
            and there.root == "/":
        _replace_volume(plan, volume, mounted=True)
        return
    if there is not None:
        plan.refusals.append(f"{volume.mountpoint} already has {there.source} "
                             f"({there.fstype}) mounted: unmount it or choose --mount-path")
        return
    plan.steps.append(st.MountVolume(volume.index, volume.mountpoint))


def _replace_volume(plan: Plan, volume: Volume, **changes: object) -> None:
    i = plan.volumes.index(volume)
    plan.volumes[i] = Volume(**{**volume.__dict__, **changes})


def _plan_binds(facts: Facts, opts: Options, plan: Plan) -> None:
    volume = plan.volumes[0]
    for path, state in facts.dirs.items():
        target = f"{volume.mountpoint}/{bind_target_name(path)}"
        if state.mount is not None:
            ours = (volume.devnum and state.mount.devnum == volume.devnum
                    and state.mount.root == "/" + bind_target_name(path))
            plan.binds.append(BindDecision(path, target, "bound" if ours else "left-alone",
                                           "" if ours else "already a mount point "
                                           f"({state.mount.source} {state.mount.root})"))
            continue
        if state.is_symlink or (state.exists and not state.is_dir):
            plan.refusals.append(f"--bind {path}: is a "
                                 f"{'symlink' if state.is_symlink else 'file'}, not a "
                                 "directory: not moving it")
            continue
        copy = _copy_mode(facts, volume, target, state.exists)
        plan.binds.append(BindDecision(path, target, "to-bind", COPY_REASONS[copy]))
        plan.steps.append(st.MoveDir(path, target, copy, opts.owners(path)))


COPY_REASONS = {"yes": "its content is copied first", "no": "nothing to copy",
                "if-missing": "copied first unless the volume already has it"}


def _copy_mode(facts: Facts, volume: Volume, target: str, source_exists: bool) -> str:
    if volume.mounted and facts.volume_dirs.get(target):
        return "no"  # copied by an earlier run: the volume's copy is the live one
    if not volume.fs_uuid:
        return "yes" if source_exists else "no"  # a new filesystem holds nothing yet
    return "if-missing"


def _boot_service_enabled(facts: Facts) -> bool:
    return f"multi-user.target.wants/{BOOT_SERVICE}" in facts.units


def desired_units(opts: Options, volumes: list[Volume], binds: list[BindDecision],
                  hard: bool) -> list[MountUnit]:
    """Units for volumes whose filesystem UUID is known, and for the binds we manage."""
    units = []
    managed = [b for b in binds if b.state != "left-alone"]
    consumers = tuple(dict.fromkeys(s for b in managed for s in opts.owners(b.path)))
    for v in volumes:
        if not v.fs_uuid:
            continue
        desc = (f"nodeagent: local NVMe volume {v.index} ({v.level or 'disk'} over "
                f"{', '.join(v.members)})")
        units.append(volume_unit(v.mountpoint, v.fs_uuid, v.fstype, desc,
                                 consumers if v.index == 0 else (), hard))
    if volumes and volumes[0].fs_uuid:
        vol_unit = units[0].name
        units += [bind_unit(b.path, b.target, vol_unit, opts.owners(b.path), hard)
                  for b in managed]
    return units


def _plan_units(facts: Facts, opts: Options, plan: Plan) -> None:
    hard = _boot_service_enabled(facts)
    plan.units = desired_units(opts, plan.volumes, plan.binds, hard)
    complete = all(v.fs_uuid for v in plan.volumes)
    current = complete and all(
        facts.units.get(u.name) == u.text()
        and all(facts.units.get(k) == v for k, v in u.install_links().items())
        for u in plan.units)
    if not current:
        plan.steps.append(st.WriteUnits(hard=hard))


def _plan_services(facts: Facts, opts: Options, plan: Plan) -> None:
    moving = [s for s in plan.steps if isinstance(s, st.MoveDir)]
    needed = sorted({u for s in moving for u in s.owners if facts.services_running.get(u)})
    if not needed:
        return
    if not opts.restart_services:
        for s in moving:
            running = [u for u in s.owners if facts.services_running.get(u)]
            if running:
                plan.refusals.append(f"{', '.join(running)} running and using {s.path}: "
                                     "stop it first, or pass --restart-services to stop, "
                                     "move and start it again")
        return
    plan.steps.append(st.StopServices(tuple(st.service_order(needed))))
    plan.steps.append(st.StartServices(tuple(reversed(st.service_order(needed)))))


# ------------------------------------------------------------------ Bottlerocket


def _bottlerocket_plan(facts: Facts, opts: Options, plan: Plan) -> Plan:
    plan.bottlerocket = True
    if opts.strategy != "raid0":
        plan.refusals.append(f"--strategy {opts.strategy}: Bottlerocket's apiclient "
                             "ephemeral-storage only builds raid0 (or uses a single disk)")
        return plan
    disks = [f"/dev/{d.name}" for d in facts.disks if opts.only and _matches(d, opts.only)]
    binds = tuple(facts.dirs)
    plan.notes.append("Bottlerocket: delegating to apiclient ephemeral-storage (it finds "
                      "instance-store disks by model and never uses EBS)")
    plan.steps.append(st.BottlerocketInit(opts.filesystem, tuple(disks)))
    if binds:
        plan.steps.append(st.BottlerocketBind(binds))
    return plan
