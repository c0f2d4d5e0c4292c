"""--remove-unlisted when containerd refuses a removal: the run says which image was not
removed and why, and does not exit 0.

Real containerd 1.6.20 gives no way to make CRI RemoveImage fail on purpose (it removes
any image record it finds, and a missing one counts as removed), so the refusal comes
from a client double here; the summary and the exit rule are nodeagent's own code.
"""

from __future__ import annotations

import logging

import pytest

from nodeagent.containerd.model import ContainerdError, ContainerdUnavailable
from nodeagent.prewarm import apply
from nodeagent.prewarm.plan import Removal
from nodeagent.prewarm.state import PrewarmSummary

REMOVAL = Removal(ref="sha256:" + "c" * 64, target_digest="sha256:" + "d" * 64,
                  names=("registry.example/old@sha256:" + "d" * 64, "registry.example/old:1"))


class _Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def remove_image(self, ref: str) -> None:
        raise self.error


class _Removing:
    def __init__(self) -> None:
        self.removed: list[str] = []

    async def remove_image(self, ref: str) -> None:
        self.removed.append(ref)


async def test_a_refused_removal_is_reported_with_its_reason(caplog):
    caplog.set_level(logging.WARNING, logger="nodeagent.prewarm")
    refusal = ContainerdError("containerd removal of image old failed (FAILED_PRECONDITION): "
                              "image is in use")
    name, error = await apply.remove_image(_Refusing(refusal), REMOVAL)  # type: ignore[arg-type]
    assert name == "registry.example/old:1"
    assert error is not None and "image is in use" in error
    assert "cannot remove unlisted image" in caplog.text


async def test_a_removal_that_succeeds_names_the_image():
    client = _Removing()
    assert await apply.remove_image(client, REMOVAL) == ("registry.example/old:1", None)  # type: ignore[arg-type]
    assert client.removed == [REMOVAL.ref]


async def test_containerd_away_is_not_a_refused_removal():
    with pytest.raises(ContainerdUnavailable):
        await apply.remove_image(_Refusing(ContainerdUnavailable("socket gone")), REMOVAL)  # type: ignore[arg-type]


def test_the_summary_names_what_was_not_removed_and_the_run_is_not_all_done():
    summary = PrewarmSummary([], removed=["registry.example/a:1"],
                             not_removed=[("registry.example/old:1", "image is in use")])
    assert summary.ok  # every listed image is present...
    assert not summary.all_done  # ...but a removal asked for was not done: exit 1
    assert "  NOT removed registry.example/old:1: image is in use" in summary.text()
    assert PrewarmSummary([], removed=["registry.example/a:1"]).all_done
