"""Throwaway registry, private containerd and image builder for the demo, tests, benches.

Heavy pieces import lazily; `from nodeagent.sandbox import LocalRegistry` stays cheap.
"""

from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.images import (
    BuiltImage,
    BuiltIndex,
    build_image,
    build_index,
    sample_image_set,
)
from nodeagent.sandbox.layers import Layer, LayerSpec
from nodeagent.sandbox.local_registry import LocalRegistry
from nodeagent.sandbox.process import SandboxError
from nodeagent.sandbox.push import push_image

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
