"""Logging set-up: structured JSON lines, or short human lines on a terminal.

Use ``log = logging.getLogger(__name__)`` and pass structured fields with
``log.info("pulled image", extra={"fields": {"image": ref, "bytes": n}})``.
Every record is redacted as it is formatted (``redaction``: the secret values this
process knows, masked in the message, its arguments, every field and the exception
text), as a last line of defence: code must not log secrets in the first place. A field
whose *name* says it holds a secret (``password``, ``registry_token``, ``auth``...) is
masked whatever its value; free text is never masked by its words.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from nodeagent import redaction

REDACTED = redaction.MASK
# Field names whose values are secrets: the name, or its last "_" word, is one of these
# ("secret" is not: nodeagent's "secret" fields name Kubernetes Secrets, namespace/name).
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|_)(password|passwd|token|auth|authorization|credentials|identitytoken|"
    r"registrytoken|secret_key|secret_access_key)$")


def redact_text(text: str) -> str:
    """``text`` with every known secret value masked (see ``redaction``)."""
    return redaction.redact(text)


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Mask secret-named fields and known secrets in the others; drop unset (None)
    fields so log lines stay short."""
    return {k: (REDACTED if _SECRET_FIELD.search(k) else _redact_value(v))
            for k, v in fields.items() if v is not None}


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {str(k): (REDACTED if _SECRET_FIELD.search(str(k)) else _redact_value(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact_text(str(value))


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return redact_text("\n".join(parts))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        entry.update(redact_fields(getattr(record, "fields", {}) or {}))
        if record.exc_info or record.stack_info:
            entry["error"] = _exception_text(self, record)
        return json.dumps(entry, default=str)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = redact_fields(getattr(record, "fields", {}) or {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname[0]} {redact_text(record.getMessage())}"
        if extra:
            line += f"  {extra}"
        if record.exc_info or record.stack_info:
            line += "\n" + _exception_text(self, record)
        return line


def setup_logging(level: str = "info", json_format: bool | None = None) -> None:
    """Configure the root logger once. JSON unless stderr is a terminal (or forced).
    Secrets in the environment (AWS keys, proxy passwords) are learned here, before
    anything can log them."""
    redaction.register_environment(os.environ)
    if json_format is None:
        json_format = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless the user asked for debug.
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def fields(**kw: Any) -> dict[str, Any]:
    """Shorthand: ``log.info("msg", extra=fields(image=ref))``."""
    return {"fields": kw}
