"""Hydration benchmark: hot-set-first `nodeagent hydrate` vs a plain sequential full read.

A node booted from an EBS snapshot pays a first-read penalty on every block. The usual
answer is reading the whole device (`dd`, or FSR / an initialization rate, both paid);
nodeagent reads the hot images' files first. This measures, on this machine:

  1. `dd if=<device> of=/dev/null bs=1M iflag=direct`: the whole device, sequentially;
  2. `nodeagent hydrate --image ...` of the hot set only (a subprocess, -o json);
  3. `nodeagent hydrate --image ... --full-device`: hot set first, then the whole device;
  4. `nodeagent hydrate` of every image (all of containerd's data, no device pass).

Set-up: the sandbox "bench" image set (8 images sharing base layers) in a local registry,
pulled through CRI into a private containerd whose root is on an XFS filesystem on a loop
device backed by a sparse file on this machine's disk; a filler file brings the
filesystem to --fill-percent used (other pods' data), so the device read reads real
blocks. Before every run: `sync; echo 3 > /proc/sys/vm/drop_caches` (root needed; without
it the script says so and unmounts/remounts the filesystem instead, which drops that
filesystem's cached pages, with the loop device in direct-I/O mode).

The local disk reads at GB/s, far faster than a volume restored from a snapshot, whose
first reads come from S3. To model that, every run's reads of the loop device are
throttled by the kernel (cgroup v1 blkio.throttle.read_bps_device) to --throttle-mibps
(default 64 MiB/s; 0 = the bare local disk). That models first-read throughput only, not
EBS's per-request latency, and free space costs time here while EBS returns blocks that
were never written without fetching them (hence --fill-percent). Run as root:

    .venv/bin/python bench/hydrate_bench.py [--total-mib 1024] [--device-mib 6144]
        [--hot vllm:0.5,api:1.4] [--throttle-mibps 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nodeagent.containerd.client import ContainerdClient
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import sample_image_set
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.push import push_images

MiB = 1 << 20


@dataclass
class Run:
    name: str
    seconds: float  # wall time of the whole command
    read_bytes: int
    hot_seconds: float | None = None  # when the hot set was done (hydrate runs)
    hot_bytes: int | None = None


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class Disk:
    """Sparse file -> loop device -> XFS, mounted; drops caches between runs."""

    def __init__(self, workdir: Path, size_mib: int) -> None:
        self.image = workdir / "volume.img"
        self.mount = workdir / "volume"
        self.mount.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mib * MiB)
        sh("mkfs.xfs", "-q", "-f", str(self.image))
        self.can_drop = self._try_drop()
        direct = [] if self.can_drop else ["--direct-io=on"]
        self.device = sh("losetup", "--find", "--show", *direct, str(self.image))
        sh("mount", self.device, str(self.mount))

    @staticmethod
    def _try_drop() -> bool:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return True
        except OSError:
            return False

    def drop_caches(self) -> None:
        if self.can_drop and self._try_drop():
            return
        # Fallback: remounting drops this filesystem's cached pages and inodes.
        sh("umount", str(self.mount))
        sh("mount", self.device, str(self.mount))

    def used_bytes(self) -> int:
        st = os.statvfs(self.mount)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def size_bytes(self) -> int:
        return int(sh("blockdev", "--getsize64", self.device))

    def close(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)
        subprocess.run(["losetup", "-d", self.device], check=False)
        self.image.unlink(missing_ok=True)


class Throttle:
    """A blkio cgroup (v1) capping reads of one block device; commands run inside it."""

    ROOT = Path("/sys/fs/cgroup/blkio")

    def __init__(self, device: str, mib_per_s: float) -> None:
        self.group: Path | None = None
        if mib_per_s <= 0:
            return
        if not (self.ROOT / "blkio.throttle.read_bps_device").exists():
            raise SystemExit("hydrate_bench: no cgroup v1 blkio controller here; pass "
                             "--throttle-mibps 0 to measure the bare local disk")
        rdev = os.stat(device).st_rdev
        self.group = self.ROOT / f"nodeagent-hydrate-bench-{os.getpid()}"
        self.group.mkdir()
        (self.group / "blkio.throttle.read_bps_device").write_text(
            f"{os.major(rdev)}:{os.minor(rdev)} {int(mib_per_s * MiB)}\n")

    def enter(self) -> None:
        """preexec_fn: move the child into the group before it execs."""
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        if self.group is not None:
            self.group.rmdir()


async def pull_all(address: str, refs: list[str]) -> None:
    async with ContainerdClient(address) as client:
        for ref in refs:
            await client.pull_image(ref)


def fill(disk: Disk, percent: float) -> int:
    """Write incompressible data until the filesystem is `percent` used."""
    st = os.statvfs(disk.mount)
    total = st.f_blocks * st.f_frsize
    want = int(total * percent / 100) - disk.used_bytes()
    if want <= 0:
        return 0
    block = os.urandom(4 * MiB)
    written = 0
    with open(disk.mount / "cold-data.bin", "wb") as f:
        while written < want:
            f.write(block[: min(len(block), want - written)])
            written += min(len(block), want - written)
    os.sync()
    return written


def run_dd(disk: Disk, throttle: Throttle) -> Run:
    disk.drop_caches()
    start = time.monotonic()
    subprocess.run(["dd", f"if={disk.device}", "of=/dev/null", "bs=1M", "iflag=direct",
                    "status=none"], check=True, preexec_fn=throttle.enter)
    return Run("dd full device (sequential, 1 MiB, O_DIRECT)", time.monotonic() - start,
               disk.size_bytes())


def run_hydrate(name: str, disk: Disk, throttle: Throttle, ctrd: PrivateContainerd,
                images: list[str], full_device: bool) -> Run:
    disk.drop_caches()
    cmd = [sys.executable, "-m", "nodeagent.cli", "--log-level", "warning", "hydrate",
           "--containerd-address", ctrd.address, "--containerd-root", str(ctrd.root),
           "--progress", "log", "-o", "json"]
    for ref in images:
        cmd += ["--image", ref]
    if full_device:
        cmd += ["--full-device", disk.device]
    start = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         preexec_fn=throttle.enter).stdout
    wall = time.monotonic() - start
    report = json.loads(out)
    hot, device = report["hot"], report["device"]
    total = hot["bytes"] + (device["bytes"] if device else 0)
    # hot["seconds"] counts from the first read; add the start-up (process, containerd
    # queries, directory walk) to get "hot set ready after" in wall-clock terms.
    setup = wall - hot["seconds"] - (device["seconds"] if device else 0)
    return Run(name, wall, total, hot_seconds=setup + hot["seconds"], hot_bytes=hot["bytes"])


def median_run(runs: list[Run]) -> Run:
    best = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    if best.hot_seconds is not None:
        best.hot_seconds = statistics.median(r.hot_seconds or 0.0 for r in runs)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total-mib", type=int, default=1024,
                    help="compressed size of the bench image set (default 1024)")
    ap.add_argument("--device-mib", type=int, default=6144, help="volume size (default 6144)")
    ap.add_argument("--fill-percent", type=float, default=90.0,
                    help="fill the filesystem to this much used with cold data (default 90)")
    ap.add_argument("--throttle-mibps", type=float, default=64.0,
                    help="cap the device's read rate, modelling a restored EBS volume's first "
                         "reads (default 64; 0: no cap)")
    ap.add_argument("--hot", default="vllm:0.5,api:1.4",
                    help="comma-separated bench image names forming the hot set")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; median reported")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "nodeagent-bench-layers")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("hydrate_bench: run as root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="nodeagent-hydrate-bench-"))
    images = sample_image_set("bench", total_size=args.total_mib * MiB,
                              cache_dir=args.cache_dir)
    disk = Disk(workdir, args.device_mib)
    throttle = Throttle(disk.device, args.throttle_mibps)
    try:
        with LocalRegistry(workdir / "registry") as registry, \
                PrivateContainerd(workdir / "ctrd", root=disk.mount / "containerd") as ctrd:
            push_images(registry.host, images)
            refs = [image.ref(registry.host) for image in images]
            asyncio.run(pull_all(ctrd.address, refs))
            containerd_bytes = disk.used_bytes()
            filler = fill(disk, args.fill_percent)
            wanted = {name.strip() for name in args.hot.split(",")}
            hot = [r for r in refs if r.rsplit("/", 1)[-1] in wanted]
            if len(hot) != len(wanted):
                print(f"hydrate_bench: --hot {args.hot}: unknown names; images are "
                      f"{[r.rsplit('/', 1)[-1] for r in refs]}", file=sys.stderr)
                return 2
            runs = [
                ("dd", lambda: run_dd(disk, throttle)),
                ("hot", lambda: run_hydrate("nodeagent hydrate: hot set", disk, throttle,
                                            ctrd, hot, False)),
                ("hot+device", lambda: run_hydrate(
                    "nodeagent hydrate: hot set, then --full-device", disk, throttle, ctrd,
                    hot, True)),
                ("all", lambda: run_hydrate("nodeagent hydrate: all images", disk, throttle,
                                            ctrd, refs, False)),
            ]
            results = [median_run([fn() for _ in range(args.repeat)]) for _, fn in runs]
            report(args, disk, containerd_bytes, filler, hot, results)
    finally:
        throttle.close()
        disk.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(args: argparse.Namespace, disk: Disk, containerd_bytes: int, filler: int,
           hot: list[str], results: list[Run]) -> None:
    cache = "drop_caches before each run" if disk.can_drop else (
        "no drop_caches permission: remount before each run, loop device in direct-I/O mode")
    cap = (f"reads capped at {args.throttle_mibps:g} MiB/s (blkio throttle)"
           if args.throttle_mibps > 0 else "bare local disk")
    print(f"device {disk.size_bytes() / MiB:.0f} MiB (loop on a sparse file, XFS, {cap}), "
          f"containerd data {containerd_bytes / MiB:.0f} MiB, cold filler {filler / MiB:.0f} "
          f"MiB; hot set {', '.join(r.rsplit('/', 1)[-1] for r in hot)}; {cache}; "
          f"median of {args.repeat}")
    print(f"{'run':<48} {'wall s':>8} {'MiB read':>9} {'MiB/s':>7} {'hot ready s':>12}")
    for r in results:
        rate = r.read_bytes / MiB / r.seconds if r.seconds else 0.0
        ready = f"{r.hot_seconds:.2f}" if r.hot_seconds is not None else "-"
        print(f"{r.name:<48} {r.seconds:>8.2f} {r.read_bytes / MiB:>9.0f} {rate:>7.0f} "
              f"{ready:>12}")
    dd, hot_only = results[0], results[1]
    assert hot_only.hot_seconds is not None and hot_only.hot_bytes is not None
    print(f"hot set ({hot_only.hot_bytes / MiB:.0f} MiB) ready after {hot_only.hot_seconds:.2f}"
          f" s = {hot_only.hot_seconds / dd.seconds:.0%} of the full sequential device read "
          f"({dd.seconds:.2f} s), which a whole-device pass needs before the hot data is "
          "known to be read")


if __name__ == "__main__":
    sys.exit(main())
