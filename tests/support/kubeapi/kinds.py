"""The resource kinds the double serves, and how an API path names each of them."""

from __future__ import annotations

from dataclasses import dataclass


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
KIND_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}
