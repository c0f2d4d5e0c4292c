"""The `nodeagent` command line: the edge, with each concern's ``commands`` module.

Each concern registers its own subcommands (``register(subparsers)`` in its
``commands`` module) and turns its flags into one typed options object; nothing below
the edge imports this module or a ``commands`` module. Those modules import only light
modules at import time and load heavy dependencies (grpc, lightkube, boto3) inside the
handlers, so ``nodeagent disks`` runs on a host that has none of them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from nodeagent import __version__
from nodeagent.errors import NodeagentError
from nodeagent.inputs import StrictParser
from nodeagent.log import redact_text, setup_logging

# Modules providing register(subparsers). Kept as names so a missing optional concern
# (e.g. the disks-only zipapp) does not break the others.
COMMAND_MODULES = (
    "nodeagent.prewarm.commands",
    "nodeagent.disks.commands",
    "nodeagent.snapshot.commands",
    "nodeagent.models.commands",
    "nodeagent.agent.commands",
    "nodeagent.sandbox.commands",
)

log = logging.getLogger("nodeagent")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = StrictParser(  # no abbreviated options, in every subcommand too
        prog="nodeagent",
        description="Node agent that makes AI/ML workloads start fast on Kubernetes nodes.",
    )
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format", choices=["auto", "json", "text"], default="auto",
        help="json lines (default when stderr is not a terminal) or short text lines",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("nodeagent"):
                continue  # concern not shipped in this build (e.g. the disks zipapp)
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, modules: Sequence[str] = COMMAND_MODULES) -> int:
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    json_format = {"auto": None, "json": True, "text": False}[args.log_format]
    setup_logging(args.log_level, json_format)
    try:
        return int(args.func(args) or 0)
    except NodeagentError as exc:
        print(f"nodeagent: error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nodeagent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
