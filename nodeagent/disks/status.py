"""`nodeagent disks status`: array health, mounts, binds and capacity, plus the metric
values the agent exports (disk_metrics_snapshot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nodeagent.disks.discover import gather, probe_md_member
from nodeagent.disks.host import Host
from nodeagent.disks.options import Options
from nodeagent.disks.plan import make_plan
from nodeagent.hostfacts import sysfs
from nodeagent.hostfacts.mountinfo import read_mountinfo


def capacity(path: Path) -> tuple[int, int]:
    """(capacity, free) bytes of the filesystem at path; free as seen by non-root users,
    like df's Avail."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def status(host: Host, opts: Options) -> dict[str, object]:
    facts = gather(host, opts)
    plan = make_plan(facts, opts)
    arrays = [{
        "device": f"/dev/{a.name}", "name": a.array_name, "level": a.level, "state": a.state,
        "members": list(a.members), "raid_disks": a.raid_disks, "degraded": a.degraded,
        "size_bytes": a.size_bytes, "ours": a.short_name == opts.array_name,
    } for a in facts.arrays]
    mounts = []
    for v in plan.volumes:
        entry = {"volume": v.index, "mountpoint": v.mountpoint, "device": v.device,
                 "kind": v.kind, "level": v.level, "members": list(v.members),
                 "fstype": v.fstype, "uuid": v.fs_uuid, "mounted": v.mounted}
        if v.mounted:
            entry["capacity_bytes"], entry["free_bytes"] = capacity(host.path(v.mountpoint))
        mounts.append(entry)
    binds = [{"path": b.path, "target": b.target, "state": b.state, "detail": b.reason}
             for b in plan.binds]
    unhealthy = [a for a in arrays if a["ours"] and (a["degraded"] or a["state"] in
                                                      ("inactive", "clear", "readonly"))]
    if plan.bottlerocket:
        pending = [d for d, s in facts.dirs.items() if s.mount is None]
        converged = not pending
    else:
        pending = [s.describe() for s in plan.steps]
        converged = plan.converged
    return {
        "healthy": converged and not unhealthy, "converged": converged,
        "strategy": opts.strategy, "arrays": arrays, "volumes": mounts, "binds": binds,
        "pending": pending, "refusals": plan.refusals, "notes": plan.notes,
        "last_setup": read_last_setup(host),
    }


def read_last_setup(host: Host) -> dict[str, object] | None:
    try:
        return json.loads(host.path(host.state_file).read_text())
    except (OSError, ValueError):
        return None


def disk_metrics_snapshot(host: Host | None = None,
                          opts: Options | None = None) -> dict[str, object]:
    """Values for the Prometheus disk metrics, cheap enough for every scrape: sysfs,
    member superblocks and statvfs only (no blkid, no systemctl).

    {"arrays": [{"name", "device", "state", "members", "degraded"}],
     "mounts": [{"mountpoint", "capacity_bytes", "free_bytes"}],
     "setup_duration_seconds": float | None, "setup_converged": bool | None}
    """
    host = host or Host()
    opts = opts or Options()
    arrays = []
    for dev in sysfs.read_sysfs(host.sysfs):
        if not dev.name.startswith("md"):
            continue
        name = _array_name(host, dev.slaves)
        if name.rsplit(":", 1)[-1] != opts.array_name:
            continue
        md_dir = host.sysfs / "block" / dev.name / "md"
        degraded = sysfs.read_attr(md_dir / "degraded")
        arrays.append({"name": opts.array_name, "device": dev.name,
                       "state": sysfs.read_attr(md_dir / "array_state"),
                       "members": len(dev.slaves),
                       "degraded": int(degraded) if degraded.isdigit() else 0})
    prefix = opts.mount_path.rstrip("/") + "/"
    mounts = []
    for m in read_mountinfo(host.proc_mountinfo):
        if m.mountpoint.startswith(prefix) and m.root == "/":
            total, free = capacity(host.path(m.mountpoint))
            mounts.append({"mountpoint": m.mountpoint, "capacity_bytes": total,
                           "free_bytes": free})
    last = read_last_setup(host) or {}
    return {"arrays": arrays, "mounts": mounts,
            "setup_duration_seconds": last.get("duration_seconds"),
            "setup_converged": last.get("converged")}


def _array_name(host: Host, slaves: tuple[str, ...]) -> str:
    sig = probe_md_member(host, slaves)
    return sig.md.name if sig and sig.md else ""
