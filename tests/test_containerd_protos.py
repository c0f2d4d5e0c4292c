"""The committed stubs in nodeagent/containerd/api match a fresh generation from protos/,
and the protos keep the upstream wire format (package names, field numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nodeagent.containerd import generate


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    fresh_root = tmp_path / "api"
    fresh = set(generate.generate(fresh_root))
    committed = set(generate.generated_files(generate.API_DIR))
    fix = f"run `{generate.COMMAND}` and commit nodeagent/containerd/api"
    missing = sorted(str(p) for p in fresh - committed)
    extra = sorted(str(p) for p in committed - fresh)
    assert not missing, f"stubs missing from nodeagent/containerd/api: {missing}; {fix}"
    assert not extra, f"stale stubs without a proto in nodeagent/containerd/api: {extra}; {fix}"
    for rel in sorted(fresh):
        stale = (generate.API_DIR / rel).read_text() != (fresh_root / rel).read_text()
        assert not stale, f"nodeagent/containerd/api/{rel} is stale; {fix}"


def test_stubs_import_as_installed_package() -> None:
    # A fresh interpreter, outside the repo directory, so only the package path resolves.
    code = (
        "from nodeagent.containerd.api.containerd.services.images.v1 import images_pb2_grpc\n"
        "from nodeagent.containerd.api.containerd.services.snapshots.v1 import snapshots_pb2\n"
        "from nodeagent.containerd.api.runtime.v1 import api_pb2_grpc\n"
        "print(snapshots_pb2.ViewSnapshotResponse.DESCRIPTOR.fields[0].message_type.full_name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "containerd.types.Mount"


def _numbers(message) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_wire_format_matches_upstream() -> None:
    from nodeagent.containerd.api.containerd.events import image_pb2
    from nodeagent.containerd.api.containerd.services.content.v1 import content_pb2
    from nodeagent.containerd.api.containerd.services.events.v1 import events_pb2
    from nodeagent.containerd.api.containerd.services.images.v1 import images_pb2
    from nodeagent.containerd.api.runtime.v1 import api_pb2

    assert api_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name == (
        "runtime.v1.ImageService"
    )
    assert _numbers(api_pb2.AuthConfig) == {
        "username": 1, "password": 2, "auth": 3, "server_address": 4,
        "identity_token": 5, "registry_token": 6,
    }
    assert _numbers(api_pb2.Image) == {
        "id": 1, "repo_tags": 2, "repo_digests": 3, "size": 4, "uid": 5, "username": 6,
        "spec": 7, "pinned": 8,
    }
    assert _numbers(api_pb2.FilesystemUsage) == {
        "timestamp": 1, "fs_id": 2, "used_bytes": 3, "inodes_used": 4,
    }
    assert _numbers(images_pb2.Image) == {
        "name": 1, "labels": 2, "target": 3, "created_at": 7, "updated_at": 8,
    }
    assert _numbers(content_pb2.Status) == {
        "started_at": 1, "updated_at": 2, "ref": 3, "offset": 4, "total": 5, "expected": 6,
    }
    assert _numbers(events_pb2.Envelope) == {
        "timestamp": 1, "namespace": 2, "topic": 3, "event": 4,
    }
    # containerd 1.6.20 sends this exact Any type_url for image events (measured).
    assert image_pb2.ImageDelete.DESCRIPTOR.full_name == "containerd.services.images.v1.ImageDelete"
