"""Structured logging: JSON lines, short human lines, and every part of a record redacted
of the secret values the process knows (the rules: test_redaction.py)."""

import io
import json
import logging

from nodeagent import redaction
from nodeagent.log import HumanFormatter, JsonFormatter, fields


def _emit(formatter: logging.Formatter, msg: str, *args, exc_info=None, **kw) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test-log-{id(formatter)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info(msg, *args, exc_info=exc_info, extra=fields(**kw))
    return stream.getvalue().strip()


def test_json_line_carries_fields_and_drops_unset_ones():
    entry = json.loads(_emit(JsonFormatter(), "image present", image="reg/a:1", reason=None))
    assert entry["msg"] == "image present"
    assert entry["level"] == "info"
    assert entry["image"] == "reg/a:1"
    assert "reason" not in entry
    assert entry["ts"].endswith("Z")


def _raise(text: str) -> BaseException:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        return exc


def test_known_secrets_are_masked_in_message_arguments_fields_and_traceback():
    redaction.register("8675309", "pw1", "abc123xyz")
    line = _emit(JsonFormatter(), "login %s with %s", "8675309", "token=abc123xyz;",
                 exc_info=_raise("pin pw1 rejected"), detail="key 8675309 (x)",
                 nested={"hosts": ["a.io pw1", 5]}, error=ValueError("abc123xyz bad"))
    for secret in ("8675309", "pw1", "abc123xyz"):
        assert secret not in line
    entry = json.loads(line)
    assert entry["msg"] == "login *** with token=***;"
    assert entry["detail"] == "key *** (x)"
    assert entry["nested"] == {"hosts": ["a.io ***", 5]}
    assert entry["error"].endswith("RuntimeError: pin *** rejected")
    human = _emit(HumanFormatter(), "login %s", "8675309", exc_info=_raise("pw1"),
                  error=ValueError("abc123xyz bad"))
    assert human.splitlines()[0] == "I login ***  error=*** bad"
    assert human.splitlines()[-1] == "RuntimeError: ***"


def test_secret_named_fields_are_masked_whatever_they_hold_words_are_not():
    line = _emit(JsonFormatter(), "password: must be a string; token: unexpected status",
                 registry_password="never-registered", token="abc", secret="ml/ngc",
                 secrets=["ml/a", "ml/b"], image="reg/a:1")
    entry = json.loads(line)
    assert entry["msg"] == "password: must be a string; token: unexpected status"
    assert entry["registry_password"] == "***" and entry["token"] == "***"
    # "secret" fields name Kubernetes Secrets (namespace/name): shown
    assert entry["secret"] == "ml/ngc" and entry["secrets"] == ["ml/a", "ml/b"]
    assert entry["image"] == "reg/a:1"


def test_human_lines_are_short_and_masked():
    line = _emit(HumanFormatter(), "pulled", image="reg/a:1", password="s3")
    assert line == "I pulled  image=reg/a:1 password=***"


def test_authorization_headers_of_known_logins_and_tokens_are_masked():
    redaction.register_login("user", "pass")
    redaction.register("eyJhbGciOi.tok")
    line = _emit(JsonFormatter(), "sent Authorization: Basic dXNlcjpwYXNz, then Bearer "
                 "eyJhbGciOi.tok")
    assert json.loads(line)["msg"] == "sent Authorization: Basic ***, then Bearer ***"
