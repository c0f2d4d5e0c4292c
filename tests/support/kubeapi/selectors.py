"""List/watch selectors: ``fieldSelector`` (metadata.name, metadata.namespace) and
``labelSelector`` (equality and set-based: ``in``, ``notin``, ``key``, ``!key``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .status import ApiFailure


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

