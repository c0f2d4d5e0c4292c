"""The credential flags, declared once for every command that pulls.

``prewarm``, ``snapshot build`` and ``agent`` add them with ``add_credential_arguments``
and turn them into ``CredentialOptions`` with ``credential_options``; the rule that makes
a keyring of them is in ``options.py``. No subcommand of its own. Standard library only
at import time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nodeagent.credentials.options import EKS_PROVIDER_CONFIG, CredentialOptions


def add_credential_arguments(p: argparse.ArgumentParser, *,
                             provider_config: str | None = None,
                             provider_bin_dir: str | None = None) -> None:
    """--docker-config, --credential-provider-config, --credential-provider-bin-dir.

    ``provider_config`` (the agent): a default location for the provider config, used
    when a file is there.
    """
    p.add_argument("--docker-config", action="append", type=Path, default=[], metavar="FILE",
                   help="registry credentials: docker config.json / .dockerconfigjson "
                        "(repeatable)")
    where = (f", used when present (default {provider_config})" if provider_config
             else f" (e.g. {EKS_PROVIDER_CONFIG})")
    p.add_argument("--credential-provider-config", type=Path, default=provider_config,
                   metavar="FILE", help=f"kubelet CredentialProviderConfig{where}")
    p.add_argument("--credential-provider-bin-dir", type=Path, default=provider_bin_dir,
                   metavar="DIR", help="directory of the credential provider plugins "
                                       "(default: the config's directory)")


def credential_options(args: argparse.Namespace, *,
                       provider_optional: bool = False) -> CredentialOptions:
    return CredentialOptions(
        docker_configs=tuple(args.docker_config),
        provider_config=args.credential_provider_config,
        provider_bin_dir=args.credential_provider_bin_dir,
        provider_optional=provider_optional,
    )
