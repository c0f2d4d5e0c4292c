"""Human and JSON renderings of a plan and of a status report."""

from __future__ import annotations

from nodeagent.disks.decisions import Plan
from nodeagent.disks.model import Facts


def plan_dict(plan: Plan, facts: Facts) -> dict[str, object]:
    disks = {d.name: d for d in facts.disks}
    return {
        "strategy": plan.strategy,
        "discovery": facts.discovery,
        "bottlerocket": plan.bottlerocket,
        "converged": plan.converged,
        "disks": [{
            "name": d.disk, "model": disks[d.disk].model, "serial": disks[d.disk].serial,
            "size_bytes": disks[d.disk].size_bytes, "used": d.used, "reason": d.reason,
            "blocking": d.blocking,
            "signature": facts.signatures[d.disk].describe()
            if d.disk in facts.signatures else None,
        } for d in plan.decisions],
        "volumes": [v.__dict__ | {"members": list(v.members)} for v in plan.volumes],
        "binds": [b.__dict__ for b in plan.binds],
        "steps": [s.to_dict() for s in plan.steps],
        "refusals": plan.refusals,
        "notes": plan.notes,
    }


def plan_text(plan: Plan, facts: Facts) -> str:
    disks = {d.name: d for d in facts.disks}
    lines = [f"strategy: {plan.strategy}  (disks listed through {facts.discovery})", "",
             "disks:"]
    for d in plan.decisions:
        disk = disks[d.disk]
        mark = "use " if d.used else ("STOP" if d.blocking else "skip")
        size = f"{disk.size_bytes / 2**30:.1f} GiB"
        lines.append(f"  {mark} /dev/{d.disk:<10} {size:>10}  {disk.model or '-'}"
                     f" ({disk.serial or '-'}): {d.reason}")
    if not plan.decisions:
        lines.append("  (no disks)")
    for v in plan.volumes:
        what = f"{v.level} over {', '.join(v.members)}" if v.kind == "md" else v.members[0]
        fs = f"{v.fstype} {v.fs_uuid}" if v.fs_uuid else "new filesystem"
        lines.append(f"volume {v.index}: {v.mountpoint} <- {what} ({fs}"
                     f"{', mounted' if v.mounted else ''})")
    for b in plan.binds:
        lines.append(f"bind {b.path} -> {b.target}: {b.state}"
                     + (f" ({b.reason})" if b.reason else ""))
    lines += [f"note: {n}" for n in plan.notes]
    if plan.refusals:
        lines += ["", "setup would REFUSE (nothing would change):"]
        lines += [f"  - {r}" for r in plan.refusals]
    elif plan.steps:
        lines += ["", "setup would:"]
        lines += [f"  {i}. {s.describe()}" for i, s in enumerate(plan.steps, 1)]
    elif not plan.notes:  # the notes already say why (e.g. no instance-store disks)
        lines += ["", "nothing to do: already set up"]
    return "\n".join(lines)


def status_text(report: dict[str, object]) -> str:
    lines = [f"healthy: {'yes' if report['healthy'] else 'NO'}   converged: "
             f"{'yes' if report['converged'] else 'no'}   strategy: {report['strategy']}"]
    for a in report["arrays"]:  # type: ignore[attr-defined]
        lines.append(f"array {a['device']} '{a['name']}': {a['level']} {a['state']}, "
                     f"{len(a['members'])}/{a['raid_disks']} members"
                     + (f", DEGRADED ({a['degraded']} missing)" if a["degraded"] else ""))
    for v in report["volumes"]:  # type: ignore[attr-defined]
        cap = ""
        if "capacity_bytes" in v:
            cap = (f", {v['free_bytes'] / 2**30:.1f} of {v['capacity_bytes'] / 2**30:.1f} "
                   "GiB free")
        lines.append(f"volume {v['volume']} {v['mountpoint']}: {v['fstype'] or '-'} on "
                     f"{v['device'] or '-'} {'mounted' if v['mounted'] else 'NOT mounted'}"
                     f"{cap}")
    for b in report["binds"]:  # type: ignore[attr-defined]
        lines.append(f"bind {b['path']}: {b['state']}" + (f" ({b['detail']})"
                                                            if b["detail"] else ""))
    lines += [f"pending: {p}" for p in report["pending"]]  # type: ignore[attr-defined]
    lines += [f"refused: {r}" for r in report["refusals"]]  # type: ignore[attr-defined]
    last = report.get("last_setup")
    if isinstance(last, dict):
        lines.append(f"last setup: {last.get('duration_seconds')} s, changed="
                     f"{last.get('changed')}")
    return "\n".join(lines)
