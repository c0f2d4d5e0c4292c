"""What a model is: a name (the directory under the cache dir), a source, a priority.

``ModelSpec`` is the engine's input. Phase 2's HotModelSet file/CRD parser produces these;
until then callers build them directly. ``parse_s3_url`` is the one place an ``s3://``
source is understood: ``s3://bucket/prefix/`` (trailing slash) is every object below the
prefix, ``s3://bucket`` the whole bucket, ``s3://bucket/key`` one object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodeagent.errors import UsageError

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# S3 bucket naming rules (general purpose buckets): 3-63 of a-z 0-9 . -, alnum at both ends.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # a prefix ("" or ending in "/") or one object's key

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ModelSpec:
    """One model a node keeps in its cache. Validated on construction."""

    name: str  # DNS-1123 label: the directory <cache dir>/<name>
    source: str  # s3://bucket/prefix/ or s3://bucket/key (oci:// in phase 2)
    priority: int = 0  # higher is fetched first and evicted last
    required: bool = False  # the node's startup taint may wait for it (agent, phase 2)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise UsageError(f"model {self.name}: priority {self.priority!r} is not an integer")
        source_scheme(self)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not DNS1123_LABEL.fullmatch(name):
        raise UsageError(
            f"model name {name!r} is not a DNS-1123 label (1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit): it names the model's "
            "directory in the cache")


def source_scheme(spec: ModelSpec) -> str:
    """The source's scheme, after checking the source is well-formed."""
    if not isinstance(spec.source, str):
        raise UsageError(f"model {spec.name}: source {spec.source!r} is not a string")
    if spec.source.startswith("s3://"):
        parse_s3_url(spec.source, spec.name)
        return "s3"
    raise UsageError(f"model {spec.name}: source {spec.source!r} is not supported: use "
                     "s3://bucket/prefix/ (every object below it) or s3://bucket/key")


def parse_s3_url(url: str, model: str = "") -> S3Location:
    who = f"model {model}: " if model else ""
    rest = url.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(f"{who}source {url!r}: {bucket!r} is not a valid S3 bucket name")
    if any(ord(c) < 32 for c in key) or key.startswith("/"):
        raise UsageError(f"{who}source {url!r}: the key or prefix has control characters "
                         "or starts with '/'")
    if key and not key.endswith("/") and key.rsplit("/", 1)[-1] in (".", ".."):
        raise UsageError(f"{who}source {url!r}: the object key ends in '.' or '..'")
    return S3Location(bucket, key)
