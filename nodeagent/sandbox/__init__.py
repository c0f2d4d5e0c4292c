"""Throwaway registry, private containerd and image builder for the demo, tests, benches.

Heavy pieces import lazily; `from nodeagent.sandbox import LocalRegistry` stays cheap.
"""

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import (
    BuiltImage,
    BuiltIndex,
    Layer,
    LayerSpec,
    build_image,
    build_index,
    push_image,
    sample_image_set,
)
from nodeagent.sandbox.process import SandboxError
from nodeagent.sandbox.registry import LocalRegistry

__all__ = [
    "BuiltImage",
    "BuiltIndex",
    "Layer",
    "LayerSpec",
    "LocalRegistry",
    "PrivateContainerd",
    "SandboxError",
    "build_image",
    "build_index",
    "push_image",
    "sample_image_set",
]
