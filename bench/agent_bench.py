"""Agent benchmark: idle footprint with 50 hot images, and HotImageSet change -> PullImage.

Runs the real ``nodeagent agent`` process against a real private containerd and a real
local registry; the Kubernetes API is tests/support/kubeapi/, a TEST DOUBLE of the API server
speaking the real list/watch protocol (no Kubernetes API server can be installed here).

1. pushes 50 small images (own layers) to the registry, creates the Node and one
   HotImageSet listing them, starts the agent and waits until all 50 are present
   (node condition ImagesPrewarmed=True);
2. idles for --idle seconds with the watches open: RSS (current and peak) and CPU
   (user+system) of the agent process, as a share of one core;
3. --changes times: pushes a fresh image, adds it to the set, and measures the time from
   the API write to containerd logging the CRI ``PullImage`` call for it.

Targets: RSS <= 64 MiB, idle CPU < 0.5 % of a core, change -> PullImage < 1 s. Run as root:

    .venv/bin/python bench/agent_bench.py [--images 50] [--idle 60] [--changes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.kubeapi import KubeApiDouble  # noqa: E402  (the test double lives with the tests)

from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA  # noqa: E402
from nodeagent.sandbox.containerd import PrivateContainerd  # noqa: E402
from nodeagent.sandbox.images import build_image  # noqa: E402
from nodeagent.sandbox.layers import LayerSpec  # noqa: E402
from nodeagent.sandbox.local_registry import LocalRegistry  # noqa: E402
from nodeagent.sandbox.push import push_images  # noqa: E402

MiB = 1 << 20
GROUP = "nodeagent.io"
_PULL_LINE = re.compile(r'time="([^"]+)" level=info msg="PullImage \\"([^\\]+)\\""')


def push_small_images(host: str, count: int, prefix: str, cache: Path) -> list[str]:
    images = [build_image(f"bench-agent/{prefix}-{i}:1",
                          [LayerSpec(f"agent-bench/{prefix}/{i}/{uuid.uuid4().hex}", 32 << 10)],
                          cache_dir=cache) for i in range(count)]
    push_images(host, images)
    return [image.ref(host) for image in images]


def hot_set(refs: list[str]) -> dict:
    return {"apiVersion": "nodeagent.io/v1alpha1", "kind": "HotImageSet",
            "metadata": {"name": "bench"},
            "spec": {"images": [{"image": r} for r in refs]}}


def condition(api: KubeApiDouble) -> dict:
    node = api.get("nodes", "bench-node") or {}
    return next((c for c in node.get("status", {}).get("conditions", [])
                 if c["type"] == "ImagesPrewarmed"), {})


def wait(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def pull_times(log_file: Path) -> dict[str, float]:
    """First PullImage log time (epoch seconds) per reference, from containerd's log."""
    out: dict[str, float] = {}
    for match in _PULL_LINE.finditer(log_file.read_text(errors="replace")):
        stamp, ref = match.groups()
        # containerd logs nanoseconds; datetime takes microseconds
        stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
        out.setdefault(ref, datetime.fromisoformat(stamp).timestamp())
    return out


def start_agent(api: KubeApiDouble, ctrd: PrivateContainerd, log_path: Path
                ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nodeagent.cli", "--log-format", "json", "agent",
           "--server", api.url, "--node-name", "bench-node",
           "--containerd-address", ctrd.address, "--metrics-port", "0",
           "--metrics-host", "127.0.0.1", "--startup-taint", "",
           "--credential-provider-config", str(log_path.parent / "none.json")]
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def idle_footprint(proc: psutil.Process, seconds: float) -> dict[str, float]:
    cpu0, t0 = proc.cpu_times(), time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.5)
    cpu1, elapsed = proc.cpu_times(), time.monotonic() - t0
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"idle_s": round(elapsed, 1), "cpu_s": round(used, 3),
            "cpu_percent_of_core": round(100 * used / elapsed, 3),
            "rss_mib": round(proc.memory_info().rss / MiB, 1),
            "peak_rss_mib": round(peak / MiB, 1)}


def change_latencies(api: KubeApiDouble, registry: LocalRegistry, ctrd: PrivateContainerd,
                     refs: list[str], changes: int, cache: Path) -> list[float]:
    latencies = []
    for n in range(changes):
        [ref] = push_small_images(registry.host, 1, f"change{n}", cache)
        time.sleep(1.0)  # let the agent settle: measure a cold change, not a burst
        written = time.time()
        api.update("hotimagesets", "bench", lambda o, ref=ref: o["spec"]["images"].append(
            {"image": ref}), group=GROUP)
        wait(lambda ref=ref: ref in pull_times(ctrd.log_file), 30, f"PullImage of {ref}")
        latencies.append(pull_times(ctrd.log_file)[ref] - written)
        refs.append(ref)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--changes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        work = Path(tmp)
        with LocalRegistry(work / "registry") as registry, \
                PrivateContainerd(work / "ctrd") as ctrd, \
                KubeApiDouble(crd_schema=HOTIMAGESET_OBJECT_SCHEMA) as api:
            result = run(args, work, registry, ctrd, api)
    print(json.dumps(result, indent=2))
    return 0


def run(args: argparse.Namespace, work: Path, registry: LocalRegistry,
        ctrd: PrivateContainerd, api: KubeApiDouble) -> dict:
    cache = work / "layers"
    refs = push_small_images(registry.host, args.images, "hot", cache)
    api.create("nodes", {"metadata": {"name": "bench-node", "labels": {}}, "spec": {},
                         "status": {"conditions": []}})
    api.create("hotimagesets", hot_set(refs), group=GROUP)
    proc = start_agent(api, ctrd, work / "agent.log")
    try:
        agent = psutil.Process(proc.pid)
        warm = wait(lambda: condition(api).get("message", "").startswith(
            f"{args.images}/{args.images} ") and condition(api).get("status") == "True",
            600, "all hot images present")
        time.sleep(2.0)  # the last pins and the status patch settle
        idle = idle_footprint(agent, args.idle)
        latencies = change_latencies(api, registry, ctrd, refs, args.changes, cache)
        requests = len(api.requests)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
    return {
        "images": args.images, "warm_up_s": round(warm, 1), **idle,
        "change_to_pullimage_s": {
            "samples": [round(x, 3) for x in latencies],
            "median": round(statistics.median(latencies), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "api_requests_total": requests,
        "exit_code": proc.returncode,
        "targets": {"rss_mib": 64, "idle_cpu_percent": 0.5, "change_to_pullimage_s": 1.0},
    }


if __name__ == "__main__":
    sys.exit(main())
