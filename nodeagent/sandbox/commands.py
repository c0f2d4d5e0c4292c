"""`nodeagent demo`: the whole prewarm flow on one machine, with nothing to set up.

Starts a throwaway registry and a private containerd under a work dir, pushes a small
image set, writes a sample hot list, then runs `nodeagent prewarm --once` and
`nodeagent images` against the private containerd (as child processes, so their live
progress shows on this terminal) and stops everything. The node's own containerd is
never touched. `--keep` leaves both daemons running; `--stop` stops a kept demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nodeagent.errors import NodeagentError, UsageError
from nodeagent.inputs import Range
from nodeagent.log import fields

if TYPE_CHECKING:
    from nodeagent.sandbox.containerd import PrivateContainerd
    from nodeagent.sandbox.images import BuiltImage, BuiltIndex
    from nodeagent.sandbox.local_registry import LocalRegistry

log = logging.getLogger("nodeagent.demo")

DEFAULT_WORKDIR = Path("/tmp/nodeagent-demo")
MARKER = "nodeagent-demo.json"  # marks a work dir as ours (safe to reset) + kept daemon pids
BENCH_MIB_RANGE = Range(int, 1, 65536)  # the bench set is built on this machine's disk


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo",
        help="run the prewarm flow against a throwaway registry and private containerd",
        description=(
            "Start a local registry and a private containerd (own root and socket; the "
            "node's containerd is not touched), push sample images, write a sample hot "
            "list and prewarm it with live progress. Needs root, containerd and "
            "docker-registry (./.ci/setup installs them)."
        ),
    )
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"where registry, containerd and files live (default {DEFAULT_WORKDIR})")
    p.add_argument("--keep", action="store_true",
                   help="leave registry and containerd running and print how to use them")
    p.add_argument("--stop", action="store_true",
                   help="stop the daemons of a demo started with --keep, then exit")
    p.add_argument("--image-set", choices=["demo", "bench"], default="demo",
                   help="demo: 4 small images (a few MB); bench: 8 images of --bench-mib")
    p.add_argument("--bench-mib", type=BENCH_MIB_RANGE, default=1024, metavar="MIB",
                   help="total compressed size of the bench image set in MiB, "
                        f"{BENCH_MIB_RANGE} (default 1024)")
    p.set_defaults(func=handle_demo)


def handle_demo(args: argparse.Namespace) -> int:
    workdir = args.workdir.absolute()
    if args.stop:
        return stop_kept_demo(workdir)
    prepare_workdir(workdir)
    return run_demo(workdir, args)


# ---------------------------------------------------------------- work dir and kept demos


def _read_marker(workdir: Path) -> dict[str, object] | None:
    try:
        return dict(json.loads((workdir / MARKER).read_text()))
    except (OSError, ValueError):
        return None


def _alive(pid: int, binary: str) -> bool:
    """pid is running *and* is the binary we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return os.path.basename(cmdline) == binary


def _kept_pids(marker: dict[str, object]) -> dict[str, int]:
    pids = marker.get("pids") or {}
    assert isinstance(pids, dict)
    return {name: int(pid) for name, pid in pids.items() if _alive(int(pid), name)}


def prepare_workdir(workdir: Path) -> None:
    """Empty work dir ready for a fresh demo; refuses dirs that are not a demo's own."""
    marker = _read_marker(workdir)
    if marker is not None:
        running = _kept_pids(marker)
        if running:
            raise UsageError(
                f"a demo kept running in {workdir} ({', '.join(running)}); stop it with "
                f"`nodeagent demo --stop --workdir {workdir}` or use another --workdir"
            )
        shutil.rmtree(workdir)  # our own earlier demo: safe to reset
    elif workdir.exists() and any(workdir.iterdir()):
        raise UsageError(
            f"--workdir {workdir} exists and is not a nodeagent demo dir (no {MARKER}); "
            "refusing to use it: pick an empty or new directory"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    _write_marker(workdir, {})


def _write_marker(workdir: Path, pids: dict[str, int]) -> None:
    (workdir / MARKER).write_text(json.dumps({"pids": pids, "created": time.time()}))


def stop_kept_demo(workdir: Path) -> int:
    marker = _read_marker(workdir)
    if marker is None:
        raise UsageError(f"no demo found in {workdir} (no {MARKER})")
    running = _kept_pids(marker)
    # containerd first: it may be talking to the registry.
    for name in sorted(running, key=lambda n: n != "containerd"):
        pid = running[name]
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid, name):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        log.info("stopped", extra=fields(daemon=name, pid=pid))
    _write_marker(workdir, {})
    print(f"demo in {workdir} stopped; remove the directory when you no longer need it")
    return 0


# ---------------------------------------------------------------- the demo itself


def run_demo(workdir: Path, args: argparse.Namespace) -> int:
    from nodeagent.sandbox.containerd import PrivateContainerd
    from nodeagent.sandbox.local_registry import LocalRegistry

    # --keep: the daemons must survive this process, so no parent-death signal.
    registry = LocalRegistry(workdir / "registry", detach=args.keep)
    containerd = PrivateContainerd(workdir / "containerd", detach=args.keep)
    kept = False
    try:
        registry.start()
        log.info("registry started", extra=fields(host=registry.host, log=str(registry.log_file),
                                                  seconds=round(registry.start_time_s or 0, 2)))
        containerd.start()
        log.info("private containerd started", extra=fields(
            address=containerd.address, root=str(containerd.root),
            log=str(containerd.log_file), seconds=round(containerd.start_time_s or 0, 2)))
        images = build_and_push(registry, workdir, args.image_set, args.bench_mib << 20)
        hotlist = write_hotlist(workdir / "hotlist.yaml", registry.host, images)
        log.info("hot list written", extra=fields(file=str(hotlist)))
        globals_ = ["--log-level", args.log_level, "--log-format", args.log_format]
        run_cli(globals_, ["prewarm", "-f", str(hotlist), "--once"], containerd)
        run_cli(globals_, ["images", "-f", str(hotlist)], containerd)
        if args.keep:
            pids = {"docker-registry": registry.pid, "containerd": containerd.pid}
            _write_marker(workdir, {k: v for k, v in pids.items() if v is not None})
            kept = True
            print_keep_help(workdir, registry, containerd, hotlist)
        return 0
    finally:
        if not kept:
            containerd.stop()
            registry.stop()


def build_and_push(
    registry: LocalRegistry, workdir: Path, preset: str, bench_bytes: int
) -> list[BuiltImage | BuiltIndex]:
    from nodeagent.sandbox.images import sample_image_set
    from nodeagent.sandbox.layers import default_cache_dir
    from nodeagent.sandbox.push import push_images

    cache = default_cache_dir() if preset == "bench" else workdir / "layer-cache"
    start = time.monotonic()
    images = sample_image_set(preset, total_size=bench_bytes, cache_dir=cache)
    distinct = {layer.digest: layer.size for i in images for layer in i.layers}
    log.info("images built", extra=fields(
        images=len(images), distinct_mib=round(sum(distinct.values()) / 2**20, 1),
        seconds=round(time.monotonic() - start, 1), cache=str(cache)))
    start = time.monotonic()
    refs = push_images(registry.host, images)
    log.info("images pushed", extra=fields(refs=len(refs),
                                           seconds=round(time.monotonic() - start, 1)))
    return images


def hotlist_yaml(host: str, images: list[BuiltImage | BuiltIndex]) -> str:
    """Two HotImageSets: pinned high-priority serving images, unpinned batch images."""
    half = max(1, len(images) // 2)
    serving, batch = images[:half], images[half:]

    def entries(group: list[BuiltImage | BuiltIndex], required: bool) -> str:
        return "".join(f"    - image: {i.ref(host)}\n"
                       + ("      required: true\n" if required else "")
                       for i in group)

    return (
        "# Sample hot list written by `nodeagent demo`.\n"
        "apiVersion: nodeagent.io/v1alpha1\n"
        "kind: HotImageSet\n"
        "metadata:\n  name: demo-serving\n"
        "spec:\n"
        "  priority: 100        # pulled first\n"
        "  pin: true            # kubelet image GC leaves these alone\n"
        "  nodeSelector: {}     # empty selector: every node\n"
        "  images:\n" + entries(serving, required=True)
        + "---\n"
        "apiVersion: nodeagent.io/v1alpha1\n"
        "kind: HotImageSet\n"
        "metadata:\n  name: demo-batch\n"
        "spec:\n"
        "  priority: 10\n"
        "  pin: false\n"
        "  images:\n" + entries(batch, required=False)
    )


def write_hotlist(path: Path, host: str, images: list[BuiltImage | BuiltIndex]) -> Path:
    path.write_text(hotlist_yaml(host, images))
    return path


def run_cli(global_args: list[str], argv: list[str], containerd: PrivateContainerd) -> None:
    """`python -m nodeagent.cli ...` in the foreground, output straight to the terminal."""
    cmd = [sys.executable, "-m", "nodeagent.cli", *global_args, *argv,
           "--containerd-address", containerd.address]
    log.info(f"running nodeagent {argv[0]}", extra=fields(command=" ".join(cmd[2:])))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise NodeagentError(
            f"`nodeagent {' '.join(argv)}` exited with code {code}; containerd log: "
            f"{containerd.log_file}"
        )


def print_keep_help(workdir: Path, registry: LocalRegistry, containerd: PrivateContainerd,
                    hotlist: Path) -> None:
    print(f"""
Demo left running (work dir {workdir}):
  registry    http://{registry.host}   log {registry.log_file}
  containerd  {containerd.address}   log {containerd.log_file}

Try:
  export NODEAGENT_CONTAINERD_ADDRESS={containerd.address}
  nodeagent images -f {hotlist}
  nodeagent prewarm -f {hotlist} --once
  ctr --address {containerd.address} -n k8s.io images ls

Stop it with:
  nodeagent demo --stop --workdir {workdir}
""")
