"""Carry out a plan: mdadm, mkfs, mount, units, directory moves, service restarts.

Each step checks the live state first and does nothing when its work is already done, so
a run that was killed anywhere can simply be run again. After the last step the facts are
gathered again and planned again: a converged node plans no steps, anything else is
reported as an error rather than silently left half-done.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nodeagent.disks import migrate, services, signatures
from nodeagent.disks import steps as st
from nodeagent.disks.decisions import Plan, SetupRefused, Volume
from nodeagent.disks.discover import gather
from nodeagent.disks.host import Host
from nodeagent.disks.options import Options
from nodeagent.disks.plan import desired_units, make_plan
from nodeagent.errors import NodeagentError
from nodeagent.hostfacts import sysfs
from nodeagent.hostfacts.mountinfo import read_mountinfo
from nodeagent.log import fields

log = logging.getLogger(__name__)

DEVICE_WAIT_S = 60.0


@dataclass
class Runtime:
    """What apply learns while it goes (devices of new arrays, UUIDs of new filesystems)."""

    host: Host
    opts: Options
    plan: Plan
    volumes: dict[int, Volume] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)
    changed_units: bool = False


@dataclass
class SetupResult:
    plan: Plan
    changed: bool
    duration_s: float
    timings: dict[str, float]
    converged: bool

    def to_dict(self) -> dict[str, object]:
        return {"changed": self.changed, "converged": self.converged,
                "duration_seconds": round(self.duration_s, 3),
                "timings_seconds": {k: round(v, 3) for k, v in self.timings.items()},
                "steps": [s.to_dict() for s in self.plan.steps]}


def setup(host: Host, opts: Options, blkid: signatures.BlkidProbe | None = None) -> SetupResult:
    started = time.monotonic()
    plan = make_plan(gather(host, opts, blkid), opts)
    if plan.steps and _udev_running(host):
        # About to change something: first let udev finish the events in flight (disks
        # still being probed at boot), then look again, so no disk is missed.
        _settle(host)
        plan = make_plan(gather(host, opts, blkid), opts)
    host.timings["discover"] = time.monotonic() - started - host.timings.get("udev", 0.0)
    if plan.refusals:
        raise SetupRefused("disks setup refused, nothing changed:\n  - "
                           + "\n  - ".join(plan.refusals))
    if not plan.steps:
        log.info("disks already set up: nothing to do",
                 extra=fields(volumes=len(plan.volumes), binds=len(plan.binds)))
        return _finish(host, plan, started, changed=False, converged=True)
    run = Runtime(host, opts, plan, volumes={v.index: v for v in plan.volumes})
    try:
        for step in plan.steps:
            log.info(step.describe(), extra=fields(step=step.action))
            _HANDLERS[type(step)](run, step)
    finally:
        if run.stopped:  # a failure between stop and start: bring the services back
            services.start(host, list(reversed(run.stopped)))
    converged = _check_converged(host, opts, blkid)
    return _finish(host, plan, started, changed=True, converged=converged)


def _check_converged(host: Host, opts: Options, blkid: signatures.BlkidProbe | None) -> bool:
    start = time.monotonic()
    after = make_plan(gather(host, opts, blkid), opts)
    host.timings["converge-check"] += time.monotonic() - start
    if after.bottlerocket or after.converged:
        return True
    left = [s.describe() for s in after.steps] + after.refusals
    log.error("setup did not converge", extra=fields(remaining=left))
    raise NodeagentError("disks setup finished its steps but the node still needs: "
                         + "; ".join(left))


def _finish(host: Host, plan: Plan, started: float, changed: bool,
            converged: bool) -> SetupResult:
    result = SetupResult(plan, changed, time.monotonic() - started, dict(host.timings),
                         converged)
    _record(host, result)
    log.info("disks setup done", extra=fields(changed=changed,
                                              seconds=round(result.duration_s, 3)))
    return result


def _record(host: Host, result: SetupResult) -> None:
    """Last result under /run (per boot) for `status` and the agent's metrics."""
    path = host.path(host.state_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"finished_at": time.time(), **result.to_dict()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot record setup result", extra=fields(path=str(path),
                                                               error=str(exc)))


# ------------------------------------------------------------------ disks and arrays


def _wipe(run: Runtime, step: st.WipeDisk) -> None:
    for part in (*step.partitions, step.disk):
        run.host.run(["wipefs", "--all", f"/dev/{part}"], category="wipefs")
    if step.partitions:
        run.host.run(["blockdev", "--rereadpt", f"/dev/{step.disk}"], category="wipefs")


def _stop_array(run: Runtime, step: st.StopArray) -> None:
    if (run.host.sysfs / "block" / step.array).exists():
        run.host.run(["mdadm", "--stop", f"/dev/{step.array}"], category="mdadm")


def _assemble(run: Runtime, step: st.AssembleArray) -> None:
    if _find_array(run.host, step.members) is None:
        run.host.run(["mdadm", "--assemble", f"/dev/md/{step.name}", f"--uuid={step.uuid}",
                      "--run", *[f"/dev/{m}" for m in step.members]], category="mdadm")
    _set_device(run, 0, _wait_for_array(run, step.name, step.members))


def _create(run: Runtime, step: st.CreateArray) -> None:
    if _find_array(run.host, step.members) is None:
        argv = ["mdadm", "--create", f"/dev/md/{step.name}", "--run", "--metadata=1.2",
                "--homehost=any", f"--name={step.name}", f"--level={step.level}",
                f"--chunk={step.chunk_kib}", f"--raid-devices={len(step.members)}"]
        # raid10 over blank disks only (forced disks are wiped but keep old blocks):
        # instance store reads zeros, the mirrors already agree and an initial resync
        # would only burn I/O.
        wiped = any(isinstance(s, st.WipeDisk) for s in run.plan.steps)
        if step.level == "raid10" and not wiped:
            argv.append("--assume-clean")
        run.host.run([*argv, *[f"/dev/{m}" for m in step.members]], category="mdadm")
    _set_device(run, 0, _wait_for_array(run, step.name, step.members))


def _find_array(host: Host, members: tuple[str, ...]) -> str | None:
    """The active md device whose disks are exactly these members."""
    for name in sorted(os.listdir(host.sysfs / "block")):
        if not name.startswith("md"):
            continue
        state = sysfs.read_attr(host.sysfs / "block" / name / "md" / "array_state")
        if state in ("", "inactive", "clear"):
            continue
        if sysfs.lower_disks(host.sysfs, name) == set(members):
            return name
    return None


def _udev_running(host: Host) -> bool:
    return host.path("/run/udev/control").exists()


def _wait_for(what: str, check: Callable[[], object], timeout: float = DEVICE_WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise NodeagentError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _settle(host: Host) -> None:
    if _udev_running(host):
        host.run(["udevadm", "settle", "--timeout=60"], check=False, category="udev")


def _wait_for_array(run: Runtime, name: str, members: tuple[str, ...]) -> str:
    """Wait until the md device runs and udev made /dev/md/<name>: using the array
    before its link exists was a real race elsewhere."""
    host = run.host
    start = time.monotonic()
    md = str(_wait_for(f"md array over {', '.join(members)}",
                       lambda: _find_array(host, members)))
    host.timings["udev"] += time.monotonic() - start
    _settle(host)  # timed by host.run
    start = time.monotonic()
    if _udev_running(host):
        link = host.dev / "md" / name
        _wait_for(f"udev link {link}", lambda: link.exists() and link.resolve().name == md)
    _wait_for(f"/dev/{md}", lambda: (host.dev / md).exists())
    host.timings["udev"] += time.monotonic() - start
    log.info("array ready", extra=fields(device=f"/dev/{md}", name=name))
    return md


def _set_device(run: Runtime, index: int, device: str) -> None:
    devnum = sysfs.read_attr(run.host.sysfs / "block" / device / "dev")
    run.volumes[index] = replace(run.volumes[index], device=device, devnum=devnum)


# ------------------------------------------------------------------ filesystems, mounts


def _mkfs(run: Runtime, step: st.MakeFilesystem) -> None:
    volume = run.volumes[step.volume]
    dev = f"/dev/{volume.device}"  # for commands, which run in the host's namespaces
    seen_at = str(run.host.dev / volume.device)  # for our own reads
    size = int(sysfs.read_attr(run.host.sysfs / "block" / volume.device / "size") or 0) * 512
    found = signatures.probe(seen_at, size)
    if step.when == "if-blank" and not found.blank and not found.incomplete:
        if found.kind != "filesystem":
            raise NodeagentError(f"{dev} carries {found.describe()}: not formatting it")
        log.info("filesystem already there", extra=fields(device=dev, fstype=found.fstype))
    else:
        run.host.run(_mkfs_argv(step, dev, overwrite=step.overwrite or found.incomplete),
                     category="mkfs", timeout=3600)
        found = signatures.probe(seen_at, size)
        if found.kind != "filesystem":
            raise NodeagentError(f"mkfs on {dev} left no readable filesystem")
    run.volumes[step.volume] = replace(volume, fstype=found.fstype, fs_uuid=found.uuid,
                                       label=found.label)
    if _udev_running(run.host):
        _settle(run.host)  # for /dev/disk/by-uuid/<uuid>, which the mount units use


def _mkfs_argv(step: st.MakeFilesystem, dev: str, overwrite: bool) -> list[str]:
    if step.fstype == "xfs":
        # -K: instance store arrives trimmed, discarding it again only costs time.
        # Log stripe unit = RAID chunk (<= 256 KiB, which XFS accepts).
        argv = ["mkfs.xfs", "-K", "-L", step.label]
        if step.chunk_kib:
            argv += ["-l", f"su={step.chunk_kib}k"]
        return [*argv, *(["-f"] if overwrite else []), dev]
    # ext4: no discard (same reason), lazy inode table / journal init so mkfs is quick.
    return ["mkfs.ext4", "-q", "-L", step.label, "-E",
            "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            *(["-F"] if overwrite else []), dev]


def _mounted(host: Host, path: str) -> str | None:
    """devnum mounted at path (the top of the stack), if any."""
    found = [m for m in read_mountinfo(host.proc_mountinfo) if m.mountpoint == path]
    return found[-1].devnum if found else None


def _mount_volume(run: Runtime, step: st.MountVolume) -> None:
    volume = run.volumes[step.volume]
    if volume.devnum and _mounted(run.host, step.mountpoint) == volume.devnum:
        return
    run.host.path(step.mountpoint).mkdir(parents=True, exist_ok=True)
    run.host.run(["mount", "-t", volume.fstype, "-o", "noatime",
                  f"/dev/{volume.device}", step.mountpoint], category="mount")
    run.volumes[step.volume] = replace(volume, mounted=True)


# ------------------------------------------------------------------ units


def _write_units(run: Runtime, step: st.WriteUnits) -> None:
    volumes = sorted(run.volumes.values(), key=lambda v: v.index)
    units = desired_units(run.opts, volumes, run.plan.binds, step.hard)
    base = run.host.path(run.opts.units_dir)
    base.mkdir(parents=True, exist_ok=True)
    changed = False
    for unit in units:
        changed |= _write_if_changed(base / unit.name, unit.text())
        for link, target in unit.install_links().items():
            changed |= _link(base / link, target)
        changed |= _drop_other_links(base, unit.name, unit.install_links())
    if changed:
        log.info("units written", extra=fields(units=[u.name for u in units],
                                               dir=run.opts.units_dir))
    if changed and services.systemd_running(run.host):
        services.daemon_reload(run.host)


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _link(path: Path, target: str) -> bool:
    if path.is_symlink() and os.readlink(path) == target:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    os.symlink(target, path)
    return True


def _drop_other_links(base: Path, unit: str, wanted: dict[str, str]) -> bool:
    """Remove our enablement links that the current settings no longer want (e.g.
    .requires -> .wants once the boot service is gone)."""
    dropped = False
    for kind in ("requires", "wants"):
        for link in base.glob(f"*.{kind}/{unit}"):
            rel = f"{link.parent.name}/{link.name}"
            if rel not in wanted and link.is_symlink() and os.readlink(link) == f"../{unit}":
                link.unlink()
                dropped = True
    return dropped


# ------------------------------------------------------------------ services and binds


def _stop_services(run: Runtime, step: st.StopServices) -> None:
    services.stop(run.host, step.units)
    run.stopped = list(step.units)


def _start_services(run: Runtime, step: st.StartServices) -> None:
    services.start(run.host, step.units)
    run.stopped = []


def _move_dir(run: Runtime, step: st.MoveDir) -> None:
    host = run.host
    if _mounted(host, step.path) is not None:
        log.info("already a mount point: left alone", extra=fields(path=step.path))
        return
    target = host.path(step.target)
    if target.is_dir():
        log.info("volume already holds the copy", extra=fields(target=step.target))
    elif host.path(step.path).is_dir():
        migrate.copy_dir(host, step.path, step.target,
                         content=run.opts.verify == "content")
    else:
        target.mkdir(mode=0o755, parents=True)
    host.path(step.path).mkdir(mode=0o755, parents=True, exist_ok=True)
    host.run(["mount", "--bind", step.target, step.path], category="mount")


def _bottlerocket(run: Runtime, step: st.BottlerocketInit | st.BottlerocketBind) -> None:
    run.host.run(step.argv(), category="apiclient", timeout=1800)


_HANDLERS: dict[type, Callable[[Runtime, st.Step], None]] = {  # type: ignore[dict-item]
    st.WipeDisk: _wipe,
    st.StopArray: _stop_array,
    st.AssembleArray: _assemble,
    st.CreateArray: _create,
    st.MakeFilesystem: _mkfs,
    st.MountVolume: _mount_volume,
    st.WriteUnits: _write_units,
    st.StopServices: _stop_services,
    st.MoveDir: _move_dir,
    st.StartServices: _start_services,
    st.BottlerocketInit: _bottlerocket,
    st.BottlerocketBind: _bottlerocket,
}
