"""Registry credentials from docker config files and pull secrets: which key matches an
image (the kubelet's glob rules), the credential forms, clear errors that name the key,
and secrets never leaking."""

import json
import traceback

import pytest
from support.auth_helpers import SECRET, b64, keyring

from nodeagent.credentials.dockerconfig import AuthSourceError, DockerConfigKeyring
from nodeagent.credentials.keyring import RegistryPattern
from nodeagent.errors import NodeagentError
from nodeagent.registry.reference import parse_reference

# ----------------------------------------------------------------------------- glob table


@pytest.mark.parametrize(
    ("pattern", "image", "expected"),
    [
        ("123456789.dkr.ecr.us-east-1.amazonaws.com",
         "123456789.dkr.ecr.us-east-1.amazonaws.com/app:1", True),
        ("*.dkr.ecr.*.amazonaws.com", "123456789.dkr.ecr.us-east-1.amazonaws.com/app", True),
        ("*.dkr.ecr.*.amazonaws.com", "123456789.dkr.ecr.us-east-1.amazonaws.com.cn/app", False),
        ("*.azurecr.io", "myreg.azurecr.io/x", True),
        ("*.azurecr.io", "azurecr.io/x", False),  # a glob matches exactly one label
        ("*.io", "a.k8s.io/x", False),
        ("*.*.registry.io", "a.b.registry.io/x", True),
        ("k8s.*", "k8s.io/x", True),
        ("app*.k8s.io", "app1.k8s.io/x", True),
        ("app*.k8s.io", "web.k8s.io/x", False),
        ("gcr.io", "gcr.io/project/img", True),
        ("gcr.io", "us.gcr.io/project/img", False),
        ("registry.io:8080/path", "registry.io:8080/path/img", True),
        ("registry.io:8080/path", "registry.io:8080/other/img", False),
        ("registry.io:8080/path", "registry.io/path/img", False),  # port must match
        ("registry.io", "registry.io:8080/path/img", False),
        ("registry.io/path", "registry.io/pathology/img", False),  # whole path components
        ("registry.io/path/img", "registry.io/path/img:tag", True),
        ("https://registry.io/v2/", "registry.io/a", True),
        ("http://registry.io", "registry.io/a", True),
        ("REGISTRY.IO", "registry.io/a", True),
        ("docker.io", "nginx", True),
        ("index.docker.io", "library/nginx", True),
        ("https://index.docker.io/v1/", "bitnami/redis", True),
        ("registry-1.docker.io", "docker.io/library/busybox", True),
        ("docker.io/bitnami", "bitnami/redis", True),
        ("docker.io/bitnami", "nginx", False),
        ("localhost:5000", "localhost:5000/a", True),
        ("127.0.0.1:5000", "127.0.0.1:5000/a", True),
        ("[::1]:5000", "[::1]:5000/a", True),
    ],
)
def test_registry_pattern_matching(pattern, image, expected):
    assert RegistryPattern.parse(pattern).matches(parse_reference(image)) is expected


# ----------------------------------------------------------------------------- docker config


async def user_for(ring, image):
    found = await ring.credentials_for(parse_reference(image))
    return found.username if found else None


async def test_most_specific_key_wins():
    ring = keyring({
        "quay.io": {"auth": b64("host:p")},
        "quay.io/coreos": {"auth": b64("org:p")},
        "quay.io/coreos/etcd": {"auth": b64("repo:p")},
        "*.quay.io": {"auth": b64("glob:p")},
        "eu.quay.io": {"auth": b64("literal:p")},
        "*.quay.io/team": {"auth": b64("globpath:p")},
        "https://index.docker.io/v1/": {"auth": b64("hub:p")},
    })
    assert await user_for(ring, "quay.io/coreos/etcd:v3") == "repo"
    assert await user_for(ring, "quay.io/coreos/flannel") == "org"
    assert await user_for(ring, "quay.io/other/x") == "host"
    assert await user_for(ring, "eu.quay.io/x") == "literal"  # literal beats glob
    assert await user_for(ring, "us.quay.io/x") == "glob"
    assert await user_for(ring, "us.quay.io/team/x") == "globpath"  # longer path wins
    assert await user_for(ring, "nginx") == "hub"  # index.docker.io/v1/ == docker.io
    assert await user_for(ring, "ghcr.io/x") is None


async def test_credential_forms():
    ring = keyring({
        "a.io": {"auth": b64(f"alice:{SECRET}"), "email": "a@example.com"},
        "b.io": {"username": "bob", "password": SECRET},
        "c.io": {"identitytoken": SECRET},
        "d.io": {"auth": b64("user:pass:with:colons")},
        "e.io": {},  # written by docker when a credential helper holds the secret
    })
    a = await ring.credentials_for(parse_reference("a.io/x"))
    assert (a.username, a.password) == ("alice", SECRET)
    b = await ring.credentials_for(parse_reference("b.io/x"))
    assert (b.username, b.password) == ("bob", SECRET)
    c = await ring.credentials_for(parse_reference("c.io/x"))
    assert c.identity_token == SECRET and not c.username
    d = await ring.credentials_for(parse_reference("d.io/x"))
    assert (d.username, d.password) == ("user", "pass:with:colons")
    assert await ring.credentials_for(parse_reference("e.io/x")) is None
    assert len(ring) == 4


async def test_legacy_dockercfg_and_files(tmp_path):
    legacy = tmp_path / "dockercfg"
    legacy.write_text(json.dumps({"https://legacy.io": {"auth": b64("old:pw"), "email": "x"}}))
    ring = DockerConfigKeyring.from_file(legacy)
    assert await user_for(ring, "legacy.io/a") == "old"
    modern = tmp_path / "config.json"
    modern.write_text(json.dumps({"auths": {"new.io": {"auth": b64("new:pw")}},
                                  "credsStore": "desktop"}))
    assert await user_for(DockerConfigKeyring.from_file(modern), "new.io/a") == "new"


async def test_from_secret():
    cfg = json.dumps({"auths": {"priv.io": {"username": "u", "password": SECRET}}})
    ring = DockerConfigKeyring.from_secret(
        "kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(cfg)}, "secret ml/ngc")
    assert await user_for(ring, "priv.io/a") == "u"
    legacy = json.dumps({"priv.io": {"auth": b64("l:p")}})
    ring = DockerConfigKeyring.from_secret(
        "kubernetes.io/dockercfg", {".dockercfg": b64(legacy)}, "secret ml/old")
    assert await user_for(ring, "priv.io/a") == "l"
    with pytest.raises(AuthSourceError, match="secret ml/x: secret type is 'Opaque'"):
        DockerConfigKeyring.from_secret("Opaque", {}, "secret ml/x")
    with pytest.raises(AuthSourceError, match=r"has no '\.dockerconfigjson' key"):
        DockerConfigKeyring.from_secret("kubernetes.io/dockerconfigjson", {}, "secret ml/x")
    with pytest.raises(AuthSourceError, match="is not valid base64"):
        DockerConfigKeyring.from_secret("kubernetes.io/dockerconfigjson",
                                        {".dockerconfigjson": "!!!"}, "secret ml/x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"auths": {"r.io": {"auth": "' + SECRET + '"}', "pull-secret: not valid JSON"),
        (json.dumps({"auths": {"r.io": {"auth": SECRET + "%"}}}),
         'pull-secret: auths["r.io"].auth: not valid base64'),
        (json.dumps({"auths": {"r.io": {"auth": b64(SECRET)}}}),
         'pull-secret: auths["r.io"].auth: must encode "username:password"'),
        (json.dumps({"auths": {"r.io": SECRET}}), 'pull-secret: auths["r.io"]: must be an object'),
        (json.dumps({"auths": {"r.io": {"password": 5}}}),
         'pull-secret: auths["r.io"].password: must be a string'),
        (json.dumps({"auths": {"/x": {"username": "u", "password": SECRET}}}),
         'pull-secret: auths["/x"]: "/x" has no valid registry host'),
        (json.dumps([SECRET]), "pull-secret: expected a JSON object"),
    ],
)
def test_source_errors_name_key_not_secret(data, message):
    with pytest.raises(AuthSourceError) as info:
        DockerConfigKeyring.from_json(data, "pull-secret")
    assert isinstance(info.value, NodeagentError)
    assert message in str(info.value)
    assert SECRET not in str(info.value)
    # Nor in a chained exception the CLI might print with the traceback.
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_missing_file(tmp_path):
    with pytest.raises(AuthSourceError, match=r"registry credentials .*nope: cannot open"):
        DockerConfigKeyring.from_file(tmp_path / "nope")


async def test_credentials_are_masked(caplog):
    ring = keyring({"r.io": {"username": "u", "password": SECRET}})
    auth = await ring.credentials_for(parse_reference("r.io/a"))
    for text in (repr(auth), str(auth), repr(ring), f"{auth}", repr([auth])):
        assert SECRET not in text
    assert "u" in repr(auth)
