"""HotImageSet's structural OpenAPI v3 schema, for its CRD (apiextensions.k8s.io/v1).

Unknown fields are not listed with additionalProperties: false (a CRD may not use it);
a structural schema without x-kubernetes-preserve-unknown-fields makes the API server
prune them, and kubectl's strict field validation rejects them. The agent re-validates
every object with ``hotimageset.parse_hotimageset``, which also checks what OpenAPI
cannot express (reference grammar, known platforms, duplicate images); a test keeps the
two in agreement.
"""

from __future__ import annotations

from typing import Any

from nodeagent.api.selector import LABEL_SELECTOR_SCHEMA
from nodeagent.api.validation import DNS_LABEL_RE, DNS_SUBDOMAIN_PATTERN, INT32_MAX, INT32_MIN

HOTIMAGESET_OPENAPI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Images that matching nodes keep pulled (and pinned) in containerd.",
    "required": ["images"],
    "properties": {
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {
                        "type": "string",
                        "description": "Image reference, by tag or digest.",
                        "minLength": 1,
                        "maxLength": 512,
                        "pattern": r"^[A-Za-z0-9\[][A-Za-z0-9._:/@\[\]-]*$",
                    },
                    "platform": {
                        "type": "string",
                        "description": "os/arch[/variant], e.g. linux/arm64.",
                        "pattern": r"^[A-Za-z0-9_]+/[A-Za-z0-9_-]+(/[A-Za-z0-9]+)?$",
                    },
                    "required": {
                        "type": "boolean",
                        "default": False,
                        "description": "The node's startup taint waits for this image.",
                    },
                },
            },
        },
        "nodeSelector": LABEL_SELECTOR_SCHEMA,
        "pin": {"type": "boolean", "default": True,
                "description": "Pin the images so kubelet image GC keeps them."},
        "priority": {"type": "integer", "format": "int32", "default": 0,
                     "minimum": INT32_MIN, "maximum": INT32_MAX,
                     "description": "Higher priority sets are pulled first."},
        "imagePullSecrets": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253,
                             "pattern": DNS_SUBDOMAIN_PATTERN},
                    "namespace": {"type": "string", "minLength": 1, "maxLength": 63,
                                  "pattern": f"^{DNS_LABEL_RE}$"},
                },
            },
        },
    },
}
# The whole object (openAPIV3Schema) without status, which the CRD's owner adds.
HOTIMAGESET_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": HOTIMAGESET_OPENAPI_SCHEMA,
    },
}
# What `kubectl get hotimagesets` shows.
HOTIMAGESET_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"},
    {"name": "Pin", "type": "boolean", "jsonPath": ".spec.pin"},
    {"name": "Images", "type": "string", "jsonPath": ".spec.images[*].image",
     "priority": 1, "description": "Image references of the set"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
