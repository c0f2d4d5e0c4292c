"""HotImageSet files: loading (YAML, JSON, directories, cluster objects), platforms, and
the validation messages, each naming the file, document, field path and value."""

import copy
import json
import textwrap

import pytest
import yaml
from support.hotlist_cases import D64, INVALID, VALID, base_doc, set_at, write

from nodeagent.api.hotimageset import (
    HotListError,
    ImageEntry,
    SecretRef,
    load_hotimageset_file,
    load_hotimagesets,
    parse_hotimageset,
)
from nodeagent.errors import NodeagentError
from nodeagent.registry.platform import normalize_platform
from nodeagent.registry.reference import parse_reference


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


@pytest.mark.parametrize(("where", "value", "path", "message", "in_crd"), INVALID,
                         ids=[case[2] + ":" + case[3][:20] for case in INVALID])
def test_each_invalid_input_names_path_and_value(tmp_path, where, value, path, message, in_crd):
    doc = base_doc()
    set_at(doc, where, value)
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
