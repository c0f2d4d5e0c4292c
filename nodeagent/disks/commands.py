"""`nodeagent disks plan|setup|status`.

Standard library and nodeagent.disks only: this runs at boot on hosts without nodeagent's
Python dependencies, and as the single-file zipapp (python -m nodeagent.disks.zipapp).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Sequence

from nodeagent.disks.options import (
    DEFAULT_ARRAY_NAME,
    DEFAULT_BINDS,
    DEFAULT_CHUNK_KIB,
    DEFAULT_MODEL,
    DEFAULT_MOUNT_PATH,
    SOCI_DIR,
    STRATEGIES,
    Options,
)
from nodeagent.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "disks",
        help="NVMe instance store -> RAID0 volume for containerd and kubelet",
        description=(
            "Turn the node's NVMe instance-store disks into local storage for containerd "
            "and kubelet: one RAID0 (or RAID10) array, or each disk on its own mount point. "
            "EBS volumes, the root disk, disks in use and disks holding data nodeagent did "
            "not write are never touched. On Bottlerocket, delegates to apiclient "
            "ephemeral-storage."
        ),
    )
    sub = p.add_subparsers(dest="disks_command", metavar="ACTION", required=True)
    plan = sub.add_parser("plan", help="show what was found and what setup would do; "
                          "changes nothing",
                          description="Show what was found and what setup would do; "
                          "changes nothing. Exit 0 when setup would go ahead (or has "
                          "nothing to do), exit 3 when setup would refuse (the reasons "
                          "are listed), exit 2 for bad flags or paths.")
    _add_common(plan)
    _add_output(plan)
    plan.set_defaults(func=_plan)
    setup = sub.add_parser("setup", help="apply: array, filesystem, mounts, binds, units "
                           "(idempotent; safe to run on every boot)",
                           description="Apply: array, filesystem, mounts, binds, units "
                           "(idempotent; safe to run on every boot). Exit 0 when done or "
                           "already set up, exit 3 when it refuses (nothing changed), "
                           "exit 2 for bad flags or paths (nothing examined), 1 when a "
                           "step fails.")
    _add_setup(setup)
    setup.set_defaults(func=_setup)
    status = sub.add_parser("status", help="array health, mounts, binds and capacity "
                            "(exit 1 when not healthy)")
    _add_common(status)
    _add_output(status)
    status.set_defaults(func=_status)


def _add_setup(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    _add_output(p)
    p.add_argument("--restart-services", action="store_true",
                   help="stop containerd/kubelet while their directories move, then "
                        "start them again (without it, setup refuses to move a "
                        "directory whose service is running)")


def setup_options(argv: Sequence[str]) -> Options:
    """The Options `nodeagent disks setup ARGV` would use (the agent runs that command in
    a child process and reads its array and mount path); UsageError when ARGV is bad."""
    parser = argparse.ArgumentParser(prog="nodeagent disks setup", add_help=False,
                                     allow_abbrev=False)
    _add_setup(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(list(argv))
    except SystemExit:
        problem = errors.getvalue().strip().splitlines()[-1:] or ["invalid"]
        raise UsageError(f"disks setup arguments {' '.join(argv)!r}: {problem[0]}") from None
    return options_from_args(args)


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES, default="raid0",
                   help="raid0 (default; one disk is used directly), raid10 (4+ disks), "
                        "mount (each disk on its own mount point, no binds), none")
    p.add_argument("--instance-store-model", default=DEFAULT_MODEL, metavar="REGEX",
                   help=f"NVMe model that marks instance store (default '{DEFAULT_MODEL}'; "
                        "matched from the start; QEMU's is 'QEMU NVMe Ctrl')")
    p.add_argument("--mount-path", default=DEFAULT_MOUNT_PATH, metavar="DIR",
                   help=f"volumes are mounted at DIR/0, DIR/1 ... (default "
                        f"{DEFAULT_MOUNT_PATH})")
    p.add_argument("--bind", action="append", dest="binds", metavar="DIR",
                   help="directory to move onto the volume and bind back (repeatable; "
                        f"replaces the default {' '.join(DEFAULT_BINDS)} [+ {SOCI_DIR} "
                        "when present])")
    p.add_argument("--no-binds", action="store_true", help="only make and mount the volume")
    p.add_argument("--filesystem", choices=["xfs", "ext4"], default="xfs",
                   help="for new volumes (default xfs)")
    p.add_argument("--force", action="append", default=[], metavar="DISK",
                   help="allow destroying what this disk holds (partitions, a filesystem or "
                        "RAID member nodeagent did not make); kernel name, /dev path or "
                        "serial; repeatable. Never applies to EBS, root or mounted disks")
    p.add_argument("--disk", action="append", dest="only", default=[], metavar="DISK",
                   help="use only these instance-store disks (repeatable; default: all)")
    p.add_argument("--array-name", default=DEFAULT_ARRAY_NAME, metavar="NAME",
                   help=f"md array name, /dev/md/NAME (default {DEFAULT_ARRAY_NAME}, as the "
                        "EKS AMI: its arrays are reused)")
    p.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_KIB, metavar="KIB",
                   help=f"RAID chunk for new arrays (default {DEFAULT_CHUNK_KIB}; at most 256 "
                        "with XFS, whose log stripe unit follows it)")
    p.add_argument("--units-dir", default="/etc/systemd/system", metavar="DIR",
                   help="where the mount units go (default /etc/systemd/system)")
    p.add_argument("--verify", choices=["content", "metadata"], default="content",
                   help="check moved directories byte for byte (default) or metadata only")


def options_from_args(args: argparse.Namespace) -> Options:
    if args.no_binds and args.binds:
        raise UsageError(f"--no-binds and --bind {' --bind '.join(args.binds)}: choose one "
                         "(--no-binds only makes and mounts the volume; --bind moves a "
                         "directory onto it)")
    binds = () if args.no_binds else tuple(args.binds or DEFAULT_BINDS)
    return Options(
        strategy=args.strategy, instance_store_model=args.instance_store_model,
        mount_path=args.mount_path, binds=binds,
        binds_given=bool(args.binds) or args.no_binds, filesystem=args.filesystem,
        force=tuple(args.force), only=tuple(args.only), array_name=args.array_name,
        chunk_kib=args.chunk_kib, units_dir=args.units_dir,
        restart_services=getattr(args, "restart_services", False), verify=args.verify,
    )


def _emit(args: argparse.Namespace, data: dict[str, object], text: str) -> None:
    if args.output == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def _plan(args: argparse.Namespace) -> int:
    from nodeagent.disks.decisions import SetupRefused
    from nodeagent.disks.discover import gather
    from nodeagent.disks.host import detect_host
    from nodeagent.disks.plan import make_plan
    from nodeagent.disks.report import plan_dict, plan_text

    opts = options_from_args(args)
    facts = gather(detect_host(), opts)
    plan = make_plan(facts, opts)
    _emit(args, plan_dict(plan, facts), plan_text(plan, facts))
    return SetupRefused.exit_code if plan.refusals else 0  # what setup would exit with


def _setup(args: argparse.Namespace) -> int:
    from nodeagent.disks.apply import setup
    from nodeagent.disks.host import detect_host

    opts = options_from_args(args)  # bad input stops before the host is looked at
    result = setup(detect_host(), opts)
    data = result.to_dict()
    done = "\n".join(f"  - {s.describe()}" for s in result.plan.steps)
    text = (f"done in {result.duration_s:.2f} s:\n{done}" if result.changed
            else f"nothing to do: already set up ({result.duration_s:.2f} s)")
    _emit(args, data, text)
    return 0


def _status(args: argparse.Namespace) -> int:
    from nodeagent.disks.host import detect_host
    from nodeagent.disks.report import status_text
    from nodeagent.disks.status import status

    report = status(detect_host(), options_from_args(args))
    _emit(args, report, status_text(report))
    return 0 if report["healthy"] else 1
