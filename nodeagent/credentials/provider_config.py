"""kubelet's CredentialProviderConfig: which exec plugin serves which images.

Read from the same file kubelet uses (``--image-credential-provider-config``; on EKS
AL2023 ``/etc/eks/image-credential-provider/config.json``) and validated with messages
that name the file, the provider and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.credentials.keyring import RegistryPattern
from nodeagent.errors import NodeagentError
from nodeagent.inputs import InputFileError, read_input_text
from nodeagent.registry.reference import ImageReference


class CredentialProviderError(NodeagentError):
    """A kubelet credential provider config or plugin failure; never contains secrets."""


CONFIG_API_VERSIONS = ("kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1",
                       "kubelet.config.k8s.io/v1alpha1")
PLUGIN_API_VERSIONS = ("credentialprovider.kubelet.k8s.io/v1",
                       "credentialprovider.kubelet.k8s.io/v1beta1",
                       "credentialprovider.kubelet.k8s.io/v1alpha1")
CACHE_KEY_TYPES = ("Image", "Registry", "Global")
_PROVIDER_FIELDS = ("name", "matchImages", "defaultCacheDuration", "apiVersion", "args", "env",
                    "tokenAttributes")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}


def parse_duration(text: Any, where: str) -> float:
    """Seconds in a Go duration string ("12h", "1h30m", "0s", "0")."""
    if not isinstance(text, str):
        raise CredentialProviderError(f"{where}: must be a duration string like \"12h\"")
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise CredentialProviderError(f'{where}: invalid duration "{text}" (e.g. "12h", '
                                      '"1h30m", "90s")')
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class CredentialProvider:
    name: str
    match_images: tuple[RegistryPattern, ...]
    default_cache_duration: float
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold secrets

    def handles(self, ref: ImageReference) -> bool:
        return any(p.matches(ref) for p in self.match_images)


def load_credential_provider_config(path: Path | str) -> list[CredentialProvider]:
    """Read kubelet's CredentialProviderConfig (JSON or YAML) and validate it."""
    path = Path(path)
    try:  # a regular file of at most MAX_INPUT_FILE_BYTES (a FIFO would hang)
        obj = yaml.safe_load(read_input_text(path, "credential provider config"))
    except InputFileError as exc:
        raise CredentialProviderError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise CredentialProviderError(f"{path}: not valid JSON/YAML: {exc}") from None
    return parse_credential_provider_config(obj, str(path))


def parse_credential_provider_config(obj: Any, source: str) -> list[CredentialProvider]:
    if not isinstance(obj, Mapping):
        raise CredentialProviderError(f"{source}: expected a CredentialProviderConfig object")
    if obj.get("kind") != "CredentialProviderConfig":
        raise CredentialProviderError(f'{source}: kind must be "CredentialProviderConfig", '
                                      f"got {obj.get('kind')!r}")
    if obj.get("apiVersion") not in CONFIG_API_VERSIONS:
        raise CredentialProviderError(f"{source}: apiVersion must be one of "
                                      f"{', '.join(CONFIG_API_VERSIONS)}; got "
                                      f"{obj.get('apiVersion')!r}")
    providers = obj.get("providers")
    if not isinstance(providers, list) or not providers:
        raise CredentialProviderError(f"{source}: providers must be a non-empty list")
    parsed = [_provider(p, f"{source}: providers[{i}]") for i, p in enumerate(providers)]
    names = [p.name for p in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CredentialProviderError(f"{source}: duplicate provider name(s) "
                                      f"{', '.join(duplicates)}")
    return parsed


def _provider(obj: Any, where: str) -> CredentialProvider:
    if not isinstance(obj, Mapping):
        raise CredentialProviderError(f"{where}: must be an object")
    unknown = [k for k in obj if k not in _PROVIDER_FIELDS]
    if unknown:
        raise CredentialProviderError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    name = obj.get("name")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise CredentialProviderError(f"{where}.name: must be the plugin's file name "
                                      f"(no '/'), got {name!r}")
    where = f"{where} ({name})"
    if "tokenAttributes" in obj:
        raise CredentialProviderError(f"{where}.tokenAttributes: service account token "
                                      "credential providers are not supported by nodeagent")
    return CredentialProvider(
        name=name,
        match_images=_match_images(obj.get("matchImages"), f"{where}.matchImages"),
        default_cache_duration=parse_duration(obj.get("defaultCacheDuration"),
                                              f"{where}.defaultCacheDuration"),
        api_version=_plugin_api_version(obj.get("apiVersion"), f"{where}.apiVersion"),
        args=_strings(obj.get("args", []), f"{where}.args"),
        env=_env(obj.get("env", []), f"{where}.env"),
    )


def _match_images(value: Any, where: str) -> tuple[RegistryPattern, ...]:
    images = _strings(value, where)
    if not images:
        raise CredentialProviderError(f"{where}: at least one image pattern is required")
    patterns = []
    for index, text in enumerate(images):
        try:
            patterns.append(RegistryPattern.parse(text))
        except ValueError as exc:
            raise CredentialProviderError(f"{where}[{index}]: {exc}") from None
    return tuple(patterns)


def _plugin_api_version(value: Any, where: str) -> str:
    if value not in PLUGIN_API_VERSIONS:
        raise CredentialProviderError(f"{where}: must be one of {', '.join(PLUGIN_API_VERSIONS)}"
                                      f"; got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CredentialProviderError(f"{where}: must be a list of strings")
    return tuple(value)


def _env(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise CredentialProviderError(f"{where}: must be a list of {{name, value}}")
    pairs = []
    for index, item in enumerate(value):
        if (not isinstance(item, Mapping) or not isinstance(item.get("name"), str)
                or not isinstance(item.get("value"), str) or not item["name"]):
            raise CredentialProviderError(f"{where}[{index}]: must be {{name: ..., value: ...}} "
                                          "with string values")
        pairs.append((item["name"], item["value"]))
    return tuple(pairs)
