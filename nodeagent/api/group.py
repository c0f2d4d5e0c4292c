"""The nodeagent.io API group: its name, its version and the kinds it serves.

Every other place that needs the group, version or a kind's names (the CRD, the
lightkube resource the agent watches, the parsers' apiVersion/kind checks) reads them
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "nodeagent.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    """A kind of the group: its names as a CustomResourceDefinition spells them."""

    name: str  # "HotImageSet"
    plural: str  # "hotimagesets"
    short_names: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.name.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.name}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


HOTIMAGESET = Kind("HotImageSet", "hotimagesets", ("his", "hotimg"))
HOTMODELSET = Kind("HotModelSet", "hotmodelsets", ("hms", "hotmodel"))
