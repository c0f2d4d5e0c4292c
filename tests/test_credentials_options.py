"""The one keyring rule of `prewarm`, `snapshot build` and the agent (build_keyring)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from nodeagent.credentials.dockerconfig import DockerConfigKeyring
from nodeagent.credentials.keyring import ChainKeyring
from nodeagent.credentials.options import CredentialOptions, build_keyring
from nodeagent.credentials.provider import CredentialProviderKeyring
from nodeagent.credentials.provider_config import CredentialProviderError
from nodeagent.errors import UsageError
from nodeagent.registry.reference import parse_reference

ECR = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
PLUGIN = """#!{python}
import json, sys
request = json.load(sys.stdin)
print(json.dumps({{"apiVersion": request["apiVersion"], "kind": "CredentialProviderResponse",
                  "cacheKeyType": "Registry",
                  "auth": {{"{host}": {{"username": "AWS", "password": "from-plugin"}}}}}}))
"""


def provider_dir(directory, name="test-provider"):
    """An EKS-style directory: config.json and the plugin side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    plugin = directory / name
    plugin.write_text(PLUGIN.format(python=sys.executable, host=ECR))
    plugin.chmod(0o755)
    config = directory / "config.json"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": name, "matchImages": ["*.dkr.ecr.*.amazonaws.com"],
                       "defaultCacheDuration": "1m",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}))
    return config


def docker_config(path, host, user):
    path.write_text(json.dumps({"auths": {host: {"username": user, "password": "pw"}}}))
    return path


def test_no_credentials_no_keyring():
    assert build_keyring(CredentialOptions()) is None


async def test_plugins_default_to_the_config_files_directory(tmp_path):
    config = provider_dir(tmp_path / "eks")
    ring = build_keyring(CredentialOptions(provider_config=config))
    assert isinstance(ring, CredentialProviderKeyring) and ring.bin_dir == tmp_path / "eks"
    auth = await ring.credentials_for(parse_reference(f"{ECR}/ml/train:1"))
    assert (auth.username, auth.password) == ("AWS", "from-plugin")


def test_an_explicit_plugin_directory_wins(tmp_path):
    config = provider_dir(tmp_path / "conf")
    (tmp_path / "conf" / "test-provider").rename(tmp_path / "test-provider")
    ring = build_keyring(CredentialOptions(provider_config=config, provider_bin_dir=tmp_path))
    assert ring.bin_dir == tmp_path
    with pytest.raises(CredentialProviderError, match="no executable"):
        build_keyring(CredentialOptions(provider_config=config))  # not beside the config


def test_a_plugin_directory_needs_a_config(tmp_path):
    with pytest.raises(UsageError, match="needs --credential-provider-config"):
        CredentialOptions(provider_bin_dir=tmp_path)


def test_a_missing_config_is_an_error_unless_only_looked_for(tmp_path, caplog):
    absent = tmp_path / "absent.json"
    with pytest.raises(CredentialProviderError,
                       match=r"credential provider config .*absent\.json: cannot open"):
        build_keyring(CredentialOptions(provider_config=absent))
    caplog.set_level(logging.INFO)
    assert build_keyring(CredentialOptions(provider_config=absent, provider_optional=True)) \
        is None
    assert "no kubelet credential provider config mounted" in caplog.text


async def test_docker_configs_are_asked_before_the_provider(tmp_path):
    config = provider_dir(tmp_path / "eks")
    first = docker_config(tmp_path / "a.json", ECR, "from-docker-config")
    second = docker_config(tmp_path / "b.json", "ghcr.io", "ghcr-user")
    ring = build_keyring(CredentialOptions((first, second), provider_config=config))
    assert isinstance(ring, ChainKeyring)
    assert [type(r) for r in ring.keyrings] == [DockerConfigKeyring, DockerConfigKeyring,
                                                CredentialProviderKeyring]
    auth = await ring.credentials_for(parse_reference(f"{ECR}/ml/train:1"))
    assert auth.username == "from-docker-config"
    auth = await ring.credentials_for(parse_reference("ghcr.io/org/app:1"))
    assert auth.username == "ghcr-user"
