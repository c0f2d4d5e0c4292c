"""The HotImageSet CRD's OpenAPI schema agrees with the file loader: structural, accepts
the valid documents, rejects what it can express of the invalid inputs (the rest only the
agent checks), and has the loader's defaults."""

import copy
import json

import jsonschema
import pytest
import yaml
from support.hotlist_cases import INVALID, VALID, base_doc, set_at

from nodeagent.api.hotimageset import HotImageSet
from nodeagent.api.hotimageset_schema import HOTIMAGESET_OBJECT_SCHEMA, HOTIMAGESET_OPENAPI_SCHEMA

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
    set_at(doc, where, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_strict(HOTIMAGESET_OBJECT_SCHEMA)).validate(doc)


AGENT_ONLY = [c[:2] for c in INVALID if not c[4]]


@pytest.mark.parametrize(("where", "value"), AGENT_ONLY,
                         ids=[c[2] + ":" + c[3][:20] for c in INVALID if not c[4]])
def test_schema_lets_through_only_what_the_agent_checks(where, value):
    """Keeps the in_crd flags honest: these pass the CRD schema, so the agent must check."""
    doc = base_doc()
    set_at(doc, where, value)
    jsonschema.Draft4Validator(_strict(HOTIMAGESET_OBJECT_SCHEMA)).validate(doc)


def test_schema_defaults_match_loader():
    props = HOTIMAGESET_OPENAPI_SCHEMA["properties"]
    assert props["pin"]["default"] is HotImageSet.__dataclass_fields__["pin"].default
    assert props["priority"]["default"] == HotImageSet.__dataclass_fields__["priority"].default
    assert props["images"]["items"]["properties"]["required"]["default"] is False
    assert props["nodeSelector"]["properties"]["matchExpressions"]["items"]["properties"][
        "operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
