"""RBAC as the authorizer matches it, for checking the recorded requests against a Role."""

from __future__ import annotations

from dataclasses import dataclass, field

from .recording import Request


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
