"""Prewarm benchmark: nodeagent vs sequential `ctr pull` vs the machine's floor.

Generates the sandbox "bench" image set (default ~1 GiB compressed over 8 images, several
sharing base layers, compressible content) in a local registry, then measures, each
from a fresh containerd root:

  1. sequential `ctr -n k8s.io images pull --plain-http` of every image (what the
     snapshot-builder scripts do);
  2. `nodeagent prewarm --once` of the same set (a subprocess; its peak RSS is polled),
     for each --concurrency value asked;
  3. the floor: read + gunzip + untar every unique layer on all cores (multiprocessing;
     file data is read and discarded), i.e. the CPU work a pull cannot avoid.

Prints wall time, MiB/s (unique compressed bytes / wall time), ratios, nodeagent's peak RSS
and the CPU seconds of the work (containerd incl. its children, or the floor's workers):
on N cores no containerd-based pull can beat (containerd CPU s) / N. Run as root:

    .venv/bin/python bench/prewarm_bench.py [--total-mib 1024] [--concurrency 1,2,3,4]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import sample_image_set
from nodeagent.sandbox.layers import Layer
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.push import push_images

MiB = 1 << 20


@dataclass
class Result:
    mode: str
    wall_s: float
    peak_rss_mib: float | None = None
    cpu_s: float | None = None  # containerd's CPU (ctr, nodeagent) or the floor workers'
    note: str = ""


def unique_layers(images: list) -> list[Layer]:
    seen: dict[str, Layer] = {}
    for image in images:
        for layer in image.layers:
            seen.setdefault(layer.digest, layer)
    return list(seen.values())


def _cpu_s(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return None


def run_ctr(workdir: Path, refs: list[str]) -> Result:
    with PrivateContainerd(workdir / "ctrd-ctr") as ctrd:
        cpu0 = _cpu_s(ctrd.pid)
        start = time.monotonic()
        for ref in refs:
            ctrd.ctr("images", "pull", "--plain-http", ref, timeout=3600)
        wall = time.monotonic() - start
        cpu = _cpu_s(ctrd.pid)
    shutil.rmtree(workdir / "ctrd-ctr", ignore_errors=True)
    return Result("sequential ctr pull", wall, None,
                  None if cpu is None or cpu0 is None else cpu - cpu0)


def hotlist(refs: list[str]) -> str:
    images = "\n".join(f"    - image: {r}" for r in refs)
    return ("apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\nmetadata:\n"
            f"  name: bench\nspec:\n  images:\n{images}\n")


def run_nodeagent(workdir: Path, refs: list[str], concurrency: int,
                  max_downloads: int) -> Result:
    name = f"ctrd-na{concurrency}"
    hot = workdir / "hot.yaml"
    hot.write_text(hotlist(refs))
    with PrivateContainerd(workdir / name, max_concurrent_downloads=max_downloads) as ctrd:
        cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "prewarm",
               "-f", str(hot), "--once", "--progress", "log", "--concurrency", str(concurrency),
               "--high-water", "100", "--containerd-address", ctrd.address]
        cpu0 = _cpu_s(ctrd.pid)
        own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        log = (workdir / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            time.sleep(0.05)
        wall = time.monotonic() - start
        own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        cpu = _cpu_s(ctrd.pid)
        log.close()
        if proc.returncode != 0:
            raise SystemExit(f"nodeagent prewarm failed (exit {proc.returncode}); see "
                             f"{workdir / (name + '.log')}")
    shutil.rmtree(workdir / name, ignore_errors=True)
    return Result(f"nodeagent prewarm (concurrency {concurrency})", wall, peak / MiB,
                  None if cpu is None or cpu0 is None else cpu - cpu0,
                  note=f"nodeagent CPU {own_cpu:.1f}s")


def _decompress(path: str) -> int:
    """gunzip + untar one layer, reading every file's data; returns uncompressed bytes."""
    total = 0
    with gzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                f = tar.extractfile(member)
                while f is not None and (chunk := f.read(1 << 20)):
                    total += len(chunk)
    return total


def run_floor(layers: list[Layer]) -> Result:
    paths = [str(layer.path) for layer in sorted(layers, key=lambda x: -x.size)]
    for p in paths:  # page cache warm, as the registry's blobs are for the pulls
        Path(p).read_bytes()
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    pool = multiprocessing.Pool(os.cpu_count())
    unpacked = sum(pool.map(_decompress, paths, chunksize=1))
    pool.close()
    pool.join()
    wall = time.monotonic() - start
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    return Result(f"floor: gunzip+untar on {os.cpu_count()} cores", wall, cpu_s=cpu,
                  note=f"{unpacked / MiB:.0f} MiB unpacked")


def fastest(results: list[Result]) -> list[Result]:
    """Keep the fastest run of each mode, in first-seen order."""
    best: dict[str, Result] = {}
    for r in results:
        if r.mode not in best or r.wall_s < best[r.mode].wall_s:
            best[r.mode] = r
    return list(best.values())


def table(results: list[Result], compressed: int) -> str:
    ctr = next(r for r in results if r.mode.startswith("sequential"))
    floor = next((r for r in results if r.mode.startswith("floor")), None)
    head = (f"{'mode':<38} {'wall s':>7} {'MiB/s':>7} {'vs ctr':>7} {'floor/this':>10} "
            f"{'peak RSS':>9} {'work CPU s':>10}")
    lines = [head, "-" * len(head)]
    for r in results:
        speed = compressed / MiB / r.wall_s
        vs_ctr = f"{ctr.wall_s / r.wall_s:.2f}x"
        vs_floor = f"{floor.wall_s / r.wall_s:.0%}" if floor else "-"
        rss = f"{r.peak_rss_mib:.0f} MiB" if r.peak_rss_mib else "-"
        cpu = f"{r.cpu_s:.1f}" if r.cpu_s is not None else "-"
        lines.append(f"{r.mode:<38} {r.wall_s:>7.1f} {speed:>7.1f} {vs_ctr:>7} "
                     f"{vs_floor:>10} {rss:>9} {cpu:>10}" + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total-mib", type=int, default=1024,
                    help="distinct compressed bytes of the image set (default 1024)")
    ap.add_argument("--concurrency", default="1,2,3,4",
                    help="nodeagent --concurrency values to measure (default 1,2,3,4)")
    ap.add_argument("--max-concurrent-downloads", type=int, default=3,
                    help="containerd CRI max_concurrent_downloads (default 3, as shipped)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "nodeagent-bench-layers",
                    help="generated layers are cached here between runs")
    ap.add_argument("--workdir", type=Path, help="scratch dir (default: a new temp dir)")
    ap.add_argument("--no-unpigz", action="store_true",
                    help="make containerd use Go's gzip even if unpigz is installed "
                         "(CONTAINERD_DISABLE_PIGZ=1), to measure what pigz brings")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each mode N times and keep the fastest run (the CPU is "
                         "shared: the minimum is the least disturbed measurement)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private containerd needs overlayfs mounts")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nodeagent-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.no_unpigz:
        os.environ["CONTAINERD_DISABLE_PIGZ"] = "1"  # inherited by the containerd daemons

    t0 = time.monotonic()
    images = sample_image_set("bench", total_size=args.total_mib * MiB,
                              cache_dir=args.cache_dir)
    layers = unique_layers(images)
    compressed = sum(layer.size for layer in layers)
    print(f"image set: {len(images)} images, {len(layers)} unique layers, "
          f"{compressed / MiB:.0f} MiB compressed (built/cached in "
          f"{time.monotonic() - t0:.0f}s)", file=sys.stderr)
    results: list[Result] = []
    with LocalRegistry(workdir / "registry") as registry:
        push_images(registry.host, images)
        refs = [image.ref(registry.host) for image in images]
        for _ in range(args.repeat):  # interleaved, so a noisy minute hits every mode
            print("measuring sequential ctr pull ...", file=sys.stderr)
            results.append(run_ctr(workdir, refs))
            for c in concurrencies:
                print(f"measuring nodeagent prewarm --concurrency {c} ...", file=sys.stderr)
                results.append(run_nodeagent(workdir, refs, c, args.max_concurrent_downloads))
            print("measuring the floor ...", file=sys.stderr)
            results.append(run_floor(layers))
    results = fastest(results)
    unpigz = None if args.no_unpigz else shutil.which("unpigz")
    print(f"\n{len(images)} images, {len(layers)} unique layers, {compressed / MiB:.0f} MiB "
          f"compressed; {os.cpu_count()} CPUs; containerd max_concurrent_downloads="
          f"{args.max_concurrent_downloads}; containerd decompresses with "
          f"{'unpigz (' + unpigz + ')' if unpigz else 'Go gzip (no unpigz on PATH)'}")
    print(table(results, compressed))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    shutil.rmtree(workdir, ignore_errors=True) if not args.workdir else None
    return 0


if __name__ == "__main__":
    sys.exit(main())
