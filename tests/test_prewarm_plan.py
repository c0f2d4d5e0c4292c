"""Pure planning: which images to pull, pin, unpin and remove."""

from __future__ import annotations

from support.prewarm_helpers import desired

from nodeagent.containerd.model import ImageRecord
from nodeagent.prewarm import plan
from nodeagent.registry.reference import parse_reference

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
C1 = "sha256:" + "a" * 64


def rec(name: str, target: str, **labels: str) -> ImageRecord:
    return ImageRecord(name, dict(labels), target, "application/vnd.oci.image.manifest.v1+json",
                       500)


def cri_records(repo: str, tag: str, target: str, config: str, **labels: str):
    """The three records one CRI pull creates."""
    return [rec(f"{repo}:{tag}", target, **labels), rec(f"{repo}@{target}", target, **labels),
            rec(config, target, **labels)]


PINNED = {plan.CRI_PINNED_LABEL: "pinned", plan.PINNED_LABEL: "true"}


def test_tag_record_name_follows_cri():
    assert plan.tag_record_name(parse_reference("nginx")) == "docker.io/library/nginx:latest"
    ref = parse_reference(f"reg:5000/a/b:1@{D1}")
    assert plan.tag_record_name(ref) == f"reg:5000/a/b@{D1}"


def test_absent_images_are_pulled_in_priority_order():
    wanted = [*desired("r/low:1", priority=0), *desired("r/high:1", priority=10),
              *desired("r/low:2", priority=0)]
    p = plan.plan_images(wanted, [])
    assert [str(d.reference) for d in p.pulls] == [
        "docker.io/r/high:1", "docker.io/r/low:1", "docker.io/r/low:2"]
    assert not p.present and not p.pins


def test_present_by_tag_is_pinned_on_every_record():
    records = cri_records("docker.io/r/a", "1", D1, C1)
    p = plan.plan_images(desired("r/a:1"), records)
    assert not p.pulls
    assert [(d.reference.repository, t) for d, t in p.present] == [("r/a", D1)]
    assert sorted(u.name for u in p.pins) == sorted(r.name for r in records)
    assert all(u.labels == PINNED for u in p.pins)


def test_digest_reference_matches_any_record_with_that_target():
    records = [rec("docker.io/r/a:other-tag", D1)]
    p = plan.plan_images(desired(f"r/a@{D1}"), records)
    assert not p.pulls and p.present[0][1] == D1
    p = plan.plan_images(desired(f"r/a@{D2}"), records)
    assert len(p.pulls) == 1


def test_already_pinned_records_need_no_update_and_foreign_pins_are_kept():
    records = [*cri_records("docker.io/r/a", "1", D1, C1, **PINNED),
               rec("docker.io/r/sandbox:3", D2, **{plan.CRI_PINNED_LABEL: "pinned"})]
    p = plan.plan_images(desired("r/a:1"), records)
    assert p.pins == [] and p.unpins == []


def test_images_that_left_the_list_are_unpinned_only_if_we_pinned_them():
    records = [*cri_records("docker.io/r/a", "1", D1, C1, **PINNED),
               rec("docker.io/r/b:1", D2, **PINNED),
               rec("docker.io/r/sandbox:3", D3, **{plan.CRI_PINNED_LABEL: "pinned"})]
    p = plan.plan_images(desired("r/a:1"), records)
    assert [u.name for u in p.unpins] == ["docker.io/r/b:1"]
    assert p.unpins[0].labels == {plan.CRI_PINNED_LABEL: "", plan.PINNED_LABEL: ""}
    assert plan.plan_images(desired("r/a:1"), records, unpin_removed=False).unpins == []


def test_pin_false_unpins_what_we_pinned():
    records = cri_records("docker.io/r/a", "1", D1, C1, **PINNED)
    p = plan.plan_images(desired("r/a:1", pin=False), records)
    assert len(p.unpins) == 3 and not p.pins


def test_remove_unlisted_only_touches_images_we_pulled_or_pinned():
    records = [*cri_records("docker.io/r/a", "1", D1, C1, **{plan.PULLED_LABEL: "true"}),
               rec("docker.io/r/b:1", D2),  # not ours
               rec("docker.io/r/c:1", D3, **PINNED)]
    assert plan.plan_images([], records).removals == []
    p = plan.plan_images([], records, remove_unlisted=True)
    assert sorted(r.target_digest for r in p.removals) == [D1, D3]
    assert next(r for r in p.removals if r.target_digest == D1).ref == C1  # by image id
    kept = plan.plan_images(desired("r/a:1"), records, remove_unlisted=True)
    assert [r.target_digest for r in kept.removals] == [D3]


def test_display_name_prefers_a_tag():
    records = cri_records("docker.io/r/a", "1", D1, C1)
    assert plan.display_name(records) == "docker.io/r/a:1"
    assert plan.display_name(records[1:]) == f"docker.io/r/a@{D1}"


def test_pick_next_priority_first_then_least_shared_bytes_then_order():
    base = {D1: 100, D2: 50}
    waiting = [plan.PullCandidate(0, 0, base), plan.PullCandidate(0, 1, {D1: 100, D3: 5}),
               plan.PullCandidate(0, 2, {D3: 5}), plan.PullCandidate(0, 3, None)]
    assert plan.pick_next(waiting, {}) == 0  # nothing in flight: hot-list order
    assert plan.pick_next(waiting, {D1: 100}) == 2  # avoid waiting on the shared base
    waiting.append(plan.PullCandidate(5, 9, base))
    assert plan.pick_next(waiting, {D1: 100}) == 4  # priority wins over sharing
