"""Helpers of the resolve_manifest tests (tests/test_registry_resolve_*.py)."""

from nodeagent.registry.resolve import ResolvedImage


def expected(image):
    return ResolvedImage(
        manifest_digest=image.manifest_digest, config_digest=image.config_digest,
        layers=[(layer.digest, layer.size) for layer in image.layers],
        total_size=image.total_size, media_type=image.media_type,
        config_size=len(image.config))
