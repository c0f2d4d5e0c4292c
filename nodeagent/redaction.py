"""The secret values this process knows, and text redacted of them (one registry).

Every place that learns a secret registers it: docker config files and image pull
secrets (``password``, ``auth`` and the password it encodes, ``identitytoken``,
``registrytoken``), credential provider plugin answers, bearer tokens from registry
token services, credentials handed to containerd for a pull, AWS secret keys and
session tokens (environment and boto3's credential chain) and proxy passwords in
``HTTP(S)_PROXY``. ``redact`` masks every occurrence of every known value as ``***``,
and of its common encodings: URL-encoded, JSON/Python-escaped and, for a login, base64
of ``user:password`` (what docker's ``auth`` and an ``Authorization: Basic`` header
carry). Overlapping matches are masked as one span, so no part of a value survives.
It runs where text leaves the process: log records (message, arguments, fields,
exception text), the CLI's error line, Kubernetes Events and Node conditions.

Nothing is masked by guessing: ``password: must be a string`` comes through intact.
The rules, by a known value's length:
- 4 characters or more: masked wherever it appears, inside longer words too;
- 1 to 3 characters: such a string cannot be told from ordinary text inside words, so
  it is masked only where it stands alone (no letter or digit on either side):
  ``pw1`` is masked in ``login pw1 failed`` and ``token=pw1;``, not in ``pw10``;
- empty or whitespace-only values are ignored.
A secret nodeagent never learned cannot be masked; free text from a process that holds
such secrets (a credential plugin's stderr) gets its own rule where it is shown
(credentials/provider.py). The registry keeps the newest ``MAX_VALUES`` values (a
token obtained again counts as new); older ones are long expired tokens.

Standard library only: the disks zipapp ships this module with log.py.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping

MASK = "***"
MIN_ANYWHERE = 4  # shorter values are masked only where they stand alone
MAX_VALUES = 1024
# Environment variables whose values are secrets (botocore reads these).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
             "all_proxy")

_lock = threading.Lock()
_values: dict[str, set[str]] = {}  # value -> its encodings; insertion order = age
# (forms masked anywhere, longest first; pattern for forms masked where they stand alone)
_Matchers = tuple[tuple[str, ...], re.Pattern[str] | None]
_matchers: _Matchers = ((), None)


def register(*values: str | None) -> None:
    """Learn secret values (None, empty and non-string values are ignored)."""
    global _matchers
    with _lock:
        added = False
        for value in values:
            if not isinstance(value, str) or not value.strip():
                continue
            forms = _values.pop(value, None)  # re-learned: make it the newest
            if forms is None:
                forms, added = _encodings(value), True
            _values[value] = forms
        while len(_values) > MAX_VALUES:
            del _values[next(iter(_values))]
        if added:
            _matchers = _build(set().union(*_values.values()))


def register_login(username: str, password: str) -> None:
    """A password and the base64 ``user:password`` that carries it."""
    if password:
        register(password, _basic(username, password))


def register_environment(environ: Mapping[str, str]) -> None:
    """AWS secret keys and session tokens, and passwords in proxy URLs."""
    register(*(environ.get(name) for name in SECRET_ENV))
    for name in PROXY_ENV:
        try:
            password = urllib.parse.urlsplit(environ.get(name) or "").password
        except ValueError:
            continue
        if password:
            register(password, urllib.parse.unquote(password))


def known_count() -> int:
    return len(_values)


def forget_all() -> None:
    """Forget every value (tests use it to keep one test's secrets out of the next)."""
    global _matchers
    with _lock:
        _values.clear()
        _matchers = ((), None)


def redact(text: str, also: Iterable[str] = ()) -> str:
    """``text`` with every known value (and ``also``'s values) masked."""
    anywhere, alone = _matchers
    extra = tuple(also)
    if extra:
        more_anywhere, more_alone = _build(
            set().union(*(_encodings(v) for v in extra if v.strip())))
        anywhere = tuple(sorted({*anywhere, *more_anywhere}, key=len, reverse=True))
        alone = _union(alone, more_alone)
    if not text or not (anywhere or alone):
        return text
    spans = [(m.start(), m.end()) for m in alone.finditer(text)] if alone else []
    for form in anywhere:
        start = text.find(form)
        while start >= 0:
            spans.append((start, start + len(form)))
            start = text.find(form, start + 1)
    return _mask(text, spans) if spans else text


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """Each run of overlapping or touching spans becomes one MASK."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], MASK]
        at = end
    out.append(text[at:])
    return "".join(out)


def _build(forms: set[str]) -> _Matchers:
    anywhere = tuple(sorted((f for f in forms if len(f) >= MIN_ANYWHERE), key=len,
                            reverse=True))
    short = sorted((f for f in forms if len(f) < MIN_ANYWHERE), key=len, reverse=True)
    return anywhere, _alone_pattern(short)


def _alone_pattern(forms: Iterable[str]) -> re.Pattern[str] | None:
    forms = list(forms)
    if not forms:
        return None
    alternatives = "|".join(re.escape(f) for f in forms)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])")


def _union(a: re.Pattern[str] | None, b: re.Pattern[str] | None) -> re.Pattern[str] | None:
    if a is None or b is None:
        return a or b
    return re.compile(f"{a.pattern}|{b.pattern}")


def _encodings(value: str) -> set[str]:
    """The value as it may appear in a URL, a JSON document or a Python repr."""
    return {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
            json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1]}


def _basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()
