"""resolve_manifest against a real registry (Debian's docker-registry, distribution 2.8):
single-platform images, indexes and the platform picked, Docker media types, errors that
name the image, plus containerd-style hosts.toml mirrors."""

import pytest
from support.resolve_helpers import expected

from nodeagent.errors import NodeagentError
from nodeagent.registry.reference import parse_reference
from nodeagent.registry.resolve import (
    RegistryError,
    host_default_platform,
    parse_challenge,
    registry_endpoints,
    resolve_manifest,
)
from nodeagent.sandbox.local_registry import free_port

pytestmark = pytest.mark.containerd


async def test_resolves_single_platform_images(sample_images):
    for pushed in sample_images:
        if hasattr(pushed.image, "images"):
            continue  # the index, below
        resolved = await resolve_manifest(pushed.ref, None)
        assert resolved == expected(pushed.image)
        assert resolved.total_size == pushed.total_size
        # By digest: same answer, and the reference type is accepted too.
        assert await resolve_manifest(parse_reference(pushed.digest_ref), None) == resolved


async def test_picks_platform_from_index(sample_images):
    tools = sample_images["tools"]
    arm = await resolve_manifest(tools.ref, None, "linux/arm64")
    amd = await resolve_manifest(tools.ref, None, "linux/x86_64")
    for resolved, platform in ((arm, "linux/arm64"), (amd, "linux/amd64")):
        image = tools.image.for_platform(platform)
        assert resolved.manifest_digest == image.manifest_digest
        assert resolved.layers == [(layer.digest, layer.size) for layer in image.layers]
        assert resolved.index_digest == tools.digest
        assert resolved.platform == platform
    assert arm.manifest_digest != amd.manifest_digest
    default = await resolve_manifest(tools.digest_ref, None)
    assert default.platform == host_default_platform()


async def test_platform_missing_from_index(sample_images):
    tools = sample_images["tools"]
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(tools.ref, None, "linux/s390x")
    assert f'image "{tools.ref}"' in str(info.value)
    assert "has no linux/s390x manifest (available: linux/amd64, linux/arm64)" in str(info.value)
    assert info.value.reason == "not_found"


async def test_docker_media_types(image_pusher):
    single = image_pusher("dockerfmt", media="docker")
    resolved = await resolve_manifest(single.ref, None)
    assert resolved == expected(single.image)
    assert resolved.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    multi = image_pusher("dockerlist", media="docker", platforms=["linux/amd64", "linux/arm/v7"])
    resolved = await resolve_manifest(multi.ref, None, "linux/arm")
    assert resolved.manifest_digest == multi.image.for_platform("linux/arm/v7").manifest_digest


async def test_not_found_names_image_and_status(registry, sample_images):
    ref = f"{registry.host}/demo/missing:1.0"
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(ref, None)
    assert isinstance(info.value, NodeagentError)
    assert info.value.status == 404 and info.value.reason == "not_found"
    assert str(info.value).startswith(f'image "{ref}": {registry.host} answered HTTP 404')
    assert "MANIFEST_UNKNOWN" in str(info.value) or "NAME_UNKNOWN" in str(info.value)
    tag = sample_images["python"].ref.rsplit(":", 1)[0] + ":no-such-tag"
    with pytest.raises(RegistryError, match="HTTP 404"):
        await resolve_manifest(tag, None)


async def test_unreachable_registry():
    port = free_port()
    with pytest.raises(RegistryError) as info:
        await resolve_manifest(f"127.0.0.1:{port}/a/b:1", None)
    assert info.value.reason == "registry_unreachable"
    assert f"cannot reach 127.0.0.1:{port}" in str(info.value)


# ----------------------------------------------------------------------------- hosts.toml


def _access_log(registry):
    return registry.log_file.read_text(errors="replace")


async def test_hosts_toml_server_and_mirrors(tmp_path, registry, sample_images):
    pushed = sample_images["trainer"]
    repo_tag = pushed.ref.split("/", 1)[1]
    dead = free_port()
    (tmp_path / "registry.example.com").mkdir()
    (tmp_path / "registry.example.com" / "hosts.toml").write_text(
        'server = "https://registry.example.com"\n\n'
        f'[host."http://127.0.0.1:{dead}"]\n  capabilities = ["pull", "resolve"]\n\n'
        f'[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    endpoints = registry_endpoints("registry.example.com", tmp_path)
    assert [e.base for e in endpoints] == [
        f"http://127.0.0.1:{dead}/v2", f"http://{registry.host}/v2",
        "https://registry.example.com/v2"]
    resolved = await resolve_manifest(f"registry.example.com/{repo_tag}", None,
                                      hosts_dir=tmp_path)
    assert resolved == expected(pushed.image)
    # Mirror requests carry ?ns=<registry>, as containerd's do.
    assert "ns=registry.example.com" in _access_log(registry)


async def test_hosts_toml_server_only_and_default(tmp_path, registry, sample_images):
    pushed = sample_images["python"]
    repo_tag = pushed.ref.split("/", 1)[1]
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(f'server = "http://{registry.host}"\n')
    resolved = await resolve_manifest(f"anything.example.org/{repo_tag}", None,
                                      hosts_dir=tmp_path)
    assert resolved.manifest_digest == pushed.digest


async def test_hosts_toml_errors_and_capabilities(tmp_path, registry, sample_images):
    pushed = sample_images["python"]
    repo_tag = pushed.ref.split("/", 1)[1]
    (tmp_path / "pull.only").mkdir()
    (tmp_path / "pull.only" / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\ncapabilities = ["pull"]\n')
    with pytest.raises(RegistryError, match=r'no host in hosts\.toml has the "resolve"'):
        await resolve_manifest(f"pull.only/{repo_tag}", None, hosts_dir=tmp_path)
    # By digest only "pull" is needed.
    digest_ref = f"pull.only/{pushed.digest_ref.split('/', 1)[1]}"
    assert (await resolve_manifest(digest_ref, None, hosts_dir=tmp_path)).manifest_digest == (
        pushed.digest)
    (tmp_path / "broken.io").mkdir()
    (tmp_path / "broken.io" / "hosts.toml").write_text("server = \n")
    with pytest.raises(RegistryError, match=r"cannot read .*broken.io/hosts.toml"):
        await resolve_manifest("broken.io/a:1", None, hosts_dir=tmp_path)


async def test_all_mirrors_failing_reports_each(tmp_path, registry):
    dead = free_port()
    (tmp_path / "m.example.com").mkdir()
    (tmp_path / "m.example.com" / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n[host."http://127.0.0.1:{dead}"]\n')
    with pytest.raises(RegistryError) as info:
        await resolve_manifest("m.example.com/demo/nothing-here:1", None, hosts_dir=tmp_path)
    text = str(info.value)
    assert f"{registry.host} answered HTTP 404" in text
    assert f"also tried: cannot reach 127.0.0.1:{dead}" in text


def test_default_endpoints():
    assert [e.base for e in registry_endpoints("docker.io", None)] == [
        "https://registry-1.docker.io/v2"]
    assert [e.base for e in registry_endpoints("localhost:5000", None)] == [
        "http://localhost:5000/v2"]
    assert [e.base for e in registry_endpoints("ghcr.io", None)] == ["https://ghcr.io/v2"]


def test_parse_challenge():
    assert parse_challenge('Bearer realm="https://auth.docker.io/token",'
                           'service="registry.docker.io",scope="repository:library/nginx:pull"'
                           ) == ("bearer", {"realm": "https://auth.docker.io/token",
                                            "service": "registry.docker.io",
                                            "scope": "repository:library/nginx:pull"})
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
