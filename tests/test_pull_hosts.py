"""The fast pull through containerd's registry config (CRI ``config_path``, hosts.toml):
a mirror listed there (a pull-through cache, Spegel, Dragonfly) gets the blob requests
first, with ``?ns=<registry>`` as containerd sends them, and the upstream server takes
over when the mirror cannot serve. Real containerd and registries; recording proxies in
front of them count what went where."""

from __future__ import annotations

import os
import urllib.parse

import pytest
from support.pull_helpers import fast_pull, labels_of, push, staged_files

from nodeagent.pull.puller import PullOptions
from nodeagent.sandbox.featured import Entry, build_featured, layer_blob
from nodeagent.sandbox.local_registry import free_port
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

pytestmark = pytest.mark.containerd


def blob_gets(proxy: ThrottleProxy) -> list[tuple[str, dict[str, list[str]]]]:
    """(digest, query) of every blob GET the proxy saw."""
    found = []
    for method, target in proxy.requests():
        parts = urllib.parse.urlsplit(target)
        if method == "GET" and "/blobs/" in parts.path:
            found.append((parts.path.rsplit("/", 1)[1], urllib.parse.parse_qs(parts.query)))
    return found


def write_hosts(containerd, registry: str, mirror: str, server: str) -> None:
    path = containerd.config_path / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'server = "{server}"\n\n[host."{mirror}"]\n'
                    '  capabilities = ["pull", "resolve"]\n')


def two_layers(name: str, cache):
    return build_featured(name, [
        layer_blob([Entry("small", data=name.encode())]),
        layer_blob([Entry("big", data=os.urandom(3 * MiB))]),  # three 1 MiB ranges and more
    ], cache)


@pytest.mark.parametrize("mirror_state", ["serving", "empty", "down"])
async def test_blobs_come_from_the_hosts_toml_mirror_then_upstream(
        registry, fresh_registry, containerd, tmp_path, mirror_state):
    """``serving``: every blob from the mirror, each request with ?ns=<registry>, none
    upstream. ``empty`` (a cache that has nothing: 404) and ``down`` (nothing listens):
    the same pull succeeds from the upstream server, without ?ns."""
    image = two_layers(f"fast/mirror-{mirror_state}", tmp_path / "blobs")
    push(registry, image)
    with ThrottleProxy(registry.host, record_requests=True) as upstream, \
            ThrottleProxy(fresh_registry.host if mirror_state == "empty" else registry.host,
                          record_requests=True) as mirror:
        name = f"{upstream.address[0]}:{upstream.address[1]}"
        mirror_url = mirror.url if mirror_state != "down" else f"http://127.0.0.1:{free_port()}"
        write_hosts(containerd, name, mirror_url, upstream.url)
        ref = image.ref(name)
        assert await fast_pull(containerd, ref, options=PullOptions(chunk_bytes=MiB)
                               ) == image.config_digest
        from_mirror, from_upstream = blob_gets(mirror), blob_gets(upstream)
    layers = {layer.digest for layer in image.layers}
    if mirror_state == "serving":
        assert {digest for digest, _ in from_mirror} == layers | {image.config_digest}
        assert all(query == {"ns": [name]} for _, query in from_mirror)
        assert from_upstream == []
        assert sum(d == image.layers[1].digest for d, _ in from_mirror) >= 3  # ranges
    else:
        assert {digest for digest, _ in from_upstream} >= layers
        assert all(query == {} for _, query in from_upstream)
        if mirror_state == "empty":  # asked first, answered 404
            assert {digest for digest, _ in from_mirror} >= layers
    assert len(labels_of(containerd, "snapshots")) == 2
    assert staged_files(containerd) == []
