"""Registry credentials from kubelet credential provider plugins (run as real executables
written into tmp_path): the exec protocol, caching, errors, the provider config, chaining
with docker config keyrings, and secrets never leaking."""

import asyncio
import json
import logging
import os
import sys
import textwrap

import pytest
from support.auth_helpers import SECRET, keyring

from nodeagent.containerd.client import AuthConfig
from nodeagent.credentials.keyring import AnonymousKeyring, ChainKeyring
from nodeagent.credentials.provider import CredentialProviderKeyring
from nodeagent.credentials.provider_config import (
    CredentialProviderError,
    load_credential_provider_config,
    parse_duration,
)
from nodeagent.errors import NodeagentError
from nodeagent.registry.reference import parse_reference

# ----------------------------------------------------------------------------- plugins

PLUGIN = textwrap.dedent("""\
    #!{python}
    # Test credential provider: answers like ecr-credential-provider does.
    import json, os, sys
    request = json.load(sys.stdin)
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(json.dumps({{"image": request["image"], "args": sys.argv[1:],
                                "apiVersion": request["apiVersion"],
                                "kind": request["kind"]}}) + "\\n")
    if os.environ.get("MODE") == "fail":
        sys.stderr.write("error: token eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.abcdefghijklmnop "
                         "password=hunter2 denied for " + request["image"] + "\\n")
        sys.exit(3)
    if os.environ.get("MODE") == "garbage":
        print('{{"username": "leaky", "password": "{secret}"')
        sys.exit(0)
    if os.environ.get("MODE") == "sleep":
        import time
        time.sleep(30)
    host = request["image"].split("/")[0]
    response = {{
        "apiVersion": request["apiVersion"],
        "kind": "CredentialProviderResponse",
        "cacheKeyType": os.environ.get("CACHE_KEY_TYPE", "Registry"),
        "auth": {{host: {{"username": "AWS", "password": "{secret}"}}}},
    }}
    if "CACHE_DURATION" in os.environ:
        response["cacheDuration"] = os.environ["CACHE_DURATION"]
    print(json.dumps(response))
    """)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def plugin_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "test-provider"
    script.write_text(PLUGIN.format(python=sys.executable, secret=SECRET))
    script.chmod(0o755)
    calls = tmp_path / "calls.jsonl"

    def make(env=None, match=("*.dkr.ecr.*.amazonaws.com",), fmt="json", duration="10m",
             timeout_s=60.0, clock=None):
        env = {"CALLS": str(calls), **(env or {})}
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1",
            "kind": "CredentialProviderConfig",
            "providers": [{
                "name": "test-provider",
                "matchImages": list(match),
                "defaultCacheDuration": duration,
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "args": ["get-credentials"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
            }],
        }
        path = tmp_path / f"config.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps(config))
        else:
            import yaml
            path.write_text(yaml.safe_dump(config))
        return CredentialProviderKeyring(path, bin_dir, timeout_s=timeout_s,
                                         clock=clock or FakeClock())

    def call_log():
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    make.calls = call_log
    return make


ECR = "123456789012.dkr.ecr.us-west-2.amazonaws.com"


async def test_plugin_returns_credentials(plugin_env):
    ring = plugin_env(fmt="yaml")
    auth = await ring.credentials_for(parse_reference(f"{ECR}/ml/train:1"))
    assert (auth.username, auth.password) == ("AWS", SECRET)
    assert plugin_env.calls() == [{
        "image": f"{ECR}/ml/train:1", "args": ["get-credentials"],
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest"}]
    # Not matched by matchImages: the plugin is not run.
    assert await ring.credentials_for(parse_reference("ghcr.io/a/b")) is None
    assert len(plugin_env.calls()) == 1


async def test_plugin_response_is_never_logged(plugin_env, caplog):
    caplog.set_level(logging.DEBUG)
    ring = plugin_env()
    await ring.credentials_for(parse_reference(f"{ECR}/a"))
    assert "credential provider returned credentials" in caplog.text
    assert SECRET not in caplog.text
    assert all(SECRET not in repr(getattr(r, "fields", "")) for r in caplog.records)


@pytest.mark.parametrize(
    ("key_type", "second_image", "execs"),
    [
        ("Image", f"{ECR}/a:1", 1),   # same image: cached
        ("Image", f"{ECR}/b:1", 2),   # other image: exec again
        ("Registry", f"{ECR}/b:1", 1),  # same registry: cached
        ("Registry", "999999999999.dkr.ecr.us-west-2.amazonaws.com/a", 2),
        ("Global", "999999999999.dkr.ecr.us-west-2.amazonaws.com/a", 1),
    ],
)
async def test_cache_key_types(plugin_env, key_type, second_image, execs):
    clock = FakeClock()
    ring = plugin_env(env={"CACHE_KEY_TYPE": key_type}, clock=clock)
    await ring.credentials_for(parse_reference(f"{ECR}/a:1"))
    second = await ring.credentials_for(parse_reference(second_image))
    assert len(plugin_env.calls()) == execs
    if key_type == "Global" and execs == 1:
        # Global cache: the plugin's answer (keyed by the first registry) is re-used, and
        # the keyring still only hands out credentials whose key matches the image.
        assert second is None


async def test_cache_expiry_uses_response_then_default_duration(plugin_env):
    clock = FakeClock()
    ring = plugin_env(env={"CACHE_DURATION": "30s"}, duration="1h", clock=clock)
    ref = parse_reference(f"{ECR}/a")
    await ring.credentials_for(ref)
    clock.now += 29
    await ring.credentials_for(ref)
    assert len(plugin_env.calls()) == 1
    clock.now += 2  # past the response's 30s
    await ring.credentials_for(ref)
    assert len(plugin_env.calls()) == 2


async def test_default_duration_and_zero_disables_cache(plugin_env, tmp_path):
    clock = FakeClock()
    ring = plugin_env(duration="1m30s", clock=clock)
    ref = parse_reference(f"{ECR}/a")
    await ring.credentials_for(ref)
    clock.now += 89
    await ring.credentials_for(ref)
    assert len(plugin_env.calls()) == 1
    clock.now += 2
    await ring.credentials_for(ref)
    assert len(plugin_env.calls()) == 2
    ring = plugin_env(env={"CACHE_DURATION": "0s"}, clock=clock)
    await ring.credentials_for(ref)
    await ring.credentials_for(ref)
    assert len(plugin_env.calls()) == 4


async def test_concurrent_requests_exec_once(plugin_env):
    ring = plugin_env()
    ref = parse_reference(f"{ECR}/a")
    results = await asyncio.gather(*(ring.credentials_for(ref) for _ in range(5)))
    assert all(r.password == SECRET for r in results)
    assert len(plugin_env.calls()) == 1


async def test_failing_plugin_error_is_clear_and_redacted(plugin_env):
    # hunter2 is one of the plugin's env values; the long token is opaque; the image stays
    ring = plugin_env(env={"MODE": "fail", "PLUGIN_PASSWORD": "hunter2"})
    with pytest.raises(CredentialProviderError) as info:
        await ring.credentials_for(parse_reference(f"{ECR}/a:1"))
    assert isinstance(info.value, NodeagentError)
    assert str(info.value) == (
        f'credential provider "test-provider" failed for image "{ECR}/a:1": '
        f"exit status 3; stderr: error: token *** password=*** denied for {ECR}/a:1")


async def test_plugin_output_that_is_not_json_is_not_echoed(plugin_env):
    ring = plugin_env(env={"MODE": "garbage"})
    with pytest.raises(CredentialProviderError, match="not a JSON") as info:
        await ring.credentials_for(parse_reference(f"{ECR}/a"))
    assert SECRET not in str(info.value) and "leaky" not in str(info.value)


async def test_plugin_timeout(plugin_env):
    ring = plugin_env(env={"MODE": "sleep"}, timeout_s=0.5)
    with pytest.raises(CredentialProviderError, match=r"test-provider.*timed out after 0.5s"):
        await ring.credentials_for(parse_reference(f"{ECR}/a"))


def test_missing_plugin_binary(tmp_path, plugin_env):
    plugin_env()  # writes config.json
    with pytest.raises(CredentialProviderError, match=r"no executable .*elsewhere/test-provider"):
        CredentialProviderKeyring(tmp_path / "config.json", tmp_path / "elsewhere")


CONFIG_OK = {"name": "p", "matchImages": ["*.io"], "defaultCacheDuration": "1h",
             "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../p"}, "providers[0].name: must be the plugin's file name"),
        ({"matchImages": []}, "providers[0] (p).matchImages: at least one"),
        ({"matchImages": "*.io"}, "providers[0] (p).matchImages: must be a list of strings"),
        ({"defaultCacheDuration": "12 hours"}, 'invalid duration "12 hours"'),
        ({"defaultCacheDuration": None}, "defaultCacheDuration: must be a duration"),
        ({"apiVersion": "credentialprovider.kubelet.k8s.io/v2"}, "apiVersion: must be one of"),
        ({"env": [{"name": "A"}]}, "providers[0] (p).env[0]: must be {name"),
        ({"argz": []}, "unknown field(s) argz"),
        ({"tokenAttributes": {}}, "not supported"),
    ],
)
def test_config_errors(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"apiVersion": "kubelet.config.k8s.io/v1",
                                "kind": "CredentialProviderConfig",
                                "providers": [{**CONFIG_OK, **change}]}))
    with pytest.raises(CredentialProviderError) as info:
        load_credential_provider_config(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_config_document_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "CredentialProviderConfig",
                                "providers": [CONFIG_OK]}))
    with pytest.raises(CredentialProviderError, match="apiVersion must be one of"):
        load_credential_provider_config(path)
    path.write_text(json.dumps({"apiVersion": "kubelet.config.k8s.io/v1beta1",
                                "kind": "CredentialProviderConfig", "providers": []}))
    with pytest.raises(CredentialProviderError, match="providers must be a non-empty list"):
        load_credential_provider_config(path)
    with pytest.raises(CredentialProviderError, match=r"missing\.json: cannot open"):
        load_credential_provider_config(tmp_path / "missing.json")


def test_eks_style_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1", "kind": "CredentialProviderConfig",
        "providers": [{"name": "ecr-credential-provider",
                       "matchImages": ["*.dkr.ecr.*.amazonaws.com", "*.dkr.ecr.*.amazonaws.com.cn",
                                       "*.dkr-ecr.*.on.aws"],
                       "defaultCacheDuration": "12h",
                       "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}))
    (provider,) = load_credential_provider_config(path)
    assert provider.default_cache_duration == 12 * 3600
    assert "env" not in repr(provider)  # env values may be secrets
    assert provider.handles(parse_reference(f"{ECR}/x"))
    assert not provider.handles(parse_reference("public.ecr.aws/x/y"))


@pytest.mark.parametrize(("text", "seconds"), [("12h", 43200), ("1h30m", 5400), ("0", 0),
                                                ("0s", 0), ("1.5s", 1.5), ("300ms", 0.3)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == pytest.approx(seconds)


# ----------------------------------------------------------------------------- chain


async def test_chain_first_with_credentials_wins(plugin_env):
    secrets = keyring({ECR: {"username": "from-secret", "password": "x"}})
    plugins = plugin_env()
    chain = ChainKeyring([AnonymousKeyring(), secrets, plugins])
    assert (await chain.credentials_for(parse_reference(f"{ECR}/a"))).username == "from-secret"
    assert plugin_env.calls() == []  # never asked: the secret answered first
    chain = ChainKeyring([keyring({"other.io": {"username": "o", "password": "x"}}), plugins])
    assert (await chain.credentials_for(parse_reference(f"{ECR}/a"))).username == "AWS"
    assert await ChainKeyring([]).credentials_for(parse_reference("nginx")) is None


def test_authconfig_is_the_containerd_type():
    ring = keyring({"r.io": {"username": "u", "password": "p"}})
    assert isinstance(ring.lookup(parse_reference("r.io/a")), AuthConfig)
    assert os.environ.get("CALLS") is None  # the plugin env stays in the child process
