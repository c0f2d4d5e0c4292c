"""Fast-pull benchmark: nodeagent's own pull pipeline against containerd's pulls.

Images (pushed to a local registry):
  large  one ~1 GiB image, 4 layers, the largest ~660 MiB; content like real layers
         (text, machine code, random) in files up to 8 MiB;
  multi  the sandbox "bench" set: 8 images, ~1 GiB, several sharing base layers.
Modes, each from a fresh containerd root:
  ctr    `ctr -n k8s.io images pull` of each image in turn (what snapshot builders do);
  cri    `nodeagent prewarm --pull-path cri` (CRI PullImage: nodeagent before the fast path);
  fast   `nodeagent prewarm --pull-path fast`;
  floor  what no pull can avoid: ISA-L decompress + tar extract of every layer, on all
         cores (and, under the network model, the bytes over the allowed bandwidth).
Networks:
  loopback  the registry directly;
  model     through a throttling proxy (its own process) capping each TCP connection
            (default 40 MiB/s) and the total (default 400 MiB/s).
Reports wall s, MiB/s (compressed), ratios, CPU-s (the client: nodeagent incl. its
workers, ctr, or the floor's tools; and containerd) and nodeagent's peak RSS (main
process, and with its workers). Run as root:

    .venv/bin/python bench/pull_bench.py [--images large,multi] [--networks loopback,model]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import build_image, sample_image_set
from nodeagent.sandbox.layers import LayerSpec
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.push import push_images

MiB = 1 << 20
LARGE_LAYERS = (("bench/large-base", 100), ("bench/large-libs", 250),
                ("bench/large-main", 660), ("bench/large-app", 20))


@dataclass
class Result:
    images: str
    network: str
    mode: str
    wall_s: float
    compressed_mib: float
    client_cpu_s: float | None = None  # nodeagent and its workers, ctr, or the floor's tools
    containerd_cpu_s: float | None = None
    peak_rss_mib: float | None = None  # nodeagent's main process
    peak_tree_rss_mib: float | None = None  # with its unpack workers
    walls: list[float] = field(default_factory=list)  # every run's wall time (summaries)

    @property
    def mib_s(self) -> float:
        return self.compressed_mib / self.wall_s


def build_images(which: str, cache: Path) -> list:
    if which == "large":
        specs = [LayerSpec(key, size * MiB) for key, size in LARGE_LAYERS]
        return [build_image("bench/large:1.0", specs, cache_dir=cache)]
    return sample_image_set("bench", total_size=1024 * MiB, cache_dir=cache)


def unique_layers(images: list) -> list:
    seen: dict[str, object] = {}
    for image in images:
        for layer in image.layers:
            seen.setdefault(layer.digest, layer)
    return list(seen.values())


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ctr(workdir: Path, refs: list[str]) -> tuple[float, float, float, None, None]:
    with PrivateContainerd(workdir / "ctrd") as ctrd:
        cpu0, own0, start = _cpu(ctrd.pid), _children_cpu(), time.monotonic()
        for ref in refs:
            ctrd.ctr("images", "pull", "--plain-http", ref, timeout=3600)
        return (time.monotonic() - start, _children_cpu() - own0, _cpu(ctrd.pid) - cpu0,
                None, None)


def hotlist(refs: list[str]) -> str:
    images = "\n".join(f"    - image: {r}" for r in refs)
    return ("apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\nmetadata:\n"
            f"  name: bench\nspec:\n  images:\n{images}\n")


def run_nodeagent(workdir: Path, refs: list[str], path: str, extra: list[str]
                  ) -> tuple[float, float, float, float, float]:
    hot = workdir / "hot.yaml"
    hot.write_text(hotlist(refs))
    with PrivateContainerd(workdir / "ctrd") as ctrd:
        cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "prewarm",
               "-f", str(hot), "--once", "--progress", "log", "--high-water", "100",
               "--pull-path", path, "--containerd-address", ctrd.address, *extra]
        cpu0 = _cpu(ctrd.pid)
        own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        log = (workdir / f"nodeagent-{path}.log").open("w")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak = peak_tree = 0
        ps = psutil.Process(proc.pid)
        worker_cpu: dict[int, float] = {}  # last CPU seen of each child (they exit first)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                own = ps.memory_info().rss
                tree = own
                for child in ps.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        tree += child.memory_info().rss
                        t = child.cpu_times()
                        worker_cpu[child.pid] = t.user + t.system
                peak, peak_tree = max(peak, own), max(peak_tree, tree)
            time.sleep(0.05)
        print(f"  {path}: unpack workers' CPU {sum(worker_cpu.values()):.1f} s "
              f"({len(worker_cpu)} processes)", file=sys.stderr)
        wall = time.monotonic() - start
        own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.close()
        if proc.returncode != 0:
            raise SystemExit(f"nodeagent prewarm --pull-path {path} failed (exit "
                             f"{proc.returncode}); see {log.name}")
        cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
        return wall, cpu, _cpu(ctrd.pid) - cpu0, peak / MiB, peak_tree / MiB


def _extract(blob: str, target: str) -> None:
    """ISA-L decompress piped into tar -x (their CPU shows in RUSAGE_CHILDREN)."""
    os.makedirs(target)
    decompress = subprocess.Popen([sys.executable, "-m", "isal.igzip", "-d", "-c", blob],
                                  stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", target], stdin=decompress.stdout, check=True)
    decompress.wait()


def run_floor(workdir: Path, layers: list) -> tuple[float, float, None, None, None]:
    for layer in layers:  # page cache warm, as the registry's blobs are for the pulls
        layer.path.read_bytes()
    target = workdir / "floor"
    shutil.rmtree(target, ignore_errors=True)
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    ordered = sorted(layers, key=lambda x: -x.size)  # longest first balances the cores
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda x: _extract(str(x[1].path), str(target / str(x[0]))),
                      enumerate(ordered)))
    subprocess.run(["sync"], check=True)  # pulls flush their blobs; count the writes here too
    wall = time.monotonic() - start
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(target, ignore_errors=True)
    return wall, own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime, None, None, None


@contextlib.contextmanager
def network(kind: str, registry_host: str, per_conn: float, total: float):
    """The host:port to pull from: the registry, or a throttling proxy in front of it."""
    if kind == "loopback":
        yield registry_host
        return
    proxy = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.sandbox.throttle_main", registry_host,
         "--per-connection-mibps", str(per_conn), "--total-mibps", str(total)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        url = proxy.stdout.readline().strip()
        yield url.split("://", 1)[-1]
    finally:
        proxy.terminate()
        proxy.wait(10)


def summarize(runs: list[Result]) -> list[Result]:
    """One row per (images, network, mode): the run of median wall time (its CPU), the
    highest peak RSS of all runs, and every wall time (for the spread)."""
    keys = list(dict.fromkeys((r.images, r.network, r.mode) for r in runs))
    rows = []
    for key in keys:
        same = sorted((r for r in runs if (r.images, r.network, r.mode) == key),
                      key=lambda r: r.wall_s)
        row = same[(len(same) - 1) // 2]
        rss = [r.peak_rss_mib for r in same if r.peak_rss_mib]
        tree = [r.peak_tree_rss_mib for r in same if r.peak_tree_rss_mib]
        rows.append(Result(*key, row.wall_s, row.compressed_mib, row.client_cpu_s,
                           row.containerd_cpu_s, max(rss) if rss else None,
                           max(tree) if tree else None, [r.wall_s for r in same]))
    return rows


def table(results: list[Result], per_conn: float, total: float) -> str:
    head = ("| images | network | mode | wall s, median (min-max) | MiB/s | vs ctr | vs cri | "
            "floor/this | client CPU-s | containerd CPU-s | peak RSS (main / +workers) |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        same = [x for x in results if (x.images, x.network) == (r.images, r.network)]
        ctr = next((x for x in same if x.mode == "ctr"), None)
        cri = next((x for x in same if x.mode == "cri"), None)
        floor = next((x for x in same if x.mode.startswith("floor")), None)

        def ratio(base: Result | None, r: Result = r) -> str:
            return f"{base.wall_s / r.wall_s:.2f}x" if base else "-"

        rss = (f"{r.peak_rss_mib:.0f} / {r.peak_tree_rss_mib:.0f} MiB"
               if r.peak_rss_mib else "-")
        na = f"{r.client_cpu_s:.1f}" if r.client_cpu_s is not None else "-"
        ctrd = f"{r.containerd_cpu_s:.1f}" if r.containerd_cpu_s is not None else "-"
        floor_pct = f"{floor.wall_s / r.wall_s:.0%}" if floor else "-"
        spread = (f" ({min(r.walls):.1f}-{max(r.walls):.1f})" if len(r.walls) > 1 else "")
        lines.append(f"| {r.images} | {r.network} | {r.mode} | {r.wall_s:.1f}{spread} | "
                     f"{r.mib_s:.0f} | {ratio(ctr)} | {ratio(cri)} | {floor_pct} | {na} | "
                     f"{ctrd} | {rss} |")
    note = (f"network model: {per_conn:g} MiB/s per connection, {total:g} MiB/s in total "
            "(throttling proxy in its own process); ratios and CPU from the median run, "
            "peak RSS the highest of all runs")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + "\n".join(verdicts(results))


# The targets for the large image on this 2-core machine: (network, baseline mode,
# at least this many times faster); the floor and RSS are checked apart.
TARGETS = (("loopback", "ctr", 3.0), ("loopback", "cri", 2.5), ("model", "cri", 4.0))


def verdicts(rows: list[Result]) -> list[str]:
    def row(net: str, mode: str) -> Result | None:
        return next((r for r in rows if (r.images, r.network, r.mode) == ("large", net, mode)),
                    None)

    out = []
    for net, base_mode, target in TARGETS:
        fast, base = row(net, "fast"), row(net, base_mode)
        if fast and base:
            x = base.wall_s / fast.wall_s
            out.append(f"large, {net}: fast {x:.2f}x {base_mode} (target >= {target:g}x): "
                       f"{'met' if x >= target else 'MISSED'}")
    for net in ("loopback", "model"):
        fast, floor = row(net, "fast"), row(net, "floor")
        if fast and floor:
            x = fast.wall_s / floor.wall_s
            out.append(f"large, {net}: fast {x:.2f}x the floor's time (target <= 1.5x): "
                       f"{'met' if x <= 1.5 else 'MISSED'}")
    peaks = [r.peak_tree_rss_mib for r in rows if r.mode == "fast" and r.peak_tree_rss_mib]
    if peaks:
        out.append(f"nodeagent peak RSS with its unpack workers {max(peaks):.0f} MiB "
                   f"(target <= 150 MiB): {'met' if max(peaks) <= 150 else 'MISSED'}")
    return out


def measure(args: argparse.Namespace, workdir: Path, which: str, net: str, host: str,
            images: list) -> list[Result]:
    refs = [image.ref(host) for image in images]
    layers = unique_layers(images)
    mib = sum(layer.size for layer in layers) / MiB
    out = []
    rounds = [(r, mode) for r in range(args.repeat) for mode in args.modes]  # interleaved
    for round_no, mode in rounds:
        print(f"{which} / {net}: {mode} (run {round_no + 1} of {args.repeat}) ...",
              file=sys.stderr, flush=True)
        subprocess.run(["sync"], check=True)
        if mode == "ctr":
            figures = run_ctr(workdir, refs)
        elif mode in ("cri", "fast"):
            figures = run_nodeagent(workdir, refs, mode, args.nodeagent_args)
        else:
            figures = run_floor(workdir, layers)
            if net == "model":  # the transfer alone takes this long at the total cap
                figures = (max(figures[0], mib / args.total_mibps), *figures[1:])
        shutil.rmtree(workdir / "ctrd", ignore_errors=True)
        out.append(Result(which, net, "floor" if mode == "floor" else mode, figures[0], mib,
                          *figures[1:]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="large,multi")
    ap.add_argument("--networks", default="loopback,model")
    ap.add_argument("--modes", default="ctr,cri,fast,floor",
                    type=lambda s: [m for m in s.split(",") if m])
    ap.add_argument("--per-connection-mibps", type=float, default=40.0)
    ap.add_argument("--total-mibps", type=float, default=400.0)
    ap.add_argument("--nodeagent-args", default="", type=lambda s: s.split(),
                    help="extra flags for nodeagent prewarm, e.g. '--fetch-chunk-mib 8'")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(tempfile.gettempdir()) / "nodeagent-bench-layers")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every mode, interleaved; the table shows the median")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.repeat < 1 or set(args.images.split(",")) - {"large", "multi"}:
        raise SystemExit("--repeat takes 1 or more; --images: large, multi or both")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private containerd needs overlayfs mounts")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nodeagent-pull-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with LocalRegistry(workdir / "registry") as registry:
        for which in args.images.split(","):
            images = build_images(which, args.cache_dir)
            push_images(registry.host, images)
            for net in args.networks.split(","):
                with network(net, registry.host, args.per_connection_mibps,
                             args.total_mibps) as host:
                    results += measure(args, workdir, which, net, host, images)
    version = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
    print(f"\n{os.cpu_count()} CPUs; {version.stdout.strip()}; command: {' '.join(sys.argv)}")
    print(table(summarize(results), args.per_connection_mibps, args.total_mibps))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
