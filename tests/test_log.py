"""Structured logging: JSON lines, secret redaction, short human lines."""

import io
import json
import logging

from nodeagent.log import HumanFormatter, JsonFormatter, fields, redact_text


def _emit(formatter: logging.Formatter, msg: str, **kw) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test-log-{id(formatter)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info(msg, extra=fields(**kw))
    return stream.getvalue().strip()


def test_json_line_carries_fields_and_drops_unset_ones():
    entry = json.loads(_emit(JsonFormatter(), "image present", image="reg/a:1", reason=None))
    assert entry["msg"] == "image present"
    assert entry["level"] == "info"
    assert entry["image"] == "reg/a:1"
    assert "reason" not in entry
    assert entry["ts"].endswith("Z")


def test_secret_named_fields_and_inline_secrets_are_masked():
    line = _emit(JsonFormatter(), "login with password=hunter2 ok",
                 registry_password="hunter2", token="abc123", image="reg/a:1")
    assert "hunter2" not in line and "abc123" not in line
    entry = json.loads(line)
    assert entry["registry_password"] == "***" and entry["token"] == "***"
    assert entry["image"] == "reg/a:1"


def test_human_lines_are_short_and_masked():
    line = _emit(HumanFormatter(), "pulled", image="reg/a:1", secret="s3")
    assert line == "I pulled  image=reg/a:1 secret=***"


def test_redact_text_masks_authorization_headers():
    assert redact_text("Authorization: Basic dXNlcjpwYXNz") == "Authorization: ***"
    assert redact_text("Authorization: Bearer eyJhbGciOi") == "Authorization: ***"
