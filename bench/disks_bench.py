"""Benchmark `nodeagent disks setup` in a QEMU VM (TCG) on 4 fresh NVMe disks.

    .venv/bin/python bench/disks_bench.py [--disk-gib 4] [--data-mib 256] [--json OUT]

Boots this host's kernel with virtme-ng and 4 sparse NVMe images plus an ext4 "root
volume" stand-in holding a containerd-like directory of --data-mib, then runs the
disks-only zipapp under the system python3, as the boot service does:
1. a fresh `disks setup` (mdadm --create, mkfs.xfs, mount, copy + check, bind, units);
2. the idempotent re-run.
For each it reports the process wall time, the in-process setup time and its breakdown:
time in mdadm, mkfs, the copy (cp) and its check, udev waits, mount, discovery, and the
rest (our own code). Everything runs under TCG emulation, which is far slower than a real
CPU: the guest's `python3 -c pass` and a fixed CPU loop are timed in the VM and on the host
to give the slowdown factor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
LOOP = "s=0\nfor i in range(3_000_000): s+=i*i\n"

GUEST = r'''
import json, os, subprocess, sys, time
work, pyz = sys.argv[1], sys.argv[2]
def run(*argv):
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True)
    return {"rc": p.returncode, "wall": time.monotonic() - t, "out": p.stdout, "err": p.stderr}
subprocess.run(["udevadm", "settle"])
ebs = os.path.realpath("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_EBSROOT")
os.makedirs("/tmp/ebs", exist_ok=True)
subprocess.run(["mount", ebs, "/tmp/ebs"], check=True)
args = ["--log-format", "json", "disks", "setup", "-o", "json",
        "--instance-store-model", "QEMU NVMe Ctrl", "--mount-path", "/tmp/ebs/mnt/k8s-disks",
        "--units-dir", "/tmp/ebs/etc/systemd/system",
        "--bind", "/tmp/ebs/var/lib/containerd", "--bind", "/tmp/ebs/var/lib/kubelet"]
r = {"python_pass": run("/usr/bin/python3", "-I", "-c", "pass")["wall"]}
t = time.monotonic(); exec(compile(LOOP_SRC, "loop", "exec")); r["cpu_loop"] = time.monotonic() - t
r["fresh"] = run("/usr/bin/python3", "-I", pyz, *args)
r["rerun"] = run("/usr/bin/python3", "-I", pyz, *args)
r["rerun2"] = run("/usr/bin/python3", "-I", pyz, *args)
for k in ("fresh", "rerun", "rerun2"):
    r[k]["result"] = json.loads(r[k]["out"]) if r[k]["rc"] == 0 else None
json.dump(r, open(os.path.join(work, "bench.json"), "w"))
'''


def make_disk(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def root_volume(path: Path, data_mib: int, tmp: Path) -> None:
    """ext4 image with /var/lib/containerd holding data_mib of files (like pulled layers)."""
    src = tmp / "content"
    blobs = src / "var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
    blobs.mkdir(parents=True)
    (src / "var/lib/kubelet").mkdir(parents=True)
    for i in range(max(1, data_mib // 8)):
        (blobs / f"{i:064x}").write_bytes(os.urandom(8 << 20))
    make_disk(path, max(2, data_mib // 256 + 2) << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(path)], check=True)


def host_loop_seconds() -> float:
    start = time.monotonic()
    exec(compile(LOOP, "loop", "exec"))
    return time.monotonic() - start


def breakdown(result: dict, wall: float) -> dict:
    timings = dict(result["timings_seconds"])
    total = result["duration_seconds"]
    external = sum(v for k, v in timings.items()
                   if k not in ("discover", "copy-check", "converge-check"))
    ours = total - external
    return {"process_wall_s": round(wall, 2), "setup_s": total,
            "python_startup_and_import_s": round(wall - total, 2),
            "our_code_s": round(ours, 2), **{f"{k}_s": round(v, 2) for k, v in timings.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk-gib", type=int, default=4)
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from support.disks_vm import shared_base  # the VM shares only some host paths

    work_base = shared_base() / "bench"
    work_base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_s, tempfile.TemporaryDirectory(
            dir=work_base) as work_s:
        tmp, work = Path(tmp_s), Path(work_s)
        subprocess.run([str(VENV_BIN / "python"), "-m", "nodeagent.disks.zipapp",
                        str(work / "nodeagent.pyz")], check=True, capture_output=True)
        (work / "guest.py").write_text(GUEST.replace("LOOP_SRC", repr(LOOP)))
        root_volume(tmp / "ebs.img", args.data_mib, tmp)
        drives = [("EBSROOT", tmp / "ebs.img")]
        for i in range(1, 5):
            make_disk(tmp / f"d{i}.img", args.disk_gib << 30)
            drives.append((f"AWS{i}", tmp / f"d{i}.img"))
        qemu = " ".join(f"-drive file={p},if=none,id=d{i},format=raw,cache=unsafe "
                        f"-device nvme,serial={s},drive=d{i}" for i, (s, p) in enumerate(drives))
        kernel = sorted(Path("/boot").glob("vmlinuz-*-amd64"))[-1]
        cmd = [str(VENV_BIN / "vng"), "--run", str(kernel), "--disable-kvm", "--rw",
               "--memory", "1G", f"--qemu-opts={qemu}", "--exec",
               f"/usr/bin/python3 -I {work / 'guest.py'} {work} {work / 'nodeagent.pyz'} "
               f"> {work / 'guest.log'} 2>&1"]
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=1800,
                       stdin=subprocess.DEVNULL)
        raw = json.loads((work / "bench.json").read_text())
    for key in ("fresh", "rerun", "rerun2"):
        if raw[key]["result"] is None:
            print(f"{key} failed: {raw[key]['err'][-2000:]}", file=sys.stderr)
            return 1
    host_loop = host_loop_seconds()
    report = {
        "disks": f"4 x {args.disk_gib} GiB NVMe (sparse), raid0 + xfs",
        "data_moved_mib": args.data_mib,
        "tcg_slowdown_cpu_loop": round(raw["cpu_loop"] / host_loop, 1),
        "guest_python_startup_s": round(raw["python_pass"], 2),
        "fresh": breakdown(raw["fresh"]["result"], raw["fresh"]["wall"]),
        "rerun": breakdown(raw["rerun"]["result"], raw["rerun"]["wall"]),
        "rerun_again": breakdown(raw["rerun2"]["result"], raw["rerun2"]["wall"]),
        "rerun_changed": raw["rerun"]["result"]["changed"],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
