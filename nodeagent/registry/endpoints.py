"""Where containerd sends a registry's requests: its ``config_path`` hosts.toml.

``<hosts_dir>/<registry>/hosts.toml`` (for ``host:port``, containerd looks in
``host_port_/`` first; then ``_default/hosts.toml``) lists mirrors
(``[host."..."]``, tried in order, each asked with ``?ns=<registry>``) and the upstream
``server``; without a file, docker.io means registry-1.docker.io and 127.0.0.1/localhost
registries speak plain HTTP, as in containerd. A mirror (a pull-through cache, or a P2P
mirror such as Spegel or Dragonfly) keeps working for every nodeagent pull because every
request goes through these endpoints. ``has_mirror`` tells the rollout limit that the
image can come from a mirror (seed, then peers: kube/rollout_plan).
"""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.registry.errors import RegistryError
from nodeagent.registry.reference import DEFAULT_REGISTRY

DOCKER_HUB_HOST = "registry-1.docker.io"
LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$")


@dataclass(frozen=True)
class Endpoint:
    """One place to ask: a mirror from hosts.toml or the upstream registry."""

    base: str  # scheme://host[:port]/<path ending in /v2>
    mirror: bool = False
    capabilities: tuple[str, ...] = ("pull", "resolve")
    headers: tuple[tuple[str, str], ...] = ()
    verify: bool = True
    ca_files: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base).netloc

    def url(self, repository: str, kind: str, locator: str, registry: str) -> str:
        """``<base>/<repository>/<kind>/<locator>`` (kind: manifests or blobs); mirrors
        get ``?ns=<registry>`` as containerd sends it."""
        url = f"{self.base}/{repository}/{kind}/{locator}"
        if self.mirror:
            url += "?" + urllib.parse.urlencode({"ns": registry})
        return url


def registry_endpoints(registry: str, hosts_dir: Path | None) -> list[Endpoint]:
    """Where containerd would send requests for ``registry``, in order."""
    upstream = _default_upstream(registry)
    config = _hosts_config(registry, hosts_dir) if hosts_dir else None
    if config is None:
        return [upstream]
    path, data = config
    endpoints = [_endpoint(url, spec, path, mirror=True)
                 for url, spec in (data.get("host") or {}).items()]
    server = data.get("server")
    if server:
        endpoints.append(_endpoint(server, data, path, mirror=False))
    else:
        endpoints.append(upstream)
    return endpoints


def has_mirror(registry: str, hosts_dir: Path | None) -> bool:
    """True when containerd's hosts.toml sends ``registry``'s blob pulls to a mirror
    first (a ``[host]`` with the "pull" capability; a resolve-only host serves no layer)."""
    return any(e.mirror and "pull" in e.capabilities
               for e in registry_endpoints(registry, hosts_dir))


def hosts_root(registry: str, roots: list[Path]) -> Path | None:
    """Of several hosts directories (containerd's ``config_path`` may list them, ``a:b``),
    the first with a hosts.toml for ``registry`` (or ``_default``), as containerd picks."""
    for root in roots:
        if any((root / name / "hosts.toml").is_file() for name in _host_dirs(registry)):
            return root
    return None


def _default_upstream(registry: str) -> Endpoint:
    host = DOCKER_HUB_HOST if registry == DEFAULT_REGISTRY else registry
    scheme = "http" if LOOPBACK.match(host) else "https"
    return Endpoint(f"{scheme}://{host}/v2")


def _hosts_config(registry: str, hosts_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    for name in _host_dirs(registry):
        path = hosts_dir / name / "hosts.toml"
        if path.is_file():
            try:
                return path, tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise RegistryError(f"cannot read {path}: {exc}") from None
    return None


def _host_dirs(registry: str) -> list[str]:
    """The directories containerd looks in, in its order (``host:port`` as
    ``host_port_`` first, as containerd's hostDirectory writes it)."""
    colon = registry.rfind(":")
    escaped = [f"{registry[:colon]}_{registry[colon + 1:]}_"] if colon > 0 else []
    return [*escaped, registry, "_default"]


def _endpoint(url: str, spec: Any, source: Path, mirror: bool) -> Endpoint:
    if not isinstance(spec, dict):
        raise RegistryError(f'{source}: [host."{url}"] must be a table')
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RegistryError(f'{source}: "{url}" is not an http(s) URL')
    path = parts.path.rstrip("/")
    if not spec.get("override_path", False) and not path.endswith("/v2"):
        path += "/v2"  # containerd appends /v2 unless override_path = true
    capabilities = spec.get("capabilities", ["pull", "resolve"])
    ca = spec.get("ca", ())
    headers = spec.get("header", {})
    return Endpoint(
        base=f"{parts.scheme}://{parts.netloc}{path}", mirror=mirror,
        capabilities=tuple(capabilities),
        headers=tuple((str(k), v if isinstance(v, str) else ", ".join(map(str, v)))
                      for k, v in headers.items()),
        verify=not spec.get("skip_verify", False),
        ca_files=(ca,) if isinstance(ca, str) else tuple(ca),
    )
