"""HotImageSets merged into a node's desired images: selection by node labels, dedup,
order by priority, and how pin, required, sets and pull secrets combine."""

from support.hotlist_cases import D64, VALID, write

from nodeagent.api.hotimageset import HotImageSet, ImageEntry, SecretRef, load_hotimageset_file
from nodeagent.api.selector import parse_label_selector
from nodeagent.prewarm.desired import select_and_merge
from nodeagent.registry.reference import parse_reference

# ----------------------------------------------------------------------------- merge


def hot_set(name, images, selector=None, pin=True, priority=0, secrets=()):
    return HotImageSet(
        name,
        tuple(ImageEntry(parse_reference(i[0]), i[1], i[2]) if isinstance(i, tuple)
              else ImageEntry(parse_reference(i)) for i in images),
        parse_label_selector(selector or {}),
        pin, priority, tuple(SecretRef(*s) for s in secrets))


def test_merge_selects_dedups_and_sorts():
    sets = [
        hot_set("base", ["nginx:1.25", "registry.k8s.io/pause:3.9", "redis:7"], pin=False,
                secrets=[("ns", "a")]),
        hot_set("gpu", ["docker.io/library/nginx:1.25", ("cuda:12", None, True)],
                selector={"matchLabels": {"gpu": "true"}}, priority=5, secrets=[("ns", "b")]),
        hot_set("arm", ["redis:7"], selector={"matchLabels": {"arch": "arm64"}}, priority=99),
        hot_set("late", [("nginx:1.25", None, True), "busybox"], pin=False,
                secrets=[("ns", "a"), ("ns", "c")]),
        hot_set("plat", [("nginx:1.25", "linux/arm64", False)], priority=1),
    ]
    desired = select_and_merge(sets, {"gpu": "true"})
    keys = [(str(d.reference), d.platform) for d in desired]
    assert keys == [
        ("docker.io/library/nginx:1.25", None),        # priority 5 (max of 0, 5, 0)
        ("docker.io/library/cuda:12", None),           # priority 5, appeared after nginx
        ("docker.io/library/nginx:1.25", "linux/arm64"),  # priority 1
        ("registry.k8s.io/pause:3.9", None),           # priority 0, first appearance order
        ("docker.io/library/redis:7", None),           # "arm" set did not match
        ("docker.io/library/busybox:latest", None),
    ]
    nginx = desired[0]
    assert nginx.priority == 5
    assert nginx.pin is True  # any set pins it (gpu)
    assert nginx.required is True  # "late" requires it
    assert nginx.sets == ("base", "gpu", "late")
    assert nginx.pull_secrets == (SecretRef("ns", "a"), SecretRef("ns", "b"),
                                  SecretRef("ns", "c"))
    assert desired[1].required is True and desired[1].sets == ("gpu",)
    pause = desired[3]
    assert pause.pin is False and pause.required is False and pause.sets == ("base",)
    assert desired[5].pull_secrets == (SecretRef("ns", "a"), SecretRef("ns", "c"))


def test_merge_no_matching_sets():
    sets = [hot_set("gpu", ["cuda:12"], selector={"matchExpressions": [
        {"key": "gpu", "operator": "Exists"}]})]
    assert select_and_merge(sets, {}) == []
    assert len(select_and_merge(sets, {"gpu": ""})) == 1


def test_merge_digest_and_tag_are_distinct_images():
    sets = [hot_set("a", ["nginx:1.25", f"nginx@{D64}", f"nginx:1.25@{D64}"])]
    assert len(select_and_merge(sets, {})) == 3


def test_merge_from_file(tmp_path):
    sets = load_hotimageset_file(write(tmp_path, VALID))
    node = {"nvidia.com/gpu.present": "true", "node.kubernetes.io/instance-type": "p4d.24xlarge"}
    names = [str(d.reference) for d in select_and_merge(sets, node)]
    assert names == ["nvcr.io/nvidia/pytorch:24.05-py3", f"ghcr.io/org/trainer@{D64}",
                     "registry.k8s.io/pause:3.9", "docker.io/library/nginx:1.25"]
    assert [str(d.reference) for d in select_and_merge(sets, {})] == [
        "registry.k8s.io/pause:3.9", "docker.io/library/nginx:1.25"]
