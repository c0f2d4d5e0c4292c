"""Decide what `nodeagent disks setup` does: pure function of Facts and Options.

The plan lists every disk with the reason it is used or left alone, the volumes (an md
array, or a single disk), the directories to move, and the ordered steps. A plan with
refusals is never applied; a plan with no steps means the node already converged.
Decisions come from the disks themselves (md superblocks, filesystem labels), never from
markers on the root volume, which survive an EC2 stop/start that blanks instance store.

make_plan runs the stages: which disks (candidates.py), which volumes (volumes.py), then
here mounts, binds, mount units and service restarts; the plan's parts are decisions.py.
"""

from __future__ import annotations

from nodeagent.disks import steps as st
from nodeagent.disks.candidates import classify_disks, matches
from nodeagent.disks.decisions import BindDecision, Plan, Volume
from nodeagent.disks.model import Facts
from nodeagent.disks.options import Options
from nodeagent.disks.units import (
    BOOT_SERVICE,
    MountUnit,
    bind_target_name,
    bind_unit,
    volume_unit,
)
from nodeagent.disks.volumes import plan_array_strategy, plan_mount_strategy


def make_plan(facts: Facts, opts: Options) -> Plan:
    plan = Plan(strategy=opts.strategy)
    if opts.strategy == "none":
        plan.notes.append("strategy none: local disks are left alone")
        return plan
    if facts.os_id == "bottlerocket":
        return _bottlerocket_plan(facts, opts, plan)
    _refuse_symlinked_paths(facts, opts, plan)
    if plan.refusals:
        return plan
    candidates = classify_disks(facts, opts, plan)
    if plan.refusals:
        return plan
    if opts.strategy == "mount":
        plan_mount_strategy(facts, opts, plan, candidates)
    else:
        plan_array_strategy(facts, opts, plan, candidates)
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


def _refuse_symlinked_paths(facts: Facts, opts: Options, plan: Plan) -> None:
    """A symlink on the way to the mount path or a bind dir is refused: the kernel
    records mounts under the real path, so a re-run could not recognise its own mounts,
    and the mount units would be named after a path systemd does not mount."""
    named = [("--mount-path", opts.mount_path)]
    if opts.strategy != "mount":
        named += [("--bind", b) for b in facts.dirs]
    for flag, path in named:
        if path in facts.symlinked:
            link, target = facts.symlinked[path]
            plan.refusals.append(
                f"{flag} {path}: {link} is a symlink (to {target}); mounts are recorded "
                "under the real path, so setup could not recognise them on a re-run: "
                "give the path without symlinks")


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
    disks = [f"/dev/{d.name}" for d in facts.disks if opts.only and matches(d, opts.only)]
    binds = tuple(facts.dirs)
    plan.notes.append("Bottlerocket: delegating to apiclient ephemeral-storage (it finds "
                      "instance-store disks by model and never uses EBS)")
    plan.steps.append(st.BottlerocketInit(opts.filesystem, tuple(disks)))
    if binds:
        plan.steps.append(st.BottlerocketBind(binds))
    return plan
