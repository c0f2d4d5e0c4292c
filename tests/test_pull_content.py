"""How the fast pull hands blobs to containerd's content store, under each content
sharing policy of containerd's metadata plugin (real containerd 1.6.20):

- ``shared`` (the default): the verified staged blob is hard-linked into the store and
  committed through the content service without any data over gRPC; a blob another
  namespace already has on disk is used as it is, not fetched again.
- ``isolated``: containerd ignores files it did not receive, so the blob is streamed
  through ``Write`` (containerd hashes it, checks size and digest); a blob of another
  namespace is not used: this namespace fetches its own, as containerd's policy wants.
"""

from __future__ import annotations

import os

import pytest
from support.pull_helpers import blob_files, fast_pull, labels_of, push, staged_files

from nodeagent.containerd.client import ContainerdClient
from nodeagent.containerd.store import ContainerdStore
from nodeagent.pull.image_pull import PullProgress
from nodeagent.pull.preconditions import check_fast_path
from nodeagent.sandbox.containerd import PrivateContainerd
from nodeagent.sandbox.featured import Entry, build_featured, layer_blob
from nodeagent.sandbox.throttle import MiB, ThrottleProxy

pytestmark = pytest.mark.containerd


class PolicyContainerd(PrivateContainerd):
    """A private containerd whose metadata plugin has the given content sharing policy."""

    def __init__(self, workdir, policy: str) -> None:
        super().__init__(workdir)
        self.policy = policy

    def config_toml(self) -> str:
        return (super().config_toml() + '\n[plugins."io.containerd.metadata.v1.bolt"]\n'
                f'  content_sharing_policy = "{self.policy}"\n')


@pytest.mark.parametrize("policy", ["shared", "isolated"])
async def test_blobs_reach_the_content_store_under_each_sharing_policy(registry, tmp_path,
                                                                       policy):
    big_blob = layer_blob([Entry("big", data=os.urandom(4 * MiB))], "none")
    image = build_featured(f"fast/policy-{policy}", [
        layer_blob([Entry("small", data=policy.encode())]), big_blob], tmp_path / "blobs")
    other = build_featured(f"fast/policy-{policy}-other", [big_blob], tmp_path / "blobs")
    _, other_ref = push(registry, image, other)
    with PolicyContainerd(tmp_path / "ctrd", policy) as containerd, \
            ThrottleProxy(registry.host, record_requests=True) as proxy:
        # Another namespace already has the big layer's blob on disk.
        containerd.ctr("images", "pull", "--plain-http", other_ref, namespace="default")
        async with ContainerdClient(containerd.address) as client:
            setup = await check_fast_path(ContainerdStore(client))
        assert setup.shared_content == (policy == "shared")
        progress = PullProgress()
        ref = image.ref(f"{proxy.address[0]}:{proxy.address[1]}")
        assert await fast_pull(containerd, ref, progress=progress) == image.config_digest
        asked = {target.split("/blobs/")[1] for method, target in proxy.requests()
                 if method == "GET" and "/blobs/" in target}
        content = labels_of(containerd, "content")
        big = image.layers[1]
        async with ContainerdClient(containerd.address) as client:
            assert await client.list_ingests() == []
            status = await client.image_status(ref)
        assert status is not None and status.id == image.config_digest
        assert content[big.digest]["containerd.io/uncompressed"] == big.diff_id
        assert {layer.digest for layer in image.layers} <= set(content)
        assert blob_files(containerd).count(big.digest.partition(":")[2]) == 1
        assert staged_files(containerd) == []
        assert containerd.ctr("leases", "ls").splitlines()[1:] == []
    if policy == "shared":  # linked and committed: nothing streamed, nothing fetched twice
        assert big.digest not in asked and progress.stored == 0
    else:  # fetched for this namespace, streamed through Write
        assert big.digest in asked
        assert progress.stored == sum(layer.size for layer in image.layers)
