"""Admission validation of a custom object against its CRD's openAPIV3Schema (structural
schema, the keywords CRDs use, list-map keys included), with the server's messages."""

from __future__ import annotations

import json
import re
from typing import Any


def validate_openapi(schema: dict, value: Any, path: str = "") -> list[tuple[str, str]]:
    """Validate like the API server does for a CRD's openAPIV3Schema (common keywords).

    Returns (field path, message) pairs; empty when valid. ``metadata`` is not checked
    beyond what the server itself checks.
    """
    problems: list[tuple[str, str]] = []
    _check(schema, value, path, problems)
    return problems


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
    "integer": int, "number": (int, float),
}


def _check(schema: dict, value: Any, path: str, out: list[tuple[str, str]]) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            out.append((where, "Invalid value: null"))
        return
    stype = schema.get("type")
    if stype:
        expected = _TYPES[stype]
        if not isinstance(value, expected) or (stype in ("integer", "number")
                                               and isinstance(value, bool)):
            out.append((where, f'Invalid value: "{type(value).__name__}": {where} in body '
                        f"must be of type {stype}"))
            return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        out.append((where, f"Unsupported value: {json.dumps(value)}: supported values: "
                    f"{allowed}"))
    _check_scalar(schema, value, where, out)
    if isinstance(value, dict):
        _check_object(schema, value, path, out)
    elif isinstance(value, list):
        _check_array(schema, value, path, out)
    for sub in schema.get("allOf", []):
        _check(sub, value, path, out)
    if "oneOf" in schema:
        ok = [s for s in schema["oneOf"] if not validate_openapi(s, value, path)]
        if len(ok) != 1:
            out.append((where, "Invalid value: must match exactly one schema in oneOf"))
    if "anyOf" in schema and not any(not validate_openapi(s, value, path)
                                     for s in schema["anyOf"]):
        out.append((where, "Invalid value: must match at least one schema in anyOf"))
    if "not" in schema and not validate_openapi(schema["not"], value, path):
        out.append((where, "Invalid value: must not match the schema in not"))


def _check_scalar(schema: dict, value: Any, where: str, out: list) -> None:
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append((where, f'Invalid value: "{value}": {where} in body should match '
                        f"'{schema['pattern']}'"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append((where, f"Invalid value: {where} in body should be at least "
                        f"{schema['minLength']} chars long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append((where, f"Too long: may not be more than {schema['maxLength']} bytes"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append((where, f"Invalid value: {value}: {where} in body should be greater "
                        f"than or equal to {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            out.append((where, f"Invalid value: {value}: {where} in body should be less "
                        f"than or equal to {schema['maximum']}"))


def _check_object(schema: dict, value: dict, path: str, out: list) -> None:
    props = schema.get("properties", {})
    for req in schema.get("required", []):
        if req not in value:
            out.append((f"{path}.{req}" if path else req, "Required value"))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        out.append((path or "<root>", f"Invalid value: should have at least "
                    f"{schema['minProperties']} properties"))
    for key, sub in value.items():
        child = f"{path}.{key}" if path else key
        if not path and key in ("apiVersion", "kind", "metadata"):
            continue
        if key in props:
            _check(props[key], sub, child, out)
        elif isinstance(schema.get("additionalProperties"), dict):
            _check(schema["additionalProperties"], sub, child, out)
        elif schema.get("additionalProperties") is False or (
            props and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out.append((child, "Forbidden: unknown field"))


def _check_array(schema: dict, value: list, path: str, out: list) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append((path, f"Invalid value: {path} in body should have at least "
                    f"{schema['minItems']} items"))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append((path, f"Too many: {len(value)}: must have at most {schema['maxItems']} "
                    "items"))
    keys = schema.get("x-kubernetes-list-map-keys") if schema.get(
        "x-kubernetes-list-type") == "map" else None
    seen: set = set()
    for i, item in enumerate(value):
        if "items" in schema:
            _check(schema["items"], item, f"{path}[{i}]", out)
        if keys and isinstance(item, dict):
            key = tuple(json.dumps(item.get(k)) for k in keys)
            if key in seen:
                shown = dict(zip(keys, key, strict=True))
                out.append((f"{path}[{i}]", f"Duplicate value: {shown}"))
            seen.add(key)

