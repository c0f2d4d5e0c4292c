"""A TEST DOUBLE of the Kubernetes API server, for nodeagent's tests.

This is not Kubernetes. No Kubernetes API server can be installed on the machines this
project is tested on (none is packaged on the reachable registries), so the agent's tests
run against this double instead. It is a real HTTP server (threaded, 127.0.0.1, port 0)
that speaks the real wire protocol of the API for the resources nodeagent uses, so the
agent talks to it through lightkube exactly as it would to a cluster:

- paths ``/api/v1/...`` and ``/apis/<group>/<version>/...``, cluster-scoped and
  namespaced, with the ``status`` subresource on Nodes;
- JSON lists with ``metadata.resourceVersion``; one global, increasing resourceVersion
  (like etcd's revision) stamped on every write;
- ``?watch=true&resourceVersion=N`` chunked streams of ``{"type": ..., "object": ...}``
  lines (ADDED, MODIFIED, DELETED, BOOKMARK with ``allowWatchBookmarks``, ERROR), synthetic
  ADDED events for a watch without a resourceVersion, ``timeoutSeconds`` expiry,
  ``fieldSelector`` (metadata.name / metadata.namespace) and ``labelSelector`` (equality
  and set-based: ``in``, ``notin``, ``key``, ``!key``);
- many concurrent watches cheaply: a write is routed to the watches whose selector
  matches it and encoded once (like the API server's watch cache), so a thousand
  watchers cost nothing while nothing changes;
- ``410 Gone`` when a resourceVersion is older than the compacted history: as an ERROR
  event carrying a Status with code 410 on a watch (or an HTTP 410, by switch), and as an
  HTTP 410 on a list from a stale resourceVersion;
- create (409 AlreadyExists), update with optimistic concurrency (409 Conflict on a stale
  resourceVersion), delete, get (404 NotFound as a Status);
- PATCH as JSON merge patch, strategic merge patch (list merge keys for the fields the
  agent uses, e.g. node conditions by ``type``) and JSON patch with the ``test`` op
  (failure is a 422, as the real server answers); a ``metadata.resourceVersion`` in a
  merge patch is a precondition (409 when stale);
- admission validation of nodeagent.io objects against their CRD's openAPIV3Schema when
  given (``crd_schema`` for HotImageSet, ``crd_schemas`` by kind), list-map keys included.

Tests control it from the outside: ``stop()``/``start()`` (the API server goes away and
comes back on the same port), ``drop_connections()`` (connections cut mid-stream),
``compact()`` (history dropped: watches from older versions get 410), ``fail()`` (inject
an error status), request ``hooks`` (run just before a request is handled, e.g. to make
a concurrent change), and ``requests`` (every call made, with its time and answer, for
the RBAC test and for request counts: ``counts()``).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = (
    Kind("", "v1", "nodes", "Node", namespaced=False, status_subresource=True),
    Kind("", "v1", "secrets", "Secret", namespaced=True),
    Kind("", "v1", "events", "Event", namespaced=True),
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    Kind("events.k8s.io", "v1", "events", "Event", namespaced=True),
    Kind("nodeagent.io", "v1alpha1", "hotimagesets", "HotImageSet", namespaced=False),
    Kind("nodeagent.io", "v1alpha1", "hotmodelsets", "HotModelSet", namespaced=False),
)
_KIND_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}

# Strategic-merge-patch list merge keys (patchMergeKey) for the fields nodeagent patches;
# other lists are replaced, as for fields without a patch strategy (e.g. spec.taints).
MERGE_KEYS = {
    ("Node", "status.conditions"): "type",
    ("Node", "status.addresses"): "address",
    ("Node", "metadata.finalizers"): None,
    ("Node", "metadata.ownerReferences"): "uid",
}


@dataclass
class Request:
    """One API call as RBAC sees it (verb, group, resource, subresource) plus details."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    method: str
    path: str
    params: dict[str, str]
    content_type: str = ""
    body: Any = None
    user_agent: str = ""
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when the request arrived


class ApiFailure(Exception):
    """Answered as a metav1.Status with this HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Event:
    rv: int
    kind: Kind
    type: str
    obj: dict
    _line: bytes | None = None

    def line(self) -> bytes:
        """The event as one watch-stream line, encoded once for every watcher."""
        if self._line is None:
            self._line = json.dumps({"type": self.type, "object": self.obj}).encode() + b"\n"
        return self._line


@dataclass
class _Failure:
    verb: str | None
    resource: str | None
    subresource: str | None
    code: int
    times: int


class _Watcher:
    """One open watch: the store appends matching events; its thread waits on ``wake``."""

    def __init__(self, store: Store, kind: Kind, namespace: str, selector: Selector) -> None:
        self.kind, self.namespace, self.selector = kind, namespace, selector
        self.pending: deque[_Event] = deque()
        self.wake = threading.Condition(store.lock)

    def wants(self, event: _Event) -> bool:
        if self.namespace and event.obj["metadata"].get("namespace", "") != self.namespace:
            return False
        return self.selector.matches(event.obj)


class Store:
    """Objects + history of changes, guarded by one lock; watchers are woken by routing."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[Kind, str, str], dict] = {}
        self.history: list[_Event] = []
        self.history_rvs: list[int] = []
        self.rv = 100
        self.compacted_rv = 100
        self.max_history = 10_000
        self.watchers: dict[Kind, set[_Watcher]] = {}

    def _record(self, kind: Kind, event_type: str, obj: dict) -> None:
        event = _Event(self.rv, kind, event_type, copy.deepcopy(obj))
        self.history.append(event)
        self.history_rvs.append(event.rv)
        if len(self.history) > self.max_history:
            cut = len(self.history) - self.max_history
            self.compacted_rv = self.history[cut - 1].rv
            del self.history[:cut]
            del self.history_rvs[:cut]
        for watcher in self.watchers.get(kind, ()):
            if watcher.wants(event):
                watcher.pending.append(event)
                watcher.wake.notify()

    def events_after(self, kind: Kind, rv: int) -> list[_Event]:
        """Recorded events of ``kind`` newer than ``rv`` (a watch resuming from it)."""
        start = bisect.bisect_right(self.history_rvs, rv)
        return [ev for ev in self.history[start:] if ev.kind == kind]

    def wake_all(self) -> None:
        for watchers in self.watchers.values():
            for watcher in watchers:
                watcher.wake.notify()

    def write(self, kind: Kind, obj: dict, event_type: str) -> dict:
        """Store ``obj`` at a new resourceVersion; record the event. Caller holds lock."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.rv)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        key = (kind, meta.get("namespace", ""), meta["name"])
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._record(kind, event_type, obj)
        return copy.deepcopy(obj)

    def items(self, kind: Kind, namespace: str, selector: Selector | None = None) -> list[dict]:
        """Copies of the stored objects (sorted by namespace and name), selected first."""
        chosen = [((ns, name), o) for (k, ns, name), o in self.objects.items()
                  if k == kind and (not namespace or ns == namespace)
                  and (selector is None or selector.matches(o))]
        return [copy.deepcopy(o) for _, o in sorted(chosen, key=lambda kv: kv[0])]

    def compact(self) -> None:
        with self.lock:
            self.compacted_rv = self.rv
            self.history.clear()
            self.history_rvs.clear()


class KubeApiDouble:
    """The test double's control surface; see the module docstring."""

    def __init__(self, crd_schema: dict | None = None,
                 crd_schemas: dict[str, dict] | None = None) -> None:
        self.store = Store()
        self.crd_schemas = dict(crd_schemas or {})
        if crd_schema is not None:
            self.crd_schemas["HotImageSet"] = crd_schema
        self.requests: list[Request] = []
        self.hooks: list[Callable[[Request], None]] = []
        self.watch_gone_as_http = False
        self.bookmark_interval_s = 1.0
        self._failures: list[_Failure] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._generation = 0  # bumped to end all open watch streams abruptly
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeApiDouble:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = _Server(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API server goes away: stop listening and cut every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        self.drop_connections()

    def drop_connections(self) -> None:
        """Cut every open connection without a clean end (like a crashed server/LB)."""
        with self.store.lock:
            self._generation += 1
            self.store.wake_all()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> KubeApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self) -> dict:
        """A kubeconfig document pointing at the double (plain HTTP, no auth)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "double", "user": {}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "double"}}],
            "current-context": "double",
        }

    # -- test-side control ---------------------------------------------------------------

    def compact(self) -> None:
        self.store.compact()

    def fail(self, code: int, *, verb: str | None = None, resource: str | None = None,
             subresource: str | None = None, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with HTTP ``code``."""
        with self.store.lock:
            self._failures.append(_Failure(verb, resource, subresource, code, times))

    def calls(self, verb: str | None = None, resource: str | None = None,
              subresource: str | None = None) -> list[Request]:
        return [
            r for r in list(self.requests)
            if (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (subresource is None or r.subresource == subresource)
        ]

    def counts(self, since: float = 0.0) -> Counter[tuple[str, str]]:
        """Requests per (verb, resource) that arrived at or after ``since`` (monotonic)."""
        return Counter((r.verb, r.resource) for r in list(self.requests) if r.at >= since)

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

    def _take_failure(self, req: Request) -> int | None:
        with self.store.lock:
            for f in self._failures:
                if f.times > 0 and f.verb in (None, req.verb) \
                        and f.resource in (None, req.resource) \
                        and f.subresource in (None, req.subresource):
                    f.times -= 1
                    return f.code
        return None

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

    def watch_events(self, req: Request, kind: Kind) -> Iterator[dict | _Event | None]:
        """Yield watch events (dicts or recorded events), None when idle; ends at
        timeoutSeconds. Writes are routed to this watch by the store (no scanning)."""
        timeout = float(req.params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        bookmarks = req.params.get("allowWatchBookmarks") == "true"
        rv_param = req.params.get("resourceVersion", "")
        selector = Selector.parse(req.params)
        watcher = _Watcher(self.store, kind, req.namespace, selector)
        with self.store.lock:
            generation = self._generation
            if rv_param in ("", "0"):
                first: list[dict | _Event] = [
                    {"type": "ADDED", "object": o}
                    for o in self.store.items(kind, req.namespace, selector)]
            elif int(rv_param) < self.store.compacted_rv:
                gone = status_body(410, "Expired", f"too old resource version: {rv_param} "
                                   f"({self.store.compacted_rv})")
                yield {"type": "ERROR", "object": gone}
                return
            else:
                first = [ev for ev in self.store.events_after(kind, int(rv_param))
                         if watcher.wants(ev)]
            self.store.watchers.setdefault(kind, set()).add(watcher)
        try:
            yield from first
            yield None  # flush: the initial events go out together
            last_bookmark = time.monotonic()
            while True:
                with self.store.lock:
                    if self._generation != generation:
                        raise ConnectionAbortedError("connections dropped")
                    if not watcher.pending:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        watcher.wake.wait(min(remaining, self.bookmark_interval_s
                                              if bookmarks else 5.0))
                        if self._generation != generation:
                            raise ConnectionAbortedError("connections dropped")
                    batch = list(watcher.pending)
                    watcher.pending.clear()
                    if bookmarks and not batch \
                            and time.monotonic() - last_bookmark >= self.bookmark_interval_s:
                        last_bookmark = time.monotonic()
                        batch = [{"type": "BOOKMARK", "object": {
                            "kind": kind.kind, "apiVersion": kind.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv)}}}]
                yield from batch
                yield None  # flush what came together
        finally:
            with self.store.lock:
                self.store.watchers.get(kind, set()).discard(watcher)


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


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict) -> bool:
        present, value = self.key in labels, labels.get(self.key)
        if self.op == "=":
            return value in self.values
        if self.op == "!=":
            return value not in self.values
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present  # "!"


@dataclass(frozen=True)
class Selector:
    """A watch/list's fieldSelector and labelSelector, parsed once."""

    fields: tuple[tuple[str, str], ...] = ()
    labels: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, params: dict[str, str]) -> Selector:
        fields = []
        for term in filter(None, params.get("fieldSelector", "").split(",")):
            key, _, value = term.partition("=")
            if key not in ("metadata.name", "metadata.namespace"):
                raise ApiFailure(400, "BadRequest", f'field label not supported: "{key}"')
            fields.append((key, value.lstrip("=")))
        return cls(tuple(fields), tuple(_label_requirements(params.get("labelSelector", ""))))

    def matches(self, obj: dict) -> bool:
        meta = obj.get("metadata", {})
        for key, value in self.fields:
            if meta.get(key.split(".", 1)[1], "") != value:
                return False
        labels = meta.get("labels") or {}
        return all(req.matches(labels) for req in self.labels)


_SET_TERM = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _label_requirements(text: str) -> Iterator[_Requirement]:
    """Parse a labelSelector (commas inside ``in (...)`` sets do not split terms)."""
    depth, term = 0, ""
    terms = []
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(term)
            term = ""
        else:
            term += ch
    terms.append(term)
    for raw in filter(None, (t.strip() for t in terms)):
        if match := _SET_TERM.match(raw):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            yield _Requirement(match.group(1), match.group(2), values)
        elif "!=" in raw:
            key, value = raw.split("!=", 1)
            yield _Requirement(key.strip(), "!=", frozenset([value.strip()]))
        elif "=" in raw:
            key, value = raw.split("=", 1)
            yield _Requirement(key.strip(), "=", frozenset([value.lstrip("=").strip()]))
        elif raw.startswith("!"):
            yield _Requirement(raw[1:].strip(), "!")
        else:
            yield _Requirement(raw, "exists")


def _selected(obj: dict, params: dict[str, str]) -> bool:
    return Selector.parse(params).matches(obj)


# -- patches ------------------------------------------------------------------------------


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


# -- OpenAPI v3 (structural schema) validation, the subset CRDs use -------------------------


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


# -- HTTP ---------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # a thousand simulated nodes connect at once
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # a client hanging up is normal


class _Handler(BaseHTTPRequestHandler):
    api: KubeApiDouble
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold every answer on a kept-alive connection ~40 ms
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read api.requests instead

    def setup(self) -> None:
        super().setup()
        with self.api._conn_lock:
            self.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.api._conn_lock:
            self.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            req, kind = self._parse(method)
        except ApiFailure as exc:
            self._send_json(exc.code, status_body(exc.code, exc.reason, exc.message))
            return
        self.api.requests.append(req)
        try:
            for hook in list(self.api.hooks):
                hook(req)
            code = self.api._take_failure(req)
            if code is not None:
                raise ApiFailure(code, "InternalError" if code >= 500 else "Injected",
                                 f"injected failure {code}")
            if req.verb == "watch":
                self._stream_watch(req, kind)
                return
            code, body = self.api.handle(req, kind)
        except ApiFailure as exc:
            req.status = exc.code
            self._send_json(exc.code, status_body(exc.code, exc.reason, exc.message,
                                                  exc.details))
            return
        req.status = code
        self._send_json(code, body)

    def _parse(self, method: str) -> tuple[Request, Kind]:
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segs = [s for s in parts.path.split("/") if s]
        if segs[:1] == ["api"] and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs[:1] == ["apis"] and len(segs) >= 3:
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiFailure(404, "NotFound", f"the server could not find {parts.path}")
        kind = _KIND_BY_PATH.get((group, version, rest[0]))
        if kind is None:
            raise ApiFailure(404, "NotFound", "the server could not find the requested "
                             f"resource ({group}/{version} {rest[0]})")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and kind.status_subresource):
            raise ApiFailure(404, "NotFound", f"no subresource {sub!r} on {kind.plural}")
        verb = _verb(method, bool(name), params.get("watch") in ("true", "1"))
        body = self._read_body()
        return Request(verb, group, kind.plural, sub, namespace, name, method, parts.path,
                       params, self.headers.get("Content-Type", ""), body,
                       self.headers.get("User-Agent", "")), kind

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiFailure(400, "BadRequest", "request body is not valid JSON") from None

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        with contextlib.suppress(OSError):
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _stream_watch(self, req: Request, kind: Kind) -> None:
        events = self.api.watch_events(req, kind)
        first = next(events, None)
        if self.api.watch_gone_as_http and isinstance(first, dict) and first["type"] == "ERROR":
            obj = first["object"]
            req.status = obj["code"]
            self._send_json(obj["code"], obj)
            return
        req.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            lines: list[bytes] = [_encode(first)] if first is not None else []
            for event in events:
                if event is not None:
                    lines.append(_encode(event))
                    if len(lines) < 64:
                        continue  # events that came together go out in one chunk
                if lines:
                    self._chunk(b"".join(lines))
                    lines = []
            if lines:
                self._chunk(b"".join(lines))
            self._chunk(b"")  # clean end of stream (timeoutSeconds reached)
        except (ConnectionAbortedError, OSError):
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        finally:
            events.close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _encode(event: dict | _Event) -> bytes:
    return event.line() if isinstance(event, _Event) else json.dumps(event).encode() + b"\n"


def _verb(method: str, named: bool, watch: bool) -> str:
    if method == "GET":
        if watch:
            return "watch"
        return "get" if named else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


@dataclass
class RbacRule:
    api_groups: list[str]
    resources: list[str]
    verbs: list[str]
    resource_names: list[str] = field(default_factory=list)


def rbac_allows(rules: list[RbacRule], req: Request) -> bool:
    """Whether RBAC ``rules`` allow ``req`` (as the authorizer matches them)."""
    resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    for rule in rules:
        if req.group not in rule.api_groups and "*" not in rule.api_groups:
            continue
        if resource not in rule.resources and "*" not in rule.resources:
            continue
        if req.verb not in rule.verbs and "*" not in rule.verbs:
            continue
        if rule.resource_names and _target_name(req) not in rule.resource_names:
            continue
        return True
    return False


def _target_name(req: Request) -> str:
    """The object a request is about; a list/watch names one only via metadata.name."""
    if req.verb == "create":
        return ""
    if req.verb in ("list", "watch"):
        terms = req.params.get("fieldSelector", "").split(",")
        names = [t.split("=", 1)[1].lstrip("=") for t in terms if t.startswith("metadata.name=")]
        return names[0] if len(names) == 1 else ""
    return req.name
