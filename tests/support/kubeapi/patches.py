"""PATCH bodies applied as the API server applies them: JSON merge patch (RFC 7386),
strategic merge patch (list merge keys for the fields nodeagent patches) and JSON patch
(RFC 6902, a failed ``test`` is a 422)."""

from __future__ import annotations

import copy
from typing import Any

from .kinds import Kind
from .status import ApiFailure

# Strategic-merge-patch list merge keys (patchMergeKey) for the fields nodeagent patches;
# other lists are replaced, as for fields without a patch strategy (e.g. spec.taints).
MERGE_KEYS = {
    ("Node", "status.conditions"): "type",
    ("Node", "status.addresses"): "address",
    ("Node", "metadata.finalizers"): None,
    ("Node", "metadata.ownerReferences"): "uid",
}


def apply_patch(kind: Kind, current: dict, content_type: str, patch: Any) -> dict:
    ctype = content_type.split(";")[0].strip()
    if ctype == "application/merge-patch+json":
        if not isinstance(patch, dict):
            raise ApiFailure(400, "BadRequest", "merge patch must be a JSON object")
        return merge_patch(copy.deepcopy(current), patch)
    if ctype == "application/strategic-merge-patch+json":
        if not isinstance(patch, dict):
            raise ApiFailure(400, "BadRequest", "strategic merge patch must be a JSON object")
        return strategic_merge(kind.kind, copy.deepcopy(current), patch, "")
    if ctype == "application/json-patch+json":
        if not isinstance(patch, list):
            raise ApiFailure(400, "BadRequest", "JSON patch must be a JSON array")
        return json_patch(copy.deepcopy(current), patch)
    raise ApiFailure(415, "UnsupportedMediaType",
                     f"the body of the request was in an unknown format - accepted media "
                     f"types include: application/json-patch+json, application/merge-patch+json, "
                     f"application/strategic-merge-patch+json; got {ctype!r}")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def strategic_merge(kind: str, target: Any, patch: Any, path: str) -> Any:
    """Strategic merge for the fields nodeagent patches (see MERGE_KEYS)."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        sub = f"{path}.{key}" if path else key
        if value is None:
            target.pop(key, None)
        elif isinstance(value, list) and (kind, sub) in MERGE_KEYS \
                and MERGE_KEYS[(kind, sub)] is not None:
            target[key] = _merge_list(kind, target.get(key) or [], value, sub,
                                      MERGE_KEYS[(kind, sub)])
        elif isinstance(value, dict):
            target[key] = strategic_merge(kind, target.get(key) or {}, value, sub)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _merge_list(kind: str, current: list, patch: list, path: str, merge_key: str) -> list:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiFailure(422, "Invalid", f"{path}: items must have the merge key "
                             f"{merge_key!r}")
        idx = next((i for i, cur in enumerate(out) if cur.get(merge_key) == item[merge_key]),
                   None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(copy.deepcopy(item))
        else:
            out[idx] = strategic_merge(kind, out[idx], item, path)
    return out


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902, including ``test`` (a failed test is a 422, like the real server)."""
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiFailure(400, "BadRequest", f"JSON patch operation {n} is malformed")
        kind = op["op"]
        if kind == "test":
            if _pointer_get(doc, op["path"]) != op.get("value"):
                raise ApiFailure(422, "Invalid",
                                 f"the server rejected our request due to an error in our "
                                 f"request: testing value {op['path']} failed")
        elif kind == "add":
            doc = _pointer_set(doc, op["path"], copy.deepcopy(op["value"]), insert=True)
        elif kind == "replace":
            _pointer_get(doc, op["path"])
            doc = _pointer_set(doc, op["path"], copy.deepcopy(op["value"]), insert=False)
        elif kind == "remove":
            doc = _pointer_remove(doc, op["path"])
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_pointer_get(doc, op["from"]))
            if kind == "move":
                doc = _pointer_remove(doc, op["from"])
            doc = _pointer_set(doc, op["path"], value, insert=True)
        else:
            raise ApiFailure(400, "BadRequest", f"unknown JSON patch op {kind!r}")
    return doc


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ApiFailure(422, "Invalid", f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _pointer_get(doc: Any, pointer: str) -> Any:
    cur = doc
    for tok in _tokens(pointer):
        try:
            cur = cur[int(tok)] if isinstance(cur, list) else cur[tok]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiFailure(422, "Invalid", f"the server rejected our request: "
                             f"path {pointer} does not exist") from None
    return cur


def _pointer_set(doc: Any, pointer: str, value: Any, insert: bool) -> Any:
    toks = _tokens(pointer)
    if not toks:
        return value
    parent = _pointer_get(doc, "/" + "/".join(t.replace("~", "~0").replace("/", "~1")
                                               for t in toks[:-1]) if toks[:-1] else "")
    last = toks[-1]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if idx > len(parent):
            raise ApiFailure(422, "Invalid", f"index out of range in {pointer}")
        if insert:
            parent.insert(idx, value)
        else:
            parent[idx] = value
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiFailure(422, "Invalid", f"cannot set {pointer}")
    return doc


def _pointer_remove(doc: Any, pointer: str) -> Any:
    toks = _tokens(pointer)
    _pointer_get(doc, pointer)
    parent = _pointer_get(doc, "/" + "/".join(toks[:-1]) if toks[:-1] else "")
    if isinstance(parent, list):
        parent.pop(int(toks[-1]))
    else:
        parent.pop(toks[-1])
    return doc

