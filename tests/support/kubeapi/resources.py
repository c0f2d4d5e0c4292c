"""The API's verbs on stored objects: get, list, create (409 AlreadyExists), update with
optimistic concurrency (409 Conflict), patch, delete, the ``status`` subresource, CRD
admission validation, and the same operations for tests to call directly."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .kinds import KINDS, Kind
from .openapi import validate_openapi
from .patches import apply_patch
from .recording import Request
from .selectors import Selector
from .status import ApiFailure, status_body
from .store import Store


class ObjectApi:
    """Reads and writes of objects, from the HTTP handler (``handle``) or from a test."""

    store: Store

    def __init__(self, crd_schema: dict | None = None,
                 crd_schemas: dict[str, dict] | None = None) -> None:
        self.crd_schemas = dict(crd_schemas or {})
        if crd_schema is not None:
            self.crd_schemas["HotImageSet"] = crd_schema

    # -- test-side access ----------------------------------------------------------------

    def kind(self, plural: str, group: str = "") -> Kind:
        return next(k for k in KINDS if k.plural == plural and k.group == group)

    def create(self, plural: str, obj: dict, group: str = "", validate: bool = True) -> dict:
        kind = self.kind(plural, group)
        with self.store.lock:
            return self._create(kind, copy.deepcopy(obj), validate=validate)

    def get(self, plural: str, name: str, namespace: str = "", group: str = "") -> dict | None:
        kind = self.kind(plural, group)
        with self.store.lock:
            obj = self.store.objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, plural: str, namespace: str = "", group: str = "") -> list[dict]:
        with self.store.lock:
            return self.store.items(self.kind(plural, group), namespace)

    def update(self, plural: str, name: str, mutate: Callable[[dict], None],
               namespace: str = "", group: str = "", validate: bool = True) -> dict:
        """Apply ``mutate`` to the stored object and write it (a MODIFIED event)."""
        kind = self.kind(plural, group)
        with self.store.lock:
            obj = copy.deepcopy(self.store.objects[(kind, namespace, name)])
            mutate(obj)
            if validate:
                self._validate(kind, obj)
            return self.store.write(kind, obj, "MODIFIED")

    def delete(self, plural: str, name: str, namespace: str = "", group: str = "") -> None:
        kind = self.kind(plural, group)
        with self.store.lock:
            obj = copy.deepcopy(self.store.objects[(kind, namespace, name)])
            self.store.write(kind, obj, "DELETED")

    # -- request handling (server threads) ---------------------------------------------

    def _create(self, kind: Kind, obj: dict, validate: bool = True) -> dict:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiFailure(422, "Invalid", f"{kind.kind} is invalid: metadata.name: "
                                 "Required value: name or generateName is required")
        key = (kind, meta.get("namespace", ""), meta["name"])
        if key in self.store.objects:
            raise ApiFailure(409, "AlreadyExists",
                             f'{kind.plural} "{meta["name"]}" already exists',
                             {"name": meta["name"], "kind": kind.plural})
        if validate:
            self._validate(kind, obj)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1
        meta.pop("resourceVersion", None)
        return self.store.write(kind, obj, "ADDED")

    def _validate(self, kind: Kind, obj: dict) -> None:
        schema = self.crd_schemas.get(kind.kind)
        if schema is None:
            return
        problems = validate_openapi(schema, obj)
        if problems:
            name = obj.get("metadata", {}).get("name", "")
            causes = [{"field": path, "message": msg} for path, msg in problems]
            text = ", ".join(f"{path}: {msg}" for path, msg in problems)
            raise ApiFailure(422, "Invalid",
                             f'{kind.kind}.nodeagent.io "{name}" is invalid: {text}',
                             {"name": name, "kind": kind.kind, "causes": causes})

    def handle(self, req: Request, kind: Kind) -> tuple[int, Any]:
        """Non-watch requests; returns (HTTP code, JSON body)."""
        with self.store.lock:
            if req.verb == "list":
                return 200, self._list(req, kind)
            key = (kind, req.namespace, req.name)
            if req.verb == "create":
                body = req.body or {}
                if kind.namespaced:
                    body.setdefault("metadata", {}).setdefault("namespace", req.namespace)
                return 201, self._create(kind, body)
            current = self.store.objects.get(key)
            if current is None:
                raise ApiFailure(404, "NotFound", f'{kind.plural} "{req.name}" not found',
                                 {"name": req.name, "kind": kind.plural})
            if req.verb == "get":
                return 200, copy.deepcopy(current)
            if req.verb == "delete":
                self.store.write(kind, copy.deepcopy(current), "DELETED")
                return 200, status_body(200, "", "deleted") | {"status": "Success"}
            if req.verb == "update":
                new = req.body or {}
                _check_precondition(kind, req.name, current, new)
            elif req.verb == "patch":
                new = apply_patch(kind, current, req.content_type, req.body)
                _check_precondition(kind, req.name, current, req.body
                                    if isinstance(req.body, dict) else {})
            else:
                raise ApiFailure(405, "MethodNotAllowed", f"{req.verb} is not supported")
            return 200, self._store_update(kind, req, current, new)

    def _store_update(self, kind: Kind, req: Request, current: dict, new: dict) -> dict:
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
        if kind.status_subresource:
            if req.subresource == "status":
                # The status subresource changes only .status.
                kept = copy.deepcopy(current)
                kept["status"] = new.get("status", {})
                new = kept
            else:
                new["status"] = copy.deepcopy(current.get("status", {}))
        self._validate(kind, new)
        if _without_rv(new) == _without_rv(current):
            return copy.deepcopy(current)  # no-op writes do not bump resourceVersion
        if new.get("spec") != current.get("spec"):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        return self.store.write(kind, new, "MODIFIED")

    def _list(self, req: Request, kind: Kind) -> dict:
        rv = req.params.get("resourceVersion", "")
        if rv not in ("", "0") and int(rv) < self.store.compacted_rv:
            raise ApiFailure(410, "Expired", f"too old resource version: {rv} "
                             f"({self.store.compacted_rv})")
        items = self.store.items(kind, req.namespace, Selector.parse(req.params))
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": items,
        }


def _without_rv(obj: dict) -> dict:
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    out.get("metadata", {}).pop("generation", None)
    return out


def _check_precondition(kind: Kind, name: str, current: dict, new: dict) -> None:
    wanted = (new.get("metadata") or {}).get("resourceVersion")
    if wanted and wanted != current["metadata"]["resourceVersion"]:
        raise ApiFailure(
            409, "Conflict",
            f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            {"name": name, "kind": kind.plural},
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
