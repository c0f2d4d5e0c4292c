"""LabelSelector validation (as the API server does) and matching (as Kubernetes does)."""

import pytest

from nodeagent.api.selector import (
    LabelSelector,
    SelectorError,
    check_label_selector,
    parse_label_selector,
)
from nodeagent.errors import NodeagentError

NODE = {"kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "p4d.24xlarge",
        "nvidia.com/gpu.present": "true", "tier": ""}


def sel(obj):
    return parse_label_selector(obj, "spec.nodeSelector")


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),  # empty selector matches everything
        ({}, NODE, True),
        ({"matchLabels": {}, "matchExpressions": []}, NODE, True),
        ({"matchLabels": {"kubernetes.io/arch": "amd64"}}, NODE, True),
        ({"matchLabels": {"kubernetes.io/arch": "arm64"}}, NODE, False),
        ({"matchLabels": {"missing": "x"}}, NODE, False),
        ({"matchLabels": {"tier": ""}}, NODE, True),  # empty value must be present
        ({"matchLabels": {"tier": ""}}, {}, False),
        ({"matchLabels": {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "false"}},
         NODE, False),  # AND
        (_in := {"matchExpressions": [{"key": "node.kubernetes.io/instance-type",
                                       "operator": "In",
                                       "values": ["p4d.24xlarge", "p5.48xlarge"]}]},
         NODE, True),
        (_in, {}, False),  # In needs the key
        ({"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "NotIn",
                                "values": ["arm64"]}]}, NODE, True),
        ({"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "NotIn",
                                "values": ["amd64"]}]}, NODE, False),
        # NotIn matches when the key is absent
        ({"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["a"]}]},
         NODE, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, NODE, True),
        ({"matchExpressions": [{"key": "absent", "operator": "Exists"}]}, NODE, False),
        ({"matchExpressions": [{"key": "absent", "operator": "DoesNotExist"}]}, NODE, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist", "values": []}]},
         NODE, False),
        ({"matchLabels": {"kubernetes.io/arch": "amd64"},
          "matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "Exists"}]},
         NODE, True),
        ({"matchLabels": {"kubernetes.io/arch": "amd64"},
          "matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]},
         NODE, False),
    ],
)
def test_matching(selector, labels, expected):
    assert sel(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("selector", "path", "message"),
    [
        ("gpu=true", "spec.nodeSelector", 'must be an object, got string "gpu=true"'),
        ({"matchLabel": {"a": "b"}}, "spec.nodeSelector", 'unknown field "matchLabel"'),
        ({"matchLabels": ["a"]}, "spec.nodeSelector.matchLabels", "must be a map"),
        ({"matchLabels": {"a": True}}, "spec.nodeSelector.matchLabels.a",
         "got boolean True (quote numbers"),
        ({"matchLabels": {"a": "b c"}}, "spec.nodeSelector.matchLabels.a",
         'Invalid value: "b c"'),
        ({"matchLabels": {"a": "x" * 64}}, "spec.nodeSelector.matchLabels.a",
         "no more than 63"),
        ({"matchLabels": {"-a": "b"}}, "spec.nodeSelector.matchLabels.-a",
         "name part must consist"),
        ({"matchLabels": {"Example.com/a": "b"}}, "spec.nodeSelector.matchLabels.Example.com/a",
         "prefix part must be a lowercase DNS subdomain"),
        ({"matchLabels": {"a/b/c": "b"}}, "spec.nodeSelector.matchLabels.a/b/c",
         "at most one '/'"),
        ({"matchLabels": {"/a": "b"}}, "spec.nodeSelector.matchLabels./a",
         "prefix part must be non-empty"),
        ({"matchLabels": {"a/": "b"}}, "spec.nodeSelector.matchLabels.a/",
         "name part must be non-empty"),
        ({"matchExpressions": {"key": "a"}}, "spec.nodeSelector.matchExpressions",
         "must be a list"),
        ({"matchExpressions": ["a"]}, "spec.nodeSelector.matchExpressions[0]",
         "must be an object"),
        ({"matchExpressions": [{"operator": "Exists"}]},
         "spec.nodeSelector.matchExpressions[0].key", "Required value"),
        ({"matchExpressions": [{"key": "a"}]},
         "spec.nodeSelector.matchExpressions[0].operator", "Required value"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
         "spec.nodeSelector.matchExpressions[0].operator", 'Unsupported value: "Gt"'),
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["1"]}]},
         "spec.nodeSelector.matchExpressions[0].operator", 'Unsupported value: "in"'),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]},
         "spec.nodeSelector.matchExpressions[0].values",
         "Required value: must be specified when `operator` is 'In'"),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
         "spec.nodeSelector.matchExpressions[0].values", "Required value"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
         "spec.nodeSelector.matchExpressions[0].values", "Forbidden"),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
         "spec.nodeSelector.matchExpressions[0].values", "Forbidden"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
         "spec.nodeSelector.matchExpressions[0].values", "must be a list of strings"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", 5]}]},
         "spec.nodeSelector.matchExpressions[0].values[1]", "got integer 5"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"], "vals": 1}]},
         "spec.nodeSelector.matchExpressions[0]", 'unknown field "vals"'),
    ],
)
def test_validation_names_field_path(selector, path, message):
    with pytest.raises(SelectorError) as info:
        sel(selector)
    assert isinstance(info.value, NodeagentError)
    assert any(p.startswith(f"{path}: ") and message in p for p in info.value.problems), (
        info.value.problems)


def test_all_problems_reported_together():
    _, problems = check_label_selector(
        {"matchLabels": {"a": "b c"},
         "matchExpressions": [{"key": "x", "operator": "Bad"}, {"key": "y", "operator": "In"}]},
        "sel")
    assert [p.split(": ")[0] for p in problems] == [
        "sel.matchLabels.a", "sel.matchExpressions[0].operator", "sel.matchExpressions[1].values"]


def test_valid_keys_and_values():
    selector = sel({"matchLabels": {"node.kubernetes.io/instance-type": "g5.48xlarge",
                                    "a_b.c-d": "X_y.z-1", "k": ""}})
    assert selector.matches({"node.kubernetes.io/instance-type": "g5.48xlarge",
                             "a_b.c-d": "X_y.z-1", "k": ""})


def test_selector_is_hashable_and_comparable():
    a = sel({"matchLabels": {"a": "b"}})
    assert a == sel({"matchLabels": {"a": "b"}})
    assert hash(a) == hash(sel({"matchLabels": {"a": "b"}}))
    assert LabelSelector().is_empty() and not a.is_empty()
