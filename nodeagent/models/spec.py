"""What a model is: a name (the directory under the cache dir), a source, a priority.

``ModelSpec`` is the engine's input; the HotModelSet parser (``nodeagent/api``) and
``models/desired.py`` produce them. Source URLs (``s3://``, ``oci://``) are understood by
``nodeagent/api/model_source.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.api.model_source import parse_source
from nodeagent.errors import UsageError

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ModelSpec:
    """One model a node keeps in its cache. Validated on construction."""

    name: str  # DNS-1123 label: the directory <cache dir>/<name>
    source: str  # s3://bucket/prefix/, s3://bucket/key or oci://registry/repo:tag
    priority: int = 0  # higher is fetched first and evicted last
    required: bool = False  # the node's startup taint may wait for it (agent)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise UsageError(f"model {self.name}: priority {self.priority!r} is not an integer")
        source_scheme(self)

    @property
    def scheme(self) -> str:
        return self.source.partition("://")[0]


def check_name(name: str) -> None:
    if not isinstance(name, str) or not DNS1123_LABEL.fullmatch(name):
        raise UsageError(
            f"model name {name!r} is not a DNS-1123 label (1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit): it names the model's "
            "directory in the cache")


def source_scheme(spec: ModelSpec) -> str:
    """The source's scheme, after checking the source is well-formed."""
    parse_source(spec.source, spec.name)
    return spec.scheme
