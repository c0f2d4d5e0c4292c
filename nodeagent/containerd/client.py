"""Public API of nodeagent's containerd client.

Importing this module is cheap (standard library only): the error types, dataclasses
and ``add_address_argument`` are defined in ``model``; ``ContainerdClient`` lives in
``grpc_client`` and is imported (with grpcio and the generated stubs) on first access,
so CLI command modules can use this module at import time.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import TYPE_CHECKING, Any

from nodeagent.containerd.model import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_NAMESPACE,
    IMAGE_TOPICS,
    PULL_REASONS,
    AuthConfig,
    ContainerdError,
    ContainerdTooOld,
    ContainerdUnavailable,
    CriImage,
    FsUsage,
    ImageEvent,
    ImagePullError,
    ImageRecord,
    IngestStatus,
    VersionInfo,
)

if TYPE_CHECKING:
    from nodeagent.containerd.grpc_client import ContainerdClient

__all__ = [
    "ADDRESS_ENV", "DEFAULT_ADDRESS", "DEFAULT_NAMESPACE", "IMAGE_TOPICS", "PULL_REASONS",
    "AuthConfig", "ContainerdClient", "ContainerdError", "ContainerdTooOld",
    "ContainerdUnavailable", "CriImage", "FsUsage", "ImageEvent", "ImagePullError",
    "ImageRecord", "IngestStatus", "VersionInfo", "add_address_argument",
]


def __getattr__(name: str) -> Any:
    # PEP 562: load the grpc-based client only when someone actually uses it.
    if name == "ContainerdClient":
        return importlib.import_module("nodeagent.containerd.grpc_client").ContainerdClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    """--containerd-address PATH (env NODEAGENT_CONTAINERD_ADDRESS, default the node's)."""
    parser.add_argument(
        "--containerd-address",
        metavar="PATH",
        default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
        help=f"containerd gRPC socket (env {ADDRESS_ENV}; default {DEFAULT_ADDRESS})",
    )
