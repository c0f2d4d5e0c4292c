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

Modules, one concern each: ``kinds`` (resources served), ``status`` (Status failures),
``store`` (objects, resourceVersions, history), ``selectors`` (field/label selectors),
``patches`` (merge, strategic merge, JSON patch), ``openapi`` (CRD schema validation),
``resources`` (the verbs), ``watch`` (watch fan-out and streams), ``recording`` (requests,
hooks, injected failures), ``handler`` (HTTP routing), ``server`` (``KubeApiDouble`` and its
lifecycle), ``rbac`` (RBAC rules matched against recorded requests).
"""

from .kinds import KINDS, Kind
from .openapi import validate_openapi
from .patches import MERGE_KEYS, apply_patch, json_patch, merge_patch, strategic_merge
from .rbac import RbacRule, rbac_allows
from .recording import Request
from .selectors import Selector
from .server import KubeApiDouble
from .status import ApiFailure, status_body
from .store import Store

__all__ = [
    "KINDS",
    "MERGE_KEYS",
    "ApiFailure",
    "Kind",
    "KubeApiDouble",
    "RbacRule",
    "Request",
    "Selector",
    "Store",
    "apply_patch",
    "json_patch",
    "merge_patch",
    "rbac_allows",
    "status_body",
    "strategic_merge",
    "validate_openapi",
]
