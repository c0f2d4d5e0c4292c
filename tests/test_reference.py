"""Image reference parsing/normalization, checked against docker/containerd behaviour."""

import pytest

from nodeagent.errors import NodeagentError
from nodeagent.registry.reference import ImageReference, ReferenceError, parse_reference

D64 = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("library/nginx", "docker.io/library/nginx:latest"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
        ("index.docker.io/a/b/c:t", "docker.io/a/b/c:t"),
        ("localhost/foo", "localhost/foo:latest"),
        ("localhost:5000/foo/bar:v1", "localhost:5000/foo/bar:v1"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io/nvidia/pytorch:24.05-py3"),
        ("123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/train:2024_06.1",
         "123456789012.dkr.ecr.us-west-2.amazonaws.com/ml/train:2024_06.1"),
        ("[::1]:5000/img:tag", "[::1]:5000/img:tag"),
        ("My.Registry/img", "My.Registry/img:latest"),  # upper-case host is allowed
        ("a__b/c-d--e/f.g:T_1", "docker.io/a__b/c-d--e/f.g:T_1"),
        # digest only: no default tag
        (f"nginx@{D64}", f"docker.io/library/nginx@{D64}"),
        (f"ghcr.io/o/r@{D64}", f"ghcr.io/o/r@{D64}"),
        # tag and digest: both kept
        (f"nginx:1.25@{D64}", f"docker.io/library/nginx:1.25@{D64}"),
        ("foo:5000", "docker.io/library/foo:5000"),  # no "/": 5000 is a tag, not a port
    ],
)
def test_normalizes_like_docker(text, expected):
    ref = parse_reference(text)
    assert str(ref) == expected
    # Normalized text round-trips, and parsing it again gives the same value.
    assert str(parse_reference(expected)) == expected
    assert parse_reference(str(ref)) == ref


def test_fields():
    ref = parse_reference(f"localhost:5000/team/app:v2@{D64}")
    assert ref == ImageReference("localhost:5000", "team/app", "v2", D64)
    assert ref.name == "localhost:5000/team/app"
    assert ref.locator == D64
    assert parse_reference("nginx").locator == "latest"
    assert parse_reference("nginx").with_digest(D64).digest == D64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is empty"),
        (" nginx", "whitespace"),
        ("Nginx", "must be lowercase"),
        ("foo/Bar:1", "must be lowercase"),
        ("nginx:", 'tag ""'),
        ("nginx:-dev", 'tag "-dev"'),
        ("nginx:" + "a" * 129, "at most 128"),
        ("nginx:a b", 'tag "a b"'),
        ("nginx@sha256:abc", "64 lower-case hex"),
        ("nginx@sha256:" + "A" * 64, "64 lower-case hex"),
        ("nginx@md5:" + "a" * 32, 'unsupported digest algorithm "md5"'),
        ("nginx@" + "a" * 64, "must look like sha256:"),
        ("@" + D64, "no repository name"),
        ("-foo", 'component "-foo"'),
        ("foo//bar", 'component ""'),
        ("foo/bar-", 'component "bar-"'),
        ("example.com/", "repository name is empty"),
        ("ex ample.com/foo", 'registry host "ex ample.com"'),
        ("exa_mple.com/foo", 'registry host "exa_mple.com"'),
        ("0123456789abcdef" * 4, "image ID"),
        ("example.com/" + "a" * 250, "longer than 255"),
    ],
)
def test_rejects_with_reason(text, problem):
    with pytest.raises(ReferenceError) as info:
        parse_reference(text)
    assert isinstance(info.value, NodeagentError)
    assert problem in str(info.value)
    assert info.value.text == text
    if text:
        # The message names the reference (shortened when very long).
        assert text[:40] in str(info.value)


def test_non_string():
    with pytest.raises(ReferenceError, match="must be a string"):
        parse_reference(5)  # type: ignore[arg-type]


def test_other_digest_algorithms_are_accepted():
    sha512 = "sha512:" + "ab" * 64
    assert parse_reference(f"nginx@{sha512}").digest == sha512
    with pytest.raises(ReferenceError):
        parse_reference("nginx@sha512:" + "ab" * 32)


def test_with_digest_validates():
    with pytest.raises(ReferenceError):
        parse_reference("nginx").with_digest("sha256:nothex")
