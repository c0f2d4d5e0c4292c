"""OCI / Docker v2 images built in pure Python (no docker) for the demo, tests, benchmarks.

An image is a config and a manifest over layers from layers.py (cached on disk by spec,
so an image set is cheap to rebuild); a multi-platform image is an index over one image
per platform. Preset sets: the demo's four small images, the benchmark's eight.
push.py pushes them to a registry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.sandbox.layers import (
    Layer,
    LayerSpec,
    ensure_layers,
    sha256_digest,
)
from nodeagent.sandbox.process import SandboxError

CREATED = "2023-11-14T22:13:20Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_MEDIA = {
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST),
}


@dataclass
class BuiltImage:
    repository: str  # e.g. "demo/app" (no registry host)
    tag: str
    manifest_digest: str
    layers: list[Layer]
    total_size: int  # compressed layers + config: what a pull downloads
    platform: str = "linux/amd64"
    media_type: str = OCI_MANIFEST
    manifest: bytes = b""
    config: bytes = b""
    config_digest: str = ""
    config_media_type: str = OCI_CONFIG

    def ref(self, host: str) -> str:
        return f"{host}/{self.repository}:{self.tag}"

    def digest_ref(self, host: str) -> str:
        return f"{host}/{self.repository}@{self.manifest_digest}"


@dataclass
class BuiltIndex:
    """A multi-platform image: an index naming one BuiltImage per platform."""

    repository: str
    tag: str
    manifest_digest: str
    images: list[BuiltImage]
    media_type: str = OCI_INDEX
    manifest: bytes = b""
    total_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_size = sum(i.total_size for i in self.images)

    @property
    def layers(self) -> list[Layer]:
        return [layer for image in self.images for layer in image.layers]

    def ref(self, host: str) -> str:
        return f"{host}/{self.repository}:{self.tag}"

    def digest_ref(self, host: str) -> str:
        return f"{host}/{self.repository}@{self.manifest_digest}"

    def for_platform(self, platform: str) -> BuiltImage:
        for image in self.images:
            if image.platform == platform:
                return image
        raise SandboxError(f"index {self.repository}:{self.tag} has no {platform} image")


# ---------------------------------------------------------------- manifests


def _split_name(name: str, tag: str | None) -> tuple[str, str]:
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, parsed = name.rpartition(":")
        return repo, tag or parsed
    return name, tag or "latest"


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _platform_parts(platform: str) -> tuple[str, str, str | None]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise SandboxError(f"invalid platform {platform!r}: expected os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _image_config(layers: Sequence[Layer], platform: str, repo: str) -> dict[str, object]:
    os_name, arch, variant = _platform_parts(platform)
    config: dict[str, object] = {
        "architecture": arch,
        "os": os_name,
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"io.nodeagent.sandbox.image": repo},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": CREATED, "created_by": f"nodeagent sandbox layer {layer.spec.key}"
             if layer.spec else "nodeagent sandbox layer"}
            for layer in layers
        ],
    }
    if variant:
        config["variant"] = variant
    return config


def build_image(
    name: str,
    layer_specs: Sequence[LayerSpec],
    *,
    tag: str | None = None,
    platform: str = "linux/amd64",
    media: str = "oci",
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> BuiltImage:
    """An image made of `layer_specs` (bottom first). `name` may carry a tag ("repo:tag")."""
    if media not in _MEDIA:
        raise SandboxError(f"unknown manifest format {media!r}: use 'oci' or 'docker'")
    if not layer_specs:
        raise SandboxError(f"image {name!r} needs at least one layer spec")
    repo, tag = _split_name(name, tag)
    manifest_type, config_type, layer_type, _ = _MEDIA[media]
    built = ensure_layers(layer_specs, cache_dir, workers)
    layers = [built[s] for s in layer_specs]
    config = _json_bytes(_image_config(layers, platform, repo))
    manifest = _json_bytes({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": layer.digest, "size": layer.size}
                   for layer in layers],
    })
    return BuiltImage(
        repository=repo, tag=tag, manifest_digest=sha256_digest(manifest), layers=layers,
        total_size=sum(layer.size for layer in layers) + len(config), platform=platform,
        media_type=manifest_type, manifest=manifest, config=config,
        config_digest=sha256_digest(config), config_media_type=config_type,
    )


def build_index(
    name: str,
    per_platform: dict[str, Sequence[LayerSpec]],
    *,
    tag: str | None = None,
    media: str = "oci",
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> BuiltIndex:
    """A multi-arch image: one manifest per platform (e.g. linux/amd64, linux/arm64)."""
    if not per_platform:
        raise SandboxError(f"index {name!r} needs at least one platform")
    repo, tag = _split_name(name, tag)
    ensure_layers([s for specs in per_platform.values() for s in specs], cache_dir, workers)
    images = [
        build_image(repo, specs, tag=tag, platform=platform, media=media,
                    cache_dir=cache_dir, workers=1)
        for platform, specs in per_platform.items()
    ]
    entries = []
    for image in images:
        os_name, arch, variant = _platform_parts(image.platform)
        plat: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            plat["variant"] = variant
        entries.append({"mediaType": image.media_type, "digest": image.manifest_digest,
                        "size": len(image.manifest), "platform": plat})
    index_type = _MEDIA[media][3]
    index = _json_bytes({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    return BuiltIndex(repository=repo, tag=tag, manifest_digest=sha256_digest(index),
                      images=images, media_type=index_type, manifest=index)


# ---------------------------------------------------------------- preset image sets

DEMO_REPO_PREFIX = "nodeagent-demo"
BENCH_REPO_PREFIX = "nodeagent-bench"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def demo_image_set(
    cache_dir: Path | None = None, media: str = "oci"
) -> list[BuiltImage | BuiltIndex]:
    """4 small images (~6 MB distinct compressed bytes): a shared base layer, a shared
    runtime layer, and one multi-arch (linux/amd64 + linux/arm64) image."""
    p = DEMO_REPO_PREFIX
    base = LayerSpec("demo/base-os", 1536 * KiB)
    runtime = LayerSpec("demo/python-runtime", 1024 * KiB)
    return [
        build_image(f"{p}/python:3.11", [base, runtime], media=media, cache_dir=cache_dir),
        build_image(f"{p}/model-server:1.0", [base, runtime, LayerSpec("demo/server", 768 * KiB),
                    LayerSpec("demo/server-config", 16 * KiB)], media=media, cache_dir=cache_dir),
        build_image(f"{p}/trainer:2.0", [base, LayerSpec("demo/trainer", 1280 * KiB)],
                    media=media, cache_dir=cache_dir),
        build_index(f"{p}/tools:1.0", {
            "linux/amd64": [base, LayerSpec("demo/tools-amd64", 512 * KiB)],
            "linux/arm64": [LayerSpec("demo/base-os-arm64", 1536 * KiB),
                            LayerSpec("demo/tools-arm64", 512 * KiB)],
        }, media=media, cache_dir=cache_dir),
    ]


# Benchmark layout: (image, [(layer key, share of total)]), shares sum to 1 over distinct
# layers. Two base families (like a CUDA base and a slim base) shared by several images,
# app layers of varied sizes, one large standalone image.
_BENCH_LAYOUT: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = (
    ("cuda-base:12", (("cuda-base", 0.16), ("cuda-libs", 0.10))),
    ("pytorch:2.3", (("cuda-base", 0.16), ("cuda-libs", 0.10), ("torch", 0.14))),
    ("vllm:0.5", (("cuda-base", 0.16), ("cuda-libs", 0.10), ("torch", 0.14), ("vllm", 0.08))),
    ("trainer:1.0", (("cuda-base", 0.16), ("cuda-libs", 0.10), ("trainer", 0.07))),
    ("slim-python:3.11", (("slim-base", 0.04), ("python", 0.03))),
    ("api:1.4", (("slim-base", 0.04), ("python", 0.03), ("api", 0.02))),
    ("etl:0.9", (("slim-base", 0.04), ("python", 0.03), ("etl-deps", 0.09), ("etl", 0.01))),
    ("model-weights:7b", (("weights-runtime", 0.03), ("weights", 0.23))),
)


def bench_image_set(
    total_size: int = GiB, cache_dir: Path | None = None, workers: int | None = None,
    media: str = "oci",
) -> list[BuiltImage | BuiltIndex]:
    """8 images, ~`total_size` distinct compressed bytes, several sharing base layers."""
    specs: dict[str, LayerSpec] = {}
    for _, layers in _BENCH_LAYOUT:
        for key, share in layers:
            specs.setdefault(key, LayerSpec(f"bench/{key}", max(4 * KiB, int(total_size * share))))
    ensure_layers(list(specs.values()), cache_dir, workers)
    return [
        build_image(f"{BENCH_REPO_PREFIX}/{name}", [specs[k] for k, _ in layers], media=media,
                    cache_dir=cache_dir, workers=1)
        for name, layers in _BENCH_LAYOUT
    ]


def sample_image_set(
    preset: str = "demo", *, total_size: int = GiB, cache_dir: Path | None = None,
    workers: int | None = None, media: str = "oci",
) -> list[BuiltImage | BuiltIndex]:
    """Preset sets: "demo" (4 small images) or "bench" (8 images, ~total_size)."""
    if preset == "demo":
        return demo_image_set(cache_dir, media)
    if preset == "bench":
        return bench_image_set(total_size, cache_dir, workers, media)
    raise SandboxError(f"unknown image set preset {preset!r}: use 'demo' or 'bench'")
