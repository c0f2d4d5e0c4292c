"""HotModelSet files: loading, validation messages (file, document, set, field path, value),
per-node selection and merge (conflicting names), CRD schema agreement."""

import copy
import json
import textwrap

import jsonschema
import pytest
import yaml

from nodeagent.api.crd import crd_manifest
from nodeagent.api.hotmodelset import (
    HotModelSet,
    ModelEntry,
    ModelListError,
    load_hotmodelsets,
    parse_hotmodelset,
)
from nodeagent.api.hotmodelset_schema import HOTMODELSET_OBJECT_SCHEMA, HOTMODELSET_OPENAPI_SCHEMA
from nodeagent.api.model_source import parse_source
from nodeagent.api.selector import parse_label_selector
from nodeagent.errors import NodeagentError, UsageError
from nodeagent.models.desired import (
    ModelListFiles,
    load_desired_models,
    select_and_merge,
    select_for_node,
)
from nodeagent.models.spec import ModelSpec

D64 = "sha256:" + "ab" * 32

VALID = textwrap.dedent(f"""\
    apiVersion: nodeagent.io/v1alpha1
    kind: HotModelSet
    metadata: {{name: serving}}
    spec:
      nodeSelector: {{matchLabels: {{workload: inference}}}}
      models:
        - name: llama-3-8b
          source: s3://models/llama-3-8b/
          priority: 10
          required: true
        - name: bert-base
          source: oci://registry.example.com/models/bert:v1
    ---
    apiVersion: nodeagent.io/v1alpha1
    kind: HotModelSet
    metadata: {{name: everywhere}}
    spec:
      models:
        - {{name: tokenizer, source: "s3://models/tok.json"}}
        - {{name: pinned, source: "oci://ghcr.io/org/model@{D64}"}}
    """)


def write(tmp_path, text, name="models.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_file(tmp_path):
    serving, everywhere = load_hotmodelsets([write(tmp_path, VALID)])
    assert serving.name == "serving"
    assert serving.models == (
        ModelEntry("llama-3-8b", "s3://models/llama-3-8b/", 10, True),
        ModelEntry("bert-base", "oci://registry.example.com/models/bert:v1", 0, False))
    assert serving.node_selector.matches({"workload": "inference"})
    assert not serving.node_selector.matches({})
    assert everywhere.node_selector.is_empty()
    assert parse_source(everywhere.models[1].source).reference.digest == D64


def base_doc():
    return {"apiVersion": "nodeagent.io/v1alpha1", "kind": "HotModelSet",
            "metadata": {"name": "serving"},
            "spec": {"models": [{"name": "llama", "source": "s3://models/llama/"},
                                {"name": "bert", "source": "oci://reg.example.com/m/bert:1"}]}}


DELETE = object()


def _set(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is DELETE:
        del doc[last]
    else:
        doc[last] = value


# (path to change, new value, field path in the error, message, OpenAPI can express it)
INVALID = [
    (["spec", "models", 0, "name"], "Llama_3", "spec.models[0].name",
     'Invalid value: "Llama_3": must be a lowercase RFC 1123 label', True),
    (["spec", "models", 0, "name"], "x" * 64, "spec.models[0].name", "at most 63", True),
    (["spec", "models", 0, "name"], DELETE, "spec.models[0].name", "Required value", True),
    (["spec", "models", 1, "name"], "llama", "spec.models[1].name",
     'Duplicate value: "llama" is already listed as spec.models[0]', False),
    (["spec", "models", 0, "source"], "https://x/y", "spec.models[0].source",
     'Invalid value: "https://x/y": is not supported: use s3://', True),
    (["spec", "models", 0, "source"], "s3://B/x/", "spec.models[0].source",
     "'B' is not a valid S3 bucket name", False),
    (["spec", "models", 0, "source"], "s3://bucket/a/..", "spec.models[0].source",
     "ends in '.' or '..'", False),
    (["spec", "models", 1, "source"], "oci://reg.example.com/Bert:1", "spec.models[1].source",
     "not a valid OCI artifact reference: repository name must be lowercase", False),
    (["spec", "models", 1, "source"], "oci://r.io/m@sha256:12", "spec.models[1].source",
     "not a valid OCI artifact reference: digest", False),
    (["spec", "models", 0, "source"], DELETE, "spec.models[0].source", "Required value", True),
    (["spec", "models", 0, "source"], 5, "spec.models[0].source",
     "must be a string, got integer 5", True),
    (["spec", "models", 0, "priority"], "high", "spec.models[0].priority",
     'must be an integer, got string "high"', True),
    (["spec", "models", 0, "priority"], 2**31, "spec.models[0].priority", "32-bit", True),
    (["spec", "models", 0, "required"], "yes", "spec.models[0].required",
     "must be a boolean", True),
    (["spec", "models", 0, "url"], "s3://x/", "spec.models[0].url",
     'unknown field "url" (allowed: name, source, priority, required)', True),
    (["spec", "models", 1], "bert", "spec.models[1]", 'got string "bert"', True),
    (["spec", "models"], [], "spec.models", "must list at least one model", True),
    (["spec", "models"], DELETE, "spec.models", "Required value", True),
    (["spec", "model"], [], "spec.model", 'did you mean "models"?', True),
    (["spec", "nodeSelector"], {"matchLabels": {"gpu": 1}},
     "spec.nodeSelector.matchLabels.gpu", "label value must be a string", True),
    (["spec"], DELETE, "spec", "Required value", True),
    (["kind"], "HotImageSet", "kind", 'Unsupported value: "HotImageSet": must be "HotModelSet"',
     False),
    (["metadata", "namespace"], "ml", "metadata.namespace", "cluster-scoped", False),
]


@pytest.mark.parametrize(("where", "value", "path", "message", "in_crd"), INVALID,
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID])
def test_each_invalid_input_names_file_set_path_and_value(tmp_path, where, value, path,
                                                          message, in_crd):
    doc = base_doc()
    _set(doc, where, value)
    file = write(tmp_path, yaml.safe_dump(doc))
    with pytest.raises(ModelListError) as info:
        load_hotmodelsets([file])
    assert isinstance(info.value, NodeagentError)
    line = next(line for line in str(info.value).splitlines() if f": {path}: " in line)
    assert line.startswith(f'invalid model list: {file} document 1 (HotModelSet "serving"): '
                           f"{path}: ")
    assert message in line
    assert len(info.value.problems) == 1, info.value.problems
    assert "nothing was downloaded" in str(info.value)


def test_every_problem_of_every_document_at_once(tmp_path):
    text = VALID + textwrap.dedent("""\
        ---
        apiVersion: nodeagent.io/v1alpha1
        kind: HotModelSet
        metadata: {name: serving}
        spec:
          models:
            - {name: ok, source: "s3://models/ok/"}
            - {name: Bad, source: "ftp://x"}
        """)
    file = write(tmp_path, text)
    with pytest.raises(ModelListError) as info:
        load_hotmodelsets([file])
    assert sorted((p.document, p.path) for p in info.value.problems) == [
        (3, "metadata.name"), (3, "spec.models[1].name"), (3, "spec.models[1].source")]
    assert f'duplicate HotModelSet name "serving" (already defined in {file} document 1)' \
        in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("a: [1, 2\n", "not valid YAML"), ("", "contains no HotModelSet document")])
def test_file_level_problems(tmp_path, text, message):
    file = write(tmp_path, text)
    with pytest.raises(ModelListError, match=message) as info:
        load_hotmodelsets([file])
    assert str(file) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelListError, match=f"{tmp_path}/nope.yaml: file does not exist"):
        load_hotmodelsets([tmp_path / "nope.yaml"])


def test_parse_for_cluster_objects():
    obj = base_doc()
    obj["metadata"].update(resourceVersion="12", uid="u", generation=2)
    assert parse_hotmodelset(obj, "HotModelSet serving").name == "serving"
    obj["spec"]["models"][0]["source"] = "gs://x/"
    with pytest.raises(ModelListError, match=r"HotModelSet serving \(HotModelSet \"serving\"\): "
                                             r"spec.models\[0\].source"):
        parse_hotmodelset(obj, "HotModelSet serving")


# ----------------------------------------------------------------------------- per node


def _set_of(name, *models, selector=None):
    return HotModelSet(name, tuple(ModelEntry(*m) for m in models),
                       parse_label_selector(selector or {}))


def test_merge_selects_merges_and_orders():
    sets = [
        _set_of("a", ("small", "s3://bkt/small/", 1), ("llama", "s3://bkt/llama/", 5)),
        _set_of("b", ("llama", "s3://bkt/llama/", 9, True), ("bert", "oci://r.io/bert:1", 5)),
        _set_of("gpu", ("big", "s3://bkt/big/", 100), selector={"matchLabels": {"gpu": "y"}}),
    ]
    desired = select_and_merge(sets, {})
    assert [m.name for m in desired.models] == ["llama", "bert", "small"]
    llama = desired.models[0]
    assert llama.spec == ModelSpec("llama", "s3://bkt/llama/", 9, True)
    assert llama.sets == ("a", "b")
    assert select_and_merge(sets, {"gpu": "y"}).models[0].name == "big"
    assert desired.conflicts == ()


def test_same_name_different_sources_is_a_conflict_not_a_guess():
    sets = [_set_of("team-a", ("llama", "s3://bkt/llama-v1/", 1), ("bert", "s3://bkt/bert/")),
            _set_of("team-b", ("llama", "s3://bkt/llama-v2/", 9))]
    desired = select_and_merge(sets, {})
    assert [m.name for m in desired.models] == ["bert"]
    [conflict] = desired.conflicts
    assert conflict.name == "llama"
    assert conflict.describe() == (
        'model name "llama" has different sources on this node (HotModelSet "team-a" says '
        's3://bkt/llama-v1/; HotModelSet "team-b" says s3://bkt/llama-v2/)')


def test_conflict_only_among_the_sets_that_select_the_node(tmp_path):
    sets = [_set_of("cpu", ("m", "s3://bkt/cpu/"), selector={"matchLabels": {"pool": "cpu"}}),
            _set_of("gpu", ("m", "s3://bkt/gpu/"), selector={"matchLabels": {"pool": "gpu"}})]
    assert select_and_merge(sets, {"pool": "gpu"}).specs == [ModelSpec("m", "s3://bkt/gpu/")]
    assert select_for_node(sets, None, all_sets=False).specs == []
    assert len(select_for_node(sets, None, all_sets=True).conflicts) == 1


def test_files_with_a_conflict_fail_before_anything(tmp_path):
    doc1, doc2 = base_doc(), base_doc()
    doc2["metadata"]["name"] = "other"
    doc2["spec"]["models"] = [{"name": "llama", "source": "oci://r.io/llama:2"}]
    file = write(tmp_path, yaml.safe_dump_all([doc1, doc2]))
    with pytest.raises(UsageError, match=r'(?s)model name "llama" has different '
                                         r'sources.*nothing was downloaded'):
        load_desired_models(ModelListFiles((file,)))


# ----------------------------------------------------------------------------- CRD schema


def _strict(schema):
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


def test_schema_is_structural_and_in_the_crd():
    crd = crd_manifest("HotModelSet")
    assert crd["metadata"]["name"] == "hotmodelsets.nodeagent.io"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "HotModelSet"
    [version] = crd["spec"]["versions"]
    assert version["schema"]["openAPIV3Schema"] == HOTMODELSET_OBJECT_SCHEMA
    models = HOTMODELSET_OPENAPI_SCHEMA["properties"]["models"]
    assert models["x-kubernetes-list-map-keys"] == ["name"]  # the server rejects duplicates
    assert set(models["items"]["required"]) >= {"name"}  # a list-map key must be required
    json.dumps(crd)


def test_schema_accepts_valid_documents():
    validator = jsonschema.Draft4Validator(_strict(HOTMODELSET_OBJECT_SCHEMA))
    for doc in yaml.safe_load_all(VALID):
        validator.validate(doc)


@pytest.mark.parametrize(("where", "value"), [c[:2] for c in INVALID if c[4]],
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID if c[4]])
def test_schema_rejects_what_openapi_can_express(where, value):
    doc = base_doc()
    _set(doc, where, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_strict(HOTMODELSET_OBJECT_SCHEMA)).validate(doc)


@pytest.mark.parametrize(("where", "value"), [c[:2] for c in INVALID if not c[4]],
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID if not c[4]])
def test_schema_lets_through_only_what_the_agent_checks(where, value):
    doc = base_doc()
    _set(doc, where, value)
    jsonschema.Draft4Validator(_strict(HOTMODELSET_OBJECT_SCHEMA)).validate(doc)
