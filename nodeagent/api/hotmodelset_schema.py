"""HotModelSet's structural OpenAPI v3 schema, for its CRD (apiextensions.k8s.io/v1).

As for HotImageSet (``hotimageset_schema.py``): unknown fields are pruned by the API
server and rejected by kubectl's strict field validation. ``spec.models`` is a list map
keyed by ``name``, so the API server itself rejects two models of one set with the same
name. The agent re-validates every object with ``hotmodelset.parse_hotmodelset``, which
also checks what OpenAPI cannot express (the source URL grammar); a test keeps the two
in agreement.
"""

from __future__ import annotations

from typing import Any

from nodeagent.api.selector import LABEL_SELECTOR_SCHEMA
from nodeagent.api.validation import DNS_LABEL_RE, INT32_MAX, INT32_MIN

HOTMODELSET_OPENAPI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "ML models that matching nodes keep in their local model cache.",
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "minItems": 1,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "items": {
                "type": "object",
                "required": ["name", "source"],
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "DNS-1123 label: the model's directory in the cache.",
                        "minLength": 1,
                        "maxLength": 63,
                        "pattern": f"^{DNS_LABEL_RE}$",
                    },
                    "source": {
                        "type": "string",
                        "description": "s3://bucket/prefix/ (every object below it), "
                                       "s3://bucket/key, or oci://registry/repo:tag|@digest "
                                       "(an ORAS-style artifact).",
                        "minLength": 6,
                        "maxLength": 1024,
                        "pattern": r"^(s3|oci)://[^\s]+$",
                    },
                    "priority": {"type": "integer", "format": "int32", "default": 0,
                                 "minimum": INT32_MIN, "maximum": INT32_MAX,
                                 "description": "Higher is fetched first and evicted last."},
                    "required": {"type": "boolean", "default": False,
                                 "description": "The node's startup taint waits for this "
                                                "model."},
                },
            },
        },
        "nodeSelector": LABEL_SELECTOR_SCHEMA,
    },
}
# The whole object (openAPIV3Schema).
HOTMODELSET_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": HOTMODELSET_OPENAPI_SCHEMA,
    },
}
# What `kubectl get hotmodelsets` shows.
HOTMODELSET_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Models", "type": "string", "jsonPath": ".spec.models[*].name",
     "description": "Names of the set's models"},
    {"name": "Sources", "type": "string", "jsonPath": ".spec.models[*].source",
     "priority": 1, "description": "Where each model comes from"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
