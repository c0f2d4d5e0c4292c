"""The node's registry credentials as a command was told them, and the one rule that
turns them into a keyring.

``CredentialOptions`` is what ``prewarm``, ``snapshot build`` and ``agent`` take from
their flags (``credentials/commands.py``); ``build_keyring`` is the rule all of them
follow:

- every docker config file given is read; one that cannot be read is an error;
- the kubelet credential provider is its CredentialProviderConfig file plus the
  directory of its plugins, which defaults to the config file's own directory (where
  EKS keeps ``ecr-credential-provider`` beside ``config.json``); a plugin directory
  without a config is an error;
- a config file that does not exist is an error, unless the command only looks for it
  at a default location (``provider_optional``: the agent runs on nodes with and without
  a credential provider), in which case a log line says the node goes without one;
- docker config files are asked first, then the credential provider. (The agent asks an
  image's pull secrets before both.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nodeagent.credentials.keyring import ChainKeyring, Keyring
from nodeagent.errors import UsageError
from nodeagent.log import fields

log = logging.getLogger(__name__)

EKS_PROVIDER_CONFIG = Path("/etc/eks/image-credential-provider/config.json")


@dataclass(frozen=True)
class CredentialOptions:
    docker_configs: tuple[Path, ...] = ()
    provider_config: Path | None = None  # kubelet CredentialProviderConfig
    provider_bin_dir: Path | None = None  # None: the config file's directory
    provider_optional: bool = False  # a missing config means "no provider", not an error

    def __post_init__(self) -> None:
        if self.provider_bin_dir is not None and self.provider_config is None:
            raise UsageError("--credential-provider-bin-dir needs --credential-provider-config "
                             "(the kubelet CredentialProviderConfig naming the plugins)")

    @property
    def plugin_dir(self) -> Path | None:
        if self.provider_config is None:
            return None
        return self.provider_bin_dir or self.provider_config.parent


def build_keyring(options: CredentialOptions) -> Keyring | None:
    """The node's keyring under the rule above; None when there are no credentials."""
    from nodeagent.credentials.dockerconfig import DockerConfigKeyring
    from nodeagent.credentials.provider import CredentialProviderKeyring

    rings: list[Keyring] = [DockerConfigKeyring.from_file(p) for p in options.docker_configs]
    config, plugins = options.provider_config, options.plugin_dir
    if config is not None and plugins is not None:
        if options.provider_optional and not config.is_file():
            log.info("no kubelet credential provider config mounted; using pull secrets only",
                     extra=fields(path=str(config)))
        else:
            rings.append(CredentialProviderKeyring(config, plugins))
    if not rings:
        return None
    return rings[0] if len(rings) == 1 else ChainKeyring(rings)
