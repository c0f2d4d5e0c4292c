"""The registry package's one error type, and how HTTP answers become messages.

Messages name the image, the host and the HTTP status, plus the registry's own error
codes; they never contain headers or credentials."""

from __future__ import annotations

import json

from nodeagent.errors import NodeagentError
from nodeagent.log import redact_text


class RegistryError(NodeagentError):
    """The registry could not serve the image; ``status`` is the HTTP status if any and
    ``reason`` one of auth, not_found, registry_unreachable, other."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "other"):
        super().__init__(message)
        self.status = status
        self.reason = reason


def status_error(subject: str, host: str, status: int, body: bytes,
                 problem: str = "") -> RegistryError:
    """``subject`` is e.g. 'image "<ref>"'."""
    reason = {401: "auth", 403: "auth", 404: "not_found"}.get(status, "other")
    if status >= 500 or status == 429:
        reason = "registry_unreachable"
    detail = registry_message(body)
    text = f"{subject}: {host} answered HTTP {status}"
    if problem:
        text += f" ({problem})"
    if detail:
        text += f": {detail}"
    return RegistryError(text, status=status, reason=reason)


def registry_message(body: bytes) -> str:
    """The registry's own error codes and messages (never headers or credentials)."""
    try:
        errors = json.loads(body).get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip()
                         for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        return ""
    return redact_text(text)[:300]


def most_useful(errors: list[RegistryError]) -> RegistryError:
    """With mirrors, report the last host that answered (else the last one tried), and
    mention what the other hosts said."""
    primary = next((e for e in reversed(errors) if e.reason != "registry_unreachable"),
                   errors[-1])
    if len(errors) == 1:
        return primary
    others = "; ".join(str(e).partition(": ")[2] for e in errors if e is not primary)
    return RegistryError(f"{primary} (also tried: {others})", status=primary.status,
                         reason=primary.reason)
