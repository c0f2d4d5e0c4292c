"""The agent's ImagesPrewarmed condition rule (pure)."""

from __future__ import annotations

from nodeagent.agent.condition import compute_condition
from nodeagent.prewarm.state import ImageState


def st(image: str, state: str, required: bool = False, **kw) -> ImageState:
    return ImageState(image=image, state=state, required=required, **kw)


def test_condition_counts_and_reasons():
    assert compute_condition([]).reason == "NoHotImages"
    ok = compute_condition([st("a", "present"), st("b", "present", True)])
    assert (ok.status, ok.reason) == ("True", "AllImagesPresent")
    assert ok.message == "2/2 hot images present (required 1/1)"
    pulling = compute_condition([st("a", "present"), st("b", "pulling"), st("c", "pending")])
    assert (pulling.status, pulling.reason) == ("False", "Pulling")
    assert pulling.message == "1/3 hot images present, 2 pulling"
    failed = compute_condition([st("a", "failed", reason="auth", message="401 from registry"),
                                st("b", "present")], invalid_sets=["broken"])
    assert failed.reason == "PullFailed"
    assert "a: 401 from registry" in failed.message and "broken" in failed.message
    skipped = compute_condition([st("a", "skipped", reason="disk_guard", message="full")])
    assert skipped.reason == "DiskSpaceLow"
    storage = compute_condition([st("a", "present")], storage_problem="RAID0 not assembled")
    assert (storage.status, storage.reason) == ("False", "StorageNotReady")
    assert len(compute_condition([st("x" * 600, "failed", message="m")]).message) <= 512
