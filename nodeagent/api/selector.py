"""Kubernetes LabelSelector: validation like the API server, matching like kubelet.

The nodeSelector of the nodeagent.io kinds: its parser, its matcher and its OpenAPI
schema (``LABEL_SELECTOR_SCHEMA``). Pure (no lightkube import) so the CLI and the
hot-list loader can use it without a cluster. Semantics follow apimachinery's
``LabelSelectorAsSelector`` for a non-nil selector: an empty selector matches
everything; requirements are AND-ed; ``NotIn`` and ``DoesNotExist`` match when the key
is absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodeagent.api.validation import describe_value, show_value
from nodeagent.errors import NodeagentError

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_EXPRESSION_FIELDS = ("key", "operator", "values")

_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_NAME_PART_MAX = 63
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_SUBDOMAIN_MAX = 253
_LABEL_VALUE_MAX = 63


class SelectorError(NodeagentError):
    """A label selector the API server would reject; lists every problem with its path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid label selector: " + "; ".join(problems))


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when every matchLabels pair and every expression holds for ``labels``."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.match_labels.items())), self.match_expressions))


def parse_label_selector(obj: Any, where: str = "selector") -> LabelSelector:
    """Validate and build a selector; raise SelectorError naming each bad field path."""
    selector, problems = check_label_selector(obj, where)
    if problems:
        raise SelectorError(problems)
    return selector


def check_label_selector(obj: Any, where: str) -> tuple[LabelSelector, list[str]]:
    """Like parse_label_selector but returns the problems instead of raising.

    Used by callers (the hot-list loader) that collect every error in a file at once.
    The selector returned alongside problems is only meaningful when there are none.
    """
    problems: list[str] = []
    if not isinstance(obj, Mapping):
        return LabelSelector(), [f"{where}: must be an object, got {describe_value(obj)}"]
    for key in obj:
        if key not in _SELECTOR_FIELDS:
            problems.append(f"{where}: unknown field {show_value(key)} (allowed: matchLabels, "
                            "matchExpressions)")
    labels = _check_match_labels(obj.get("matchLabels"), f"{where}.matchLabels", problems)
    exprs = _check_expressions(obj.get("matchExpressions"), f"{where}.matchExpressions", problems)
    return LabelSelector(labels, exprs), problems


def _check_match_labels(obj: Any, where: str, problems: list[str]) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        problems.append(f"{where}: must be a map of label key to value, got {describe_value(obj)}")
        return {}
    labels: dict[str, str] = {}
    for key, value in obj.items():
        problems.extend(label_key_problems(key, f"{where}.{key}"))
        problems.extend(label_value_problems(value, f"{where}.{key}"))
        if isinstance(key, str) and isinstance(value, str):
            labels[key] = value
    return labels


def _check_expressions(obj: Any, where: str, problems: list[str]) -> tuple[Requirement, ...]:
    if obj is None:
        return ()
    if not isinstance(obj, list):
        problems.append(f"{where}: must be a list, got {describe_value(obj)}")
        return ()
    requirements = []
    for index, item in enumerate(obj):
        requirement = _check_expression(item, f"{where}[{index}]", problems)
        if requirement is not None:
            requirements.append(requirement)
    return tuple(requirements)


def _check_expression(obj: Any, where: str, problems: list[str]) -> Requirement | None:
    if not isinstance(obj, Mapping):
        problems.append(f"{where}: must be an object with key, operator, values; "
                        f"got {describe_value(obj)}")
        return None
    before = len(problems)
    for name in obj:
        if name not in _EXPRESSION_FIELDS:
            problems.append(f"{where}: unknown field {show_value(name)} (allowed: key, operator, "
                            "values)")
    key, operator, values = obj.get("key"), obj.get("operator"), obj.get("values")
    if key is None:
        problems.append(f"{where}.key: Required value")
    else:
        problems.extend(label_key_problems(key, f"{where}.key"))
    value_set = _check_values(values, f"{where}.values", problems)
    if operator is None:
        problems.append(f"{where}.operator: Required value")
    elif operator not in OPERATORS:
        supported = ", ".join(f'"{op}"' for op in OPERATORS)
        problems.append(f"{where}.operator: Unsupported value: {show_value(operator)}: "
                        f"supported values: {supported}")
    elif operator in ("In", "NotIn") and not value_set:
        problems.append(f"{where}.values: Required value: must be specified when "
                        f"`operator` is '{operator}'")
    elif operator in ("Exists", "DoesNotExist") and values:
        problems.append(f"{where}.values: Forbidden: may not be specified when "
                        f"`operator` is '{operator}'")
    if len(problems) != before:
        return None
    return Requirement(key, operator, frozenset(value_set))


def _check_values(obj: Any, where: str, problems: list[str]) -> list[str]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        problems.append(f"{where}: must be a list of strings, got {describe_value(obj)}")
        return []
    values = []
    for index, value in enumerate(obj):
        found = label_value_problems(value, f"{where}[{index}]")
        problems.extend(found)
        if not found:
            values.append(value)
    return values


def label_key_problems(key: Any, where: str) -> list[str]:
    """Problems with a label key: an optional DNS-subdomain prefix plus "/" and a name."""
    if not isinstance(key, str):
        return [f"{where}: label key must be a string, got {describe_value(key)}"]
    parts = key.split("/")
    if len(parts) > 2:
        return [f"{where}: Invalid value: {show_value(key)}: a qualified name may contain at most "
                "one '/' (optional DNS-subdomain prefix, then the name)"]
    name = parts[-1]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > _DNS1123_SUBDOMAIN_MAX or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            problems.append("prefix part must be a lowercase DNS subdomain of at most 253 "
                            "characters (e.g. 'example.com')")
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > _NAME_PART_MAX:
        problems.append(f"name part must be no more than {_NAME_PART_MAX} characters")
    elif not _NAME_PART.fullmatch(name):
        problems.append("name part must consist of alphanumeric characters, '-', '_' or '.', "
                        "and must start and end with an alphanumeric character")
    return [f"{where}: Invalid value: {show_value(key)}: {p}" for p in problems]


def label_value_problems(value: Any, where: str) -> list[str]:
    """Problems with a label value: empty, or up to 63 alphanumerics with '-', '_', '.'."""
    if not isinstance(value, str):
        return [f"{where}: label value must be a string, got {describe_value(value)} "
                "(quote numbers and booleans in YAML)"]
    if value == "":
        return []
    if len(value) > _LABEL_VALUE_MAX:
        return [f"{where}: Invalid value: {show_value(value)}: must be no more than "
                f"{_LABEL_VALUE_MAX} characters"]
    if not _NAME_PART.fullmatch(value):
        return [f"{where}: Invalid value: {show_value(value)}: a label value must be empty or "
                "consist of alphanumeric characters, '-', '_' or '.', and must start and "
                "end with an alphanumeric character"]
    return []


# The nodeSelector field of a CRD's structural schema.
LABEL_SELECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Nodes whose labels match get this set; absent means all nodes.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string", "enum": list(OPERATORS)},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
