"""Logging set-up: structured JSON lines, or short human lines on a terminal.

Use ``log = logging.getLogger(__name__)`` and pass structured fields with
``log.info("pulled image", extra={"fields": {"image": ref, "bytes": n}})``.
A redaction filter masks anything that looks like a credential, as a last line of
defence: code must not log secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# Key names whose values are never printed, wherever they appear in structured fields.
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|auth|credential", re.IGNORECASE)
# Inline forms such as "password=hunter2" or "Authorization: Basic abc".
_SECRET_INLINE = re.compile(
    r"(?i)\b(password|passwd|token|secret|authorization)\b(\s*[=:]\s*)(basic\s+|bearer\s+)?\S+"
)
REDACTED = "***"


def redact_text(text: str) -> str:
    return _SECRET_INLINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Mask secret-named keys; drop unset (None) fields so log lines stay short."""
    return {k: (REDACTED if _SECRET_KEYS.search(k) else v)
            for k, v in fields.items() if v is not None}


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
        if record.exc_info:
            entry["error"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = redact_fields(getattr(record, "fields", {}) or {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname[0]} {redact_text(record.getMessage())}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "info", json_format: bool | None = None) -> None:
    """Configure the root logger once. JSON unless stderr is a terminal (or forced)."""
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
