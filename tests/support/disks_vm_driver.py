"""Runs INSIDE the test VM (tests/support/disks_vm.py): drives `nodeagent disks` against real
emulated NVMe disks, real mdadm/mkfs/mount, and records what it observes as JSON.

    python disks_vm_driver.py SCENARIO WORKDIR      (args in WORKDIR/SCENARIO.args.json)

Assertions live in the pytest files on the host; this script only acts and observes, so
a failing check there shows the full observation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU_MODEL = "QEMU NVMe Ctrl"
EBS = "/tmp/ebs"  # the "root volume" of the main scenario: an ext4 NVMe disk, mounted
# (/tmp, not /run: disks setup refuses mount and bind targets in /run, a system tree)


def sh(*argv: str, env: dict | None = None, timeout: float = 600) -> dict:
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr,
            "seconds": round(time.monotonic() - start, 3)}


# The disks-only zipapp under the system python3 (what a node runs at boot): under TCG
# every file a Python start touches costs a 9p round trip, and this is 2-3x quicker than
# the venv's full CLI. WORKDIR/nodeagent.pyz is built by the test before the boot.
PYZ = ""
BARE_PYTHON = "/usr/bin/python3"


def nodeagent(*args: str, env: dict | None = None) -> dict:
    res = sh(BARE_PYTHON, "-I", PYZ, "--log-format", "json", "disks", *args, env=env)
    # 3: refused (plan prints its JSON with the reasons; setup prints nothing)
    if "-o" in args and args[args.index("-o") + 1] == "json" and res["rc"] in (0, 1, 3):
        with contextlib.suppress(ValueError):
            res["json"] = json.loads(res["out"])
    return res


def by_serial(serial: str) -> str:
    return os.path.realpath(f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{serial}")


def wait_for_disks(serials: list[str], timeout: float = 60) -> None:
    sh("udevadm", "settle", "--timeout=60")
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{s}") for s in serials):
        if time.monotonic() > deadline:
            raise RuntimeError(f"disks {serials} did not appear")
        time.sleep(0.2)


def manifest(root: str) -> dict:
    """Everything cp -a must keep, per path: type, mode, owner, size, content hash (data
    ranges), symlink target, xattrs, and which paths share an inode."""
    out: dict = {}
    inodes: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["."] if dirpath == root else []:
            out[name] = _entry(dirpath, inodes, ".")
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            out[rel] = _entry(path, inodes, rel)
    return out


def _entry(path: str, inodes: dict, rel: str) -> dict:
    st = os.lstat(path)
    e = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
         "gid": st.st_gid, "mtime_ns": st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0}
    try:
        e["xattrs"] = {k: os.getxattr(path, k, follow_symlinks=False).hex()
                       for k in sorted(os.listxattr(path, follow_symlinks=False))}
    except OSError:
        e["xattrs"] = {}
    if stat.S_ISLNK(st.st_mode):
        e["link"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        e["size"] = st.st_size
        e["allocated"] = st.st_blocks * 512
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        e["sha256"] = h.hexdigest()
        if st.st_nlink > 1:
            e["inode_group"] = inodes.setdefault(st.st_ino, rel)
    return e


def populate(root: str) -> None:
    """Content that tests everything a copy must keep (like a real containerd root)."""
    base = Path(root)
    (base / "io.containerd.content.v1.content/blobs/sha256").mkdir(parents=True)
    blob = os.urandom(300_000)
    digest = hashlib.sha256(blob).hexdigest()
    (base / f"io.containerd.content.v1.content/blobs/sha256/{digest}").write_bytes(blob)
    (base / "io.containerd.metadata.v1.bolt").mkdir()
    (base / "io.containerd.metadata.v1.bolt/meta.db").write_bytes(os.urandom(65536))
    os.link(base / "io.containerd.metadata.v1.bolt/meta.db", base / "meta.db.hardlink")
    with open(base / "sparse.img", "wb") as f:
        f.write(b"head")
        f.seek(512 << 20)
        f.write(b"middle")
        f.seek(1 << 30)
        f.write(b"tail")
    os.symlink("io.containerd.metadata.v1.bolt/meta.db", base / "meta.link")
    os.mkfifo(base / "fifo")
    snap = base / "io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs"
    snap.mkdir(parents=True)
    os.chown(snap, 1234, 5678)
    os.chmod(snap, 0o2750)
    os.setxattr(snap, "trusted.overlay.opaque", b"y")
    (snap / "etc-passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chown(snap / "etc-passwd", 1234, 5678)
    os.setxattr(snap / "etc-passwd", "user.nodeagent.test", b"kept")
    os.utime(snap / "etc-passwd", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def mdstat() -> str:
    try:
        return Path("/proc/mdstat").read_text()
    except OSError:
        return ""  # md driver not loaded yet: no arrays


def findmnt(path: str) -> dict:
    res = sh("findmnt", "-J", "-o", "SOURCE,TARGET,FSTYPE,OPTIONS", "--mountpoint", path)
    if res["rc"] != 0:
        return {}
    return json.loads(res["out"])["filesystems"][0]


def md_detail(device: str) -> dict:
    res = sh("mdadm", "--detail", "--export", device)
    return dict(line.split("=", 1) for line in res["out"].splitlines() if "=" in line)


def blkid(device: str) -> dict:
    res = sh("blkid", "-p", "-o", "export", device)
    return dict(line.split("=", 1) for line in res["out"].splitlines() if "=" in line)


def units(directory: str) -> dict:
    found = {}
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, directory)
            found[rel] = os.readlink(path) if os.path.islink(path) else Path(path).read_text()
    return found


# ------------------------------------------------------------------ main scenario


MAIN_DIRS = [f"{EBS}/var/lib/containerd", f"{EBS}/var/lib/kubelet", f"{EBS}/var/log/pods"]


def main_args() -> list[str]:
    args = ["--instance-store-model", QEMU_MODEL, "--mount-path", f"{EBS}/mnt/k8s-disks",
            "--units-dir", f"{EBS}/etc/systemd/system"]
    for d in MAIN_DIRS:
        args += ["--bind", d]
    return args


def mount_ebs(serial: str) -> None:
    wait_for_disks([serial])
    os.makedirs(EBS, exist_ok=True)
    res = sh("mount", by_serial(serial), EBS)
    if res["rc"]:
        raise RuntimeError(f"cannot mount the EBS stand-in: {res['err']}")


def observe_main(r: dict, prefix: str) -> None:
    r[f"{prefix}_mdstat"] = mdstat()
    r[f"{prefix}_mount"] = findmnt(f"{EBS}/mnt/k8s-disks/0")
    r[f"{prefix}_binds"] = {d: findmnt(d) for d in MAIN_DIRS}
    r[f"{prefix}_md"] = md_detail("/dev/md/kubernetes")
    r[f"{prefix}_fs"] = blkid("/dev/md/kubernetes")


def scenario_main(work: Path, args: dict) -> dict:
    """One boot of the main node: EBS stand-in + 4 instance-store disks."""
    r: dict = {"phase": args["phase"]}
    mount_ebs(args["ebs"])
    wait_for_disks(args["serials"])
    r["before_mdstat"] = mdstat()
    if args["phase"] == "fresh":
        for d in MAIN_DIRS[:2]:
            os.makedirs(d)
        populate(MAIN_DIRS[0])
        Path(MAIN_DIRS[1], "kubelet_state.json").write_text('{"node": "vm"}')
    r["source_manifest"] = {d: manifest(d) for d in MAIN_DIRS if os.path.isdir(d)}
    r["plan"] = nodeagent("plan", "-o", "json", *main_args())
    r["setup"] = nodeagent("setup", "-o", "json", *main_args())
    observe_main(r, "after")
    r["xfs_log"] = "\n".join(line for line in sh("xfs_info", f"{EBS}/mnt/k8s-disks/0")[
        "out"].splitlines() if line.startswith("log") or "sunit" in line)
    r["bound_manifest"] = {d: manifest(d) for d in MAIN_DIRS if os.path.isdir(d)}
    r["units"] = units(f"{EBS}/etc/systemd/system")
    r["rerun"] = nodeagent("setup", "-o", "json", *main_args())
    r["status"] = nodeagent("status", "-o", "json", *main_args())
    if args["phase"] == "fresh":
        Path(MAIN_DIRS[0], "written-after-setup").write_text("on the array")
    r["readers_agree"] = readers_agree()
    sh("sync")
    return r


READERS = """
import json
from pathlib import Path
from nodeagent.hostfacts import sysfs
direct = sysfs.read_sysfs(Path("/sys"))
udev = sysfs.read_pyudev()
print(json.dumps({"equal": direct == udev, "names": [d.name for d in direct],
                  "nvme_models": sorted({d.model for d in direct if d.is_nvme})}))
"""


def readers_agree() -> dict:
    """pyudev (from the venv) and the direct sysfs reader list the same devices."""
    res = sh(str(REPO / ".venv/bin/python"), "-c", READERS)
    return json.loads(res["out"]) if res["rc"] == 0 else {"error": res["err"]}


# ------------------------------------------------------------------ other scenarios


def run_case(work: Path, name: str, serials: list[str], extra: list[str],
             env: dict | None = None) -> dict:
    base = f"/tmp/t-{name}"
    dirs = [f"{base}/var/lib/containerd", f"{base}/var/lib/kubelet"]
    os.makedirs(dirs[0], exist_ok=True)
    Path(dirs[0], "preloaded").write_text(name)
    args = ["--instance-store-model", QEMU_MODEL, "--mount-path", f"{base}/mnt",
            "--units-dir", f"{base}/units", *extra]
    for s in serials:
        args += ["--disk", s]
    if "mount" not in extra:
        for d in dirs:
            args += ["--bind", d]
    r = {"plan": nodeagent("plan", "-o", "json", *args)}
    r["setup"] = nodeagent("setup", "-o", "json", *args, env=env)
    r["mounts"] = {p: findmnt(p) for p in (f"{base}/mnt/0", f"{base}/mnt/1", *dirs)}
    r["preloaded"] = Path(dirs[0], "preloaded").read_text() if os.path.exists(
        Path(dirs[0], "preloaded")) else None
    r["disks"] = {s: blkid(by_serial(s)) for s in serials}
    r["args"] = args
    return r


def scenario_others(work: Path, args: dict) -> dict:
    wait_for_disks(args["all_serials"])
    r: dict = {}
    # No instance store (default model: QEMU's disks are not "Amazon EC2 ..."): exit 0.
    r["none"] = nodeagent("setup", "-o", "json", "--units-dir", "/tmp/t-none/units",
                          "--mount-path", "/tmp/t-none/mnt")
    r["none_units_dir_exists"] = os.path.exists("/tmp/t-none/units")
    r["none_mdstat"] = mdstat()

    # A disk with someone's ext4 on it: refused, untouched.
    foreign = run_case(work, "foreign", ["FOREIGN1"], [])
    os.makedirs("/run/foreign-check", exist_ok=True)
    sh("mount", "-o", "ro", by_serial("FOREIGN1"), "/run/foreign-check")
    foreign["file_after"] = Path("/run/foreign-check/keep.txt").read_text()
    sh("umount", "/run/foreign-check")
    r["foreign"] = foreign

    # One disk: used directly, no md.
    r["single"] = run_case(work, "single", ["SINGLE1"], [])
    r["single"]["rerun"] = nodeagent("setup", "-o", "json", *r["single"]["args"])

    r["raid10"] = run_case(work, "raid10", [f"R10_{i}" for i in range(1, 5)],
                           ["--strategy", "raid10", "--array-name", "r10"])
    r["raid10"]["md"] = md_detail("/dev/md/r10")
    r["raid10"]["mdstat"] = mdstat()

    r["ext4"] = run_case(work, "ext4", ["EXT1", "EXT2"], ["--filesystem", "ext4",
                                                         "--array-name", "e4"])
    r["ext4"]["fs"] = blkid("/dev/md/e4")
    r["ext4"]["rerun"] = nodeagent("setup", "-o", "json", *r["ext4"]["args"])

    r["mount"] = run_case(work, "mount", ["MNT1", "MNT2"], ["--strategy", "mount"])
    r["mount"]["rerun"] = nodeagent("setup", "-o", "json", *r["mount"]["args"])

    r["killed"] = scenario_killed(work)
    return r


def scenario_killed(work: Path) -> dict:
    """setup SIGKILLed between mdadm --create and mkfs (a fake mkfs.xfs first on PATH
    kills its parent, the real nodeagent process), then run again."""
    fake_bin = Path("/tmp/t-killed-bin")
    fake_bin.mkdir(parents=True, exist_ok=True)
    (fake_bin / "mkfs.xfs").write_text("#!/bin/sh\nkill -KILL $PPID\nsleep 5\nexit 1\n")
    (fake_bin / "mkfs.xfs").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    r = run_case(work, "killed", ["KILL1", "KILL2"], ["--array-name", "kk"], env=env)
    r["mdstat_after_kill"] = mdstat()
    r["md_after_kill"] = md_detail("/dev/md/kk")
    r["fs_after_kill"] = blkid("/dev/md/kk")
    r["plan_again"] = nodeagent("plan", "-o", "json", *r["args"])
    r["setup_again"] = nodeagent("setup", "-o", "json", *r["args"])
    r["fs_after"] = blkid("/dev/md/kk")
    r["mounts_after"] = {p: findmnt(p) for p in ("/tmp/t-killed/mnt/0",
                                                 "/tmp/t-killed/var/lib/containerd")}
    r["rerun"] = nodeagent("setup", "-o", "json", *r["args"])
    return r


SCENARIOS = {"main": scenario_main, "others": scenario_others}


def main() -> None:
    global PYZ
    scenario, work = sys.argv[1], Path(sys.argv[2])
    PYZ = str(work / "nodeagent.pyz")
    args = json.loads((work / f"{scenario}.args.json").read_text())
    os.environ.setdefault("PYTHONPATH", str(REPO))
    start = time.monotonic()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    try:
        results = SCENARIOS[scenario](work, args)
        results["_uptime_at_start"] = uptime
        results["_driver_seconds"] = round(time.monotonic() - start, 1)
    except Exception:
        results = {"driver_error": traceback.format_exc()}
    (work / f"{scenario}.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
