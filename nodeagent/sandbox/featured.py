"""Images whose layers use every tar feature an unpacker must get right, for tests that
compare nodeagent's fast pull with containerd's own unpack path by path.

Layers are built from explicit entries (``Entry``) with Python's tarfile (PAX or GNU
format) or, for sparse files, GNU tar; compressed with gzip, zstd or not at all. The set
covers: owners, modes with setuid/setgid/sticky, fractional and zero mtimes, xattrs
(user.* and an ignored trusted.*), hard links whose header changes the shared inode,
symlinks (relative, absolute, dangling, through which later entries resolve), character
and block devices, FIFOs, long names and link targets (PAX and GNU), non-UTF-8 names,
implicit parent directories, "./" and "/" prefixed names, duplicate entries, directories
listed after their files, whiteouts and opaque directories (in the base layer and above),
a PAX global header, sparse files, empty layers, docker and OCI media types, and a
multi-arch index. Content is fixed, so digests are stable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.sandbox.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    BuiltIndex,
)
from nodeagent.sandbox.layers import Layer
from nodeagent.sandbox.process import SandboxError

MTIME = 1_600_000_000
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


@dataclass
class Entry:
    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    link: str = ""
    device: tuple[int, int] = (0, 0)
    xattrs: dict[str, str] = field(default_factory=dict)


def tar_bytes(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT,
              global_headers: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt,
                      pax_headers=global_headers or {}, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = _KINDS[entry.kind]
            info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
            info.mtime = entry.mtime
            info.uname = info.gname = ""
            info.linkname = entry.link
            info.devmajor, info.devminor = entry.device
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            info.size = len(entry.data) if entry.kind == "file" else 0
            archive.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return out.getvalue()


def sparse_tar(fmt: str = "posix") -> bytes:
    """A tar made by GNU tar --sparse holding one 64 MiB file with 3 data extents
    (``fmt`` posix: PAX GNU.sparse 1.0, which containerd reads; gnu: the old 'S' type,
    which containerd refuses)."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work, "sparse.img")
        with open(path, "wb") as file:
            file.truncate(64 << 20)
            for offset in (0, 20 << 20, (64 << 20) - 4096):
                file.seek(offset)
                file.write(hashlib.sha256(str(offset).encode()).digest() * 128)
        os.utime(path, (MTIME, MTIME))
        out = Path(work, "layer.tar")
        result = subprocess.run(
            ["tar", "--sparse", f"--format={fmt}", "--owner=0", "--group=0", "--numeric-owner",
             "-C", work, "-cf", str(out), "sparse.img"], capture_output=True, check=False)
        if result.returncode != 0:
            raise SandboxError(f"GNU tar failed: {result.stderr.decode(errors='replace')}")
        return out.read_bytes()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


@dataclass(frozen=True)
class LayerBlob:
    tar: bytes
    compression: str  # gzip, zstd, none
    media_type: str


def layer_blob(entries_or_tar: list[Entry] | bytes, compression: str = "gzip",
               media_type: str | None = None, fmt: int = tarfile.PAX_FORMAT) -> LayerBlob:
    raw = entries_or_tar if isinstance(entries_or_tar, bytes) else tar_bytes(entries_or_tar, fmt)
    default = {"gzip": OCI_GZIP, "zstd": OCI_ZSTD, "none": OCI_TAR}[compression]
    return LayerBlob(raw, compression, media_type or default)


def build_featured(name: str, blobs: list[LayerBlob], cache_dir: Path, *, tag: str = "1.0",
                   media: str = "oci", platform: str = "linux/amd64") -> BuiltImage:
    """An image of these layers (bottom first); blobs are written to ``cache_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    layers, descriptors = [], []
    for blob in blobs:
        data = compress(blob.tar, blob.compression)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = cache_dir / f"{digest[7:]}.blob"
        if not path.exists():
            path.write_bytes(data)
        layers.append(Layer(digest, len(data), "sha256:" + hashlib.sha256(blob.tar).hexdigest(),
                            path, len(blob.tar)))
        media_type = DOCKER_LAYER if media == "docker" else blob.media_type
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    os_name, arch = platform.split("/")[:2]
    config = _json({"architecture": arch, "os": os_name, "created": "2020-09-13T12:26:40Z",
                    "config": {"Cmd": ["/bin/sh"]},
                    "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}})
    manifest_type, config_type = ((DOCKER_MANIFEST, DOCKER_CONFIG) if media == "docker"
                                  else (OCI_MANIFEST, OCI_CONFIG))
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = _json({"schemaVersion": 2, "mediaType": manifest_type,
                      "config": {"mediaType": config_type, "digest": config_digest,
                                 "size": len(config)},
                      "layers": descriptors})
    return BuiltImage(
        repository=name, tag=tag, manifest_digest="sha256:" + hashlib.sha256(manifest).hexdigest(),
        layers=layers, total_size=sum(x.size for x in layers) + len(config), platform=platform,
        media_type=manifest_type, manifest=manifest, config=config, config_digest=config_digest,
        config_media_type=config_type)


def build_featured_index(name: str, images: list[BuiltImage], *, tag: str = "1.0",
                         media: str = "oci") -> BuiltIndex:
    entries = []
    for image in images:
        os_name, arch = image.platform.split("/")[:2]
        entries.append({"mediaType": image.media_type, "digest": image.manifest_digest,
                        "size": len(image.manifest),
                        "platform": {"architecture": arch, "os": os_name}})
    index_type = DOCKER_LIST if media == "docker" else OCI_INDEX
    index = _json({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    return BuiltIndex(repository=name, tag=tag,
                      manifest_digest="sha256:" + hashlib.sha256(index).hexdigest(),
                      images=images, media_type=index_type, manifest=index)


def _json(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()
