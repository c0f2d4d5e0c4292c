"""HotImageSet files: loading, validation messages, merge semantics, CRD schema agreement."""

import copy
import json
import textwrap

import jsonschema
import pytest
import yaml

from nodeagent.api.hotimageset import (
    HotImageSet,
    HotListError,
    ImageEntry,
    SecretRef,
    load_hotimageset_file,
    load_hotimagesets,
    parse_hotimageset,
)
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA, HOTIMAGESET_OPENAPI_SCHEMA
from nodeagent.api.selector import parse_label_selector
from nodeagent.errors import NodeagentError
from nodeagent.prewarm.desired import select_and_merge
from nodeagent.registry.platform import normalize_platform
from nodeagent.registry.reference import parse_reference

D64 = "sha256:" + "ab" * 32

VALID = textwrap.dedent(f"""\
    # two sets and an empty document
    apiVersion: nodeagent.io/v1alpha1
    kind: HotImageSet
    metadata:
      name: base
    spec:
      images:
        - image: registry.k8s.io/pause:3.9
          required: true
        - image: nginx:1.25
    ---
    ---
    apiVersion: nodeagent.io/v1alpha1
    kind: HotImageSet
    metadata: {{name: gpu-training, labels: {{team: ml}}}}
    spec:
      priority: 10
      pin: false
      nodeSelector:
        matchLabels: {{nvidia.com/gpu.present: "true"}}
        matchExpressions:
          - {{key: node.kubernetes.io/instance-type, operator: In, values: [p4d.24xlarge]}}
      imagePullSecrets:
        - {{name: ngc-pull, namespace: ml}}
      images:
        - image: nvcr.io/nvidia/pytorch:24.05-py3
          platform: linux/amd64
        - image: ghcr.io/org/trainer@{D64}
    """)


def write(tmp_path, text, name="hot.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_multi_document_file(tmp_path):
    sets = load_hotimageset_file(write(tmp_path, VALID))
    assert [s.name for s in sets] == ["base", "gpu-training"]
    base, gpu = sets
    assert base.pin is True and base.priority == 0 and base.image_pull_secrets == ()
    assert base.node_selector.is_empty()
    assert base.images == (
        ImageEntry(parse_reference("registry.k8s.io/pause:3.9"), None, True),
        ImageEntry(parse_reference("docker.io/library/nginx:1.25"), None, False),
    )
    assert gpu.pin is False and gpu.priority == 10
    assert gpu.image_pull_secrets == (SecretRef("ml", "ngc-pull"),)
    assert gpu.images[0].platform == "linux/amd64"
    assert gpu.images[1].reference.digest == D64 and gpu.images[1].reference.tag is None
    assert gpu.node_selector.matches({"nvidia.com/gpu.present": "true",
                                      "node.kubernetes.io/instance-type": "p4d.24xlarge"})
    assert not gpu.node_selector.matches({"nvidia.com/gpu.present": "true"})


def test_json_file_and_directory(tmp_path):
    doc = yaml.safe_load(VALID.split("---")[0])
    (tmp_path / "d").mkdir()
    write(tmp_path / "d", json.dumps(doc, indent="\t"), "a.json")
    other = copy.deepcopy(doc)
    other["metadata"]["name"] = "other"
    write(tmp_path / "d", yaml.safe_dump(other), "b.yml")
    write(tmp_path / "d", "not: [a hot list", "README.txt")  # ignored: not yaml/json
    assert [s.name for s in load_hotimagesets([tmp_path / "d"])] == ["base", "other"]


def base_doc():
    return {
        "apiVersion": "nodeagent.io/v1alpha1",
        "kind": "HotImageSet",
        "metadata": {"name": "web"},
        "spec": {"images": [{"image": "nginx:1.25"}, {"image": "redis:7"},
                            {"image": "busybox"}]},
    }


def _set(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


DELETE = object()

# (path to change, new value, field path named in the error, text of the message,
#  whether the CRD's OpenAPI schema can express the rule too)
INVALID = [
    (["spec", "images", 2, "image"], "Busybox:latest", "spec.images[2].image",
     'Invalid value: "Busybox:latest": repository name must be lowercase', False),
    (["spec", "images", 1, "image"], "redis@sha256:123", "spec.images[1].image",
     'Invalid value: "redis@sha256:123": digest', False),
    (["spec", "images", 1, "image"], 7, "spec.images[1].image",
     "must be a string, got integer 7", True),
    (["spec", "images", 0, "image"], DELETE, "spec.images[0].image", "Required value", True),
    (["spec", "images", 0, "platform"], "linux/amd46", "spec.images[0].platform",
     'Invalid value: "linux/amd46": unknown architecture "amd46"', False),
    (["spec", "images", 0, "platform"], "amd64", "spec.images[0].platform",
     'Invalid value: "amd64": must be "os/arch"', True),
    (["spec", "images", 0, "platform"], "linx/amd64", "spec.images[0].platform",
     'unknown operating system "linx"', False),
    (["spec", "images", 0, "required"], "yes", "spec.images[0].required",
     'must be a boolean (true or false), got string "yes"', True),
    (["spec", "images", 0, "pull"], True, "spec.images[0].pull",
     'unknown field "pull" (allowed: image, platform, required)', True),
    (["spec", "images", 1], "redis:7", "spec.images[1]",
     'must be an object like {image: "nginx:1.25"}, got string "redis:7"', True),
    (["spec", "images", 2, "image"], "docker.io/library/nginx:1.25", "spec.images[2].image",
     'Duplicate value: "docker.io/library/nginx:1.25" is already listed as spec.images[0]', False),
    (["spec", "images"], [], "spec.images", "must list at least one image", True),
    (["spec", "images"], "nginx", "spec.images", 'must be a list, got string "nginx"', True),
    (["spec", "images"], DELETE, "spec.images", "Required value", True),
    (["spec", "imagess"], [], "spec.imagess", 'unknown field "imagess"', True),
    (["spec", "pin"], "false", "spec.pin", 'must be a boolean (true or false), got string', True),
    (["spec", "priority"], "high", "spec.priority", 'must be an integer, got string "high"', True),
    (["spec", "priority"], 1.5, "spec.priority", "must be an integer, got number 1.5", True),
    (["spec", "priority"], True, "spec.priority", "must be an integer, got boolean True", True),
    (["spec", "priority"], 2**31, "spec.priority", "32-bit", True),
    (["spec", "nodeSelector"], {"matchLabels": {"gpu": 1}}, "spec.nodeSelector.matchLabels.gpu",
     "label value must be a string, got integer 1", True),
    (["spec", "nodeSelector"], {"matchExpressions": [{"key": "a", "operator": "Exist"}]},
     "spec.nodeSelector.matchExpressions[0].operator", 'Unsupported value: "Exist"', True),
    (["spec", "nodeSelector"], {"gpu": "true"}, "spec.nodeSelector", 'unknown field "gpu"', True),
    (["spec", "imagePullSecrets"], [{"name": "regcred"}], "spec.imagePullSecrets[0].namespace",
     "Required value (HotImageSet is cluster-scoped", True),
    (["spec", "imagePullSecrets"], [{"name": "Reg_Cred", "namespace": "default"}],
     "spec.imagePullSecrets[0].name", 'Invalid value: "Reg_Cred"', True),
    (["spec", "imagePullSecrets"], [{"name": "r", "namespace": "a.b"}],
     "spec.imagePullSecrets[0].namespace", 'Invalid value: "a.b"', True),
    (["spec", "imagePullSecrets"], ["regcred"], "spec.imagePullSecrets[0]",
     'got string "regcred"', True),
    (["spec", "imagePullSecrets"], {"name": "x"}, "spec.imagePullSecrets", "must be a list", True),
    (["spec"], DELETE, "spec", "Required value", True),
    (["spec"], ["nginx"], "spec", "must be an object", True),
    (["apiVersion"], "nodeagent.io/v1", "apiVersion",
     'Unsupported value: "nodeagent.io/v1": must be "nodeagent.io/v1alpha1"', False),
    (["apiVersion"], DELETE, "apiVersion", "Required value", False),
    (["kind"], "ImageCache", "kind", 'Unsupported value: "ImageCache": must be "HotImageSet"',
     False),
    (["metadata", "namespace"], "default", "metadata.namespace", "cluster-scoped", False),
    (["metadata", "nmae"], "x", "metadata.nmae", 'did you mean "name"?', False),
    (["extra"], 1, "extra", 'unknown field "extra"', True),
]


@pytest.mark.parametrize(("where", "value", "path", "message", "in_crd"), INVALID,
                         ids=[case[2] + ":" + case[3][:20] for case in INVALID])
def test_each_invalid_input_names_path_and_value(tmp_path, where, value, path, message, in_crd):
    doc = base_doc()
    _set(doc, where, value)
    file = write(tmp_path, yaml.safe_dump(doc))
    with pytest.raises(HotListError) as info:
        load_hotimageset_file(file)
    assert isinstance(info.value, NodeagentError)
    line = next(line for line in str(info.value).splitlines() if f": {path}: " in line)
    assert line.startswith(f'invalid hot list: {file} document 1 (HotImageSet "web"): {path}: ')
    assert message in line
    assert len(info.value.problems) == 1, info.value.problems


def test_missing_name_and_wrong_root(tmp_path):
    file = write(tmp_path, "apiVersion: nodeagent.io/v1alpha1\nkind: HotImageSet\n"
                           "metadata: {}\nspec: {images: [{image: nginx}]}\n---\n- a\n- b\n")
    with pytest.raises(HotListError) as info:
        load_hotimageset_file(file)
    text = str(info.value)
    assert f"{file} document 1: metadata.name: Required value" in text
    assert f"{file} document 2: must be a HotImageSet object, got list" in text


def test_long_values_are_truncated(tmp_path):
    doc = base_doc()
    doc["spec"]["images"][0]["image"] = "Registry.example.com/" + "x" * 300 + "/A"
    with pytest.raises(HotListError) as info:
        load_hotimageset_file(write(tmp_path, yaml.safe_dump(doc)))
    line = str(info.value).splitlines()[0]
    assert '"Registry.example.com/xxx' in line and "..." in line and len(line) < 300


def test_all_errors_reported_together_across_documents(tmp_path):
    text = VALID + textwrap.dedent("""\
        ---
        apiVersion: nodeagent.io/v1alpha1
        kind: HotImageSet
        metadata: {name: base}
        spec:
          pin: maybe
          images:
            - image: ok:1
            - image: NotOk
        """)
    file = write(tmp_path, text)
    with pytest.raises(HotListError) as info:
        load_hotimageset_file(file)
    problems = sorted((p.document, p.object_name, p.path) for p in info.value.problems)
    assert problems == [
        (4, "base", "metadata.name"),  # duplicate name: the first "base" is document 1
        (4, "base", "spec.images[1].image"),
        (4, "base", "spec.pin"),
    ]
    text = str(info.value)
    assert "3 problems" in text
    assert f'duplicate HotImageSet name "base" (already defined in {file} document 1)' in text
    assert "nothing was pulled" in text


def test_nothing_returned_when_one_document_is_bad(tmp_path):
    # A single bad document blocks the whole file (no partial results).
    file = write(tmp_path, VALID + "---\napiVersion: x\n")
    with pytest.raises(HotListError):
        load_hotimageset_file(file)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n", "not valid YAML"),
        ("apiVersion: nodeagent.io/v1alpha1\napiVersion: x\n", "found duplicate key"),
        ("", "contains no HotImageSet document"),
        ("---\n---\n", "contains no HotImageSet document"),
    ],
)
def test_file_level_problems(tmp_path, text, message):
    file = write(tmp_path, text)
    with pytest.raises(HotListError) as info:
        load_hotimageset_file(file)
    assert str(file) in str(info.value) and message in str(info.value)


def test_yaml_error_has_line(tmp_path):
    file = write(tmp_path, "apiVersion: a\nspec:\n  images: [\n  - x: y\n")
    with pytest.raises(HotListError, match=r"line \d+, column \d+"):
        load_hotimageset_file(file)


def test_missing_file(tmp_path):
    with pytest.raises(HotListError, match="does not exist"):
        load_hotimageset_file(tmp_path / "nope.yaml")


def test_bad_json_file(tmp_path):
    with pytest.raises(HotListError, match=r"bad\.json: not valid JSON: .*line 1"):
        load_hotimageset_file(write(tmp_path, '{"apiVersion": ', "bad.json"))


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HotListError, match=r"empty: directory has no \*\.yaml"):
        load_hotimagesets([tmp_path / "empty"])


def test_parse_hotimageset_for_cluster_objects():
    obj = base_doc()
    obj["metadata"].update(uid="1", resourceVersion="5", generation=2,
                           creationTimestamp="2024-01-01T00:00:00Z", managedFields=[])
    obj["status"] = {"conditions": []}
    result = parse_hotimageset(obj, "cluster")
    assert result.name == "web" and len(result.images) == 3
    obj["spec"]["pin"] = 1
    with pytest.raises(HotListError, match=r'cluster \(HotImageSet "web"\): spec.pin'):
        parse_hotimageset(obj, "cluster")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("Linux/AMD64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("windows/amd64", "windows/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
    ],
)
def test_platform_normalization(text, expected):
    assert normalize_platform(text) == (expected, None)


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd64/x1"])
def test_platform_rejected(text):
    platform, problem = normalize_platform(text)
    assert platform is None and problem


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


# ----------------------------------------------------------------------------- CRD schema


def _strict(schema):
    """The schema as the API server applies it with strict field validation: objects with
    listed properties reject unknown fields (pruning + kubectl --validate=strict)."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


def _walk(schema, path="spec"):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}.*")


def test_schema_is_structural():
    for path, node in _walk(HOTIMAGESET_OPENAPI_SCHEMA):
        assert "type" in node, path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert node.get("additionalProperties") is not False, path  # forbidden in CRDs
        assert not ("properties" in node and "additionalProperties" in node), path
        for key in node.get("required", []):
            assert key in node["properties"], (path, key)
    assert HOTIMAGESET_OBJECT_SCHEMA["properties"]["spec"] is HOTIMAGESET_OPENAPI_SCHEMA
    json.dumps(HOTIMAGESET_OBJECT_SCHEMA)  # serializable into the CRD manifest


def test_schema_accepts_valid_documents(tmp_path):
    validator = jsonschema.Draft4Validator(_strict(HOTIMAGESET_OBJECT_SCHEMA))
    for doc in yaml.safe_load_all(VALID):
        if doc is not None:
            validator.validate(doc)
    validator.validate(base_doc())


SCHEMA_EXPRESSIBLE = [c[:2] for c in INVALID if c[4]]


@pytest.mark.parametrize(("where", "value"), SCHEMA_EXPRESSIBLE,
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID if c[4]])
def test_schema_rejects_what_openapi_can_express(where, value):
    doc = base_doc()
    _set(doc, where, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_strict(HOTIMAGESET_OBJECT_SCHEMA)).validate(doc)


AGENT_ONLY = [c[:2] for c in INVALID if not c[4]]


@pytest.mark.parametrize(("where", "value"), AGENT_ONLY,
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID if not c[4]])
def test_schema_lets_through_only_what_the_agent_checks(where, value):
    """Keeps the in_crd flags honest: these pass the CRD schema, so the agent must check."""
    doc = base_doc()
    _set(doc, where, value)
    jsonschema.Draft4Validator(_strict(HOTIMAGESET_OBJECT_SCHEMA)).validate(doc)


def test_schema_defaults_match_loader():
    props = HOTIMAGESET_OPENAPI_SCHEMA["properties"]
    assert props["pin"]["default"] is HotImageSet.__dataclass_fields__["pin"].default
    assert props["priority"]["default"] == HotImageSet.__dataclass_fields__["priority"].default
    assert props["images"]["items"]["properties"]["required"]["default"] is False
    assert props["nodeSelector"]["properties"]["matchExpressions"]["items"]["properties"][
        "operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
