"""The fast pull's parts on their own: Go path rules, the tar reader's Go semantics,
decompression, the pull plan (chain IDs and labels checked against values read off real
containerd pulls), and the range fetcher against a real HTTP server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import http.server
import io
import os
import tarfile
import threading

import pytest
import zstandard

from nodeagent.pull import plan, rootpath
from nodeagent.pull.chunks import ChunkSource, TarFormatError
from nodeagent.pull.decompress import DecompressError, decompressed
from nodeagent.pull.fetch import BlobFetcher, BlobSource, FetchOptions
from nodeagent.pull.tarstream import DIR, REG, SYMLINK, XGLOBAL, TarReader
from nodeagent.pull.watermark import Watermark, read_blob
from nodeagent.registry.endpoints import Endpoint
from nodeagent.registry.errors import RegistryError
from nodeagent.registry.reference import parse_reference
from nodeagent.registry.session import RegistrySession, Request
from nodeagent.sandbox.featured import Entry, tar_bytes

# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("path", "clean"), [
    ("", "."), ("a//b/./c/..", "a/b"), ("/../x", "/x"), ("../x", "../x"), ("//a/", "/a"),
    ("a/../..", ".."), (".", "."),
])
def test_go_clean(path, clean):
    assert rootpath.go_clean(path) == clean


def test_go_split_and_join():
    assert rootpath.go_split("a/b/c") == ("a/b/", "c")
    assert rootpath.go_split("a/b/") == ("a/b/", "")
    assert rootpath.go_split("c") == ("", "c")
    assert rootpath.go_join("/root", "/etc/", "x") == "/root/etc/x"
    assert rootpath.go_join("", "") == ""


def test_root_path_keeps_symlinks_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../outside", root / "climb")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    r = str(root)
    assert rootpath.root_path(r, "lib/x.so") == f"{r}/usr/lib/x.so"
    assert rootpath.root_path(r, "abs/passwd") == f"{r}/etc/passwd"
    assert rootpath.root_path(r, "climb/file") == f"{r}/outside/file"
    assert rootpath.root_path(r, "../../etc") == f"{r}/etc"
    with pytest.raises(OSError, match="symbolic links"):  # as Go: ELOOP, an error
        rootpath.root_path(r, "loop1/x")


# ----------------------------------------------------------------------------- tar


def entries_of(data: bytes, piece: int = 700) -> list:
    chunks = iter([data[i:i + piece] for i in range(0, len(data), piece)])
    reader = TarReader(ChunkSource(lambda: next(chunks, b"")))
    found = []
    while (entry := reader.next()) is not None:
        found.append(entry)
    return found


def test_pax_global_header_is_an_entry_and_not_applied():
    data = tar_bytes([Entry("f", data=b"x", uid=7)], global_headers={"uid": "4242"})
    found = entries_of(data)
    assert [e.typeflag for e in found] == [XGLOBAL, REG]
    assert found[1].uid == 7  # Python's tarfile would say 4242


def test_gnu_long_name_wins_over_pax_path_and_areg_slash_is_a_dir():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("g/" + "n" * 150)
        archive.addfile(info, io.BytesIO())
    found = entries_of(out.getvalue())
    assert found[0].name == "g/" + "n" * 150
    block = bytearray(tarfile.TarInfo("legacy/").tobuf(tarfile.USTAR_FORMAT))
    block[156] = 0  # typeflag NUL
    block[148:156] = b"        "
    block[148:155] = f"{sum(block):06o}\0".encode()
    (legacy,) = entries_of(bytes(block) + bytes(1024))
    assert legacy.typeflag == DIR


def test_header_only_types_carry_no_data_whatever_their_size():
    data = bytearray(tar_bytes([Entry("l", "symlink", link="t"), Entry("f", data=b"ok")],
                               fmt=tarfile.USTAR_FORMAT))
    found = entries_of(bytes(data))
    assert [(e.name, e.typeflag) for e in found] == [("l", SYMLINK), ("f", REG)]


def test_broken_archives_are_refused():
    data = bytearray(tar_bytes([Entry("f", data=b"x" * 2000)]))
    pieces = iter([bytes(data[:1200])])
    reader = TarReader(ChunkSource(lambda: next(pieces, b"")))
    assert reader.next() is not None
    with pytest.raises(TarFormatError, match="unexpected end"):
        reader.write_data(os.open(os.devnull, os.O_WRONLY))
    bad = bytearray(data)
    bad[0] ^= 0xFF  # name byte changes, the checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        entries_of(bytes(bad))
    with pytest.raises(TarFormatError, match="zero block followed by data"):
        entries_of(bytes(512) + bytes(data))


# ----------------------------------------------------------------------------- decompression


def test_gzip_members_zstd_frames_and_plain_tar():
    raw = os.urandom(1 << 20) + b"z" * (9 << 20)
    members = gzip.compress(raw[:3 << 20]) + gzip.compress(raw[3 << 20:])
    out = list(decompressed(members[i:i + 65536] for i in range(0, len(members), 65536)))
    assert b"".join(out) == raw and max(map(len, out)) <= 4 << 20
    frames = zstandard.ZstdCompressor().compress(raw[:10]) + \
        zstandard.ZstdCompressor().compress(raw[10:])
    assert b"".join(decompressed([frames])) == raw
    assert b"".join(decompressed([raw[:5], raw[5:]])) == raw
    with pytest.raises(DecompressError, match="ends early"):
        list(decompressed([members[:1000]]))


# ----------------------------------------------------------------------------- plan


def test_chain_ids_match_containerd():
    # Read off `ctr snapshots ls` after a real CRI pull of a two-layer image.
    diff_ids = ["sha256:f1fe30daf6b09348b1a70cc517fc9611f585029ed5c4bfc3f71fe875cde76b9e",
                "sha256:48272912c1d0a6f6899ab30f57fdfd46032432776581f39a4d44af680e86fa91"]
    assert plan.chain_ids(diff_ids) == [
        diff_ids[0], "sha256:ab5f50cde5a24107660069b6313eec63f51e24cab9e24d9ea5b7c6741cb7b423"]


def test_record_names_and_source_label_as_cri_writes_them():
    digest = "sha256:" + "a" * 64
    tagged = parse_reference("nginx:1.25")
    assert plan.record_names(tagged, digest, "sha256:" + "c" * 64) == (
        "docker.io/library/nginx:1.25", f"docker.io/library/nginx@{digest}", "sha256:" + "c" * 64)
    both = parse_reference(f"127.0.0.1:5000/app:1@{digest}")
    assert plan.record_names(both, digest, "sha256:" + "c" * 64)[0] == \
        f"127.0.0.1:5000/app@{digest}"
    assert plan.source_label(both) == ("containerd.io/distribution.source.127.0.0.1", "app")
    merged = plan.merged_source({"containerd.io/distribution.source.127.0.0.1": "other"}, both)
    assert merged == {"containerd.io/distribution.source.127.0.0.1": "other,app"}


# ----------------------------------------------------------------------------- fetch


class _BlobServer(http.server.ThreadingHTTPServer):
    def __init__(self, blob: bytes, ranges: bool) -> None:
        self.blob, self.ranges, self.range_requests, self.requests = blob, ranges, 0, 0
        super().__init__(("127.0.0.1", 0), _BlobHandler)


class _BlobHandler(http.server.BaseHTTPRequestHandler):
    server: _BlobServer

    def do_GET(self) -> None:
        blob, header = self.server.blob, self.headers.get("Range")
        self.server.requests += 1
        if header and self.server.ranges:
            self.server.range_requests += 1
            start, end = (int(x) for x in header.removeprefix("bytes=").split("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(blob)}")
            body = blob[start:end + 1]
        else:
            self.send_response(200)
            body = blob
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("ranges", [True, False])
async def test_fetch_in_ranges_or_whole_and_resume(tmp_path, ranges):
    blob = os.urandom((5 << 20) + 123)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    server = _BlobServer(blob, ranges)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    source = BlobSource(digest, len(blob), (Endpoint(f"http://{host}/v2"),), host, "r",
                        Request(f'image "{host}/r:1"', "r"))
    path = str(tmp_path / "blob")
    got = []
    try:
        async with RegistrySession() as session:
            fetcher = BlobFetcher(session, FetchOptions(chunk_bytes=1 << 20, connections=3))
            watermark = Watermark(path + ".wm")
            await fetcher.fetch(source, path, watermark, got.append)
            assert b"".join(read_blob(path, len(blob), path + ".wm")) == blob
            assert sum(got) == len(blob)
            if ranges:
                assert server.range_requests == 6
                got.clear()
                await fetcher.fetch(source, path, Watermark(path + ".wm2"), got.append)
                assert got == [] and server.range_requests == 6  # resumed: all there
            else:  # one range request (answered whole), then one stream: not one per lane
                assert server.requests == 2
    finally:
        server.shutdown()


async def test_fetch_reports_unreachable_host(tmp_path):
    source = BlobSource("sha256:" + "0" * 64, 10, (Endpoint("http://127.0.0.1:9/v2"),),
                        "127.0.0.1:9", "r", Request('image "127.0.0.1:9/r:1"', "r"))
    async with RegistrySession() as session:
        with pytest.raises(RegistryError) as info:
            await BlobFetcher(session).fetch(source, str(tmp_path / "b"),
                                             Watermark(str(tmp_path / "w")), lambda n: None)
    assert info.value.reason == "registry_unreachable"
    assert "cannot reach 127.0.0.1:9" in str(info.value)
    await asyncio.sleep(0)


# ----------------------------------------------------------------------------- fetch knobs


def _engine_config(argv: list[str]):
    from nodeagent.credentials.commands import add_credential_arguments
    from nodeagent.inputs import StrictParser
    from nodeagent.prewarm.commands import add_engine_arguments, prewarm_options

    parser = StrictParser(prog="nodeagent prewarm")
    add_engine_arguments(parser)
    add_credential_arguments(parser)
    return prewarm_options(parser.parse_args(argv)).engine


def test_fetch_knobs_take_their_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("NODEAGENT_FETCH_CHUNK_MIB", "4")
    monkeypatch.setenv("NODEAGENT_FETCH_CONNECTIONS_PER_BLOB", " 2 ")
    monkeypatch.setenv("NODEAGENT_FETCH_CONNECTIONS", "32")
    config = _engine_config([])
    assert (config.fetch_chunk_mib, config.fetch_connections_per_blob,
            config.fetch_connections) == (4, 2, 32)
    assert _engine_config(["--fetch-connections", "3"]).fetch_connections == 3  # flag wins
    monkeypatch.delenv("NODEAGENT_FETCH_CONNECTIONS")
    assert _engine_config([]).fetch_connections == 16


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("NODEAGENT_FETCH_CHUNK_MIB", "16MiB", "is not a whole number"),
    ("NODEAGENT_FETCH_CHUNK_MIB", "0", "must be within [1, 1024]"),
    ("NODEAGENT_FETCH_CONNECTIONS_PER_BLOB", "65", "must be within [1, 64]"),
    ("NODEAGENT_FETCH_CONNECTIONS", "nan", "is not a whole number"),
])
def test_a_bad_fetch_variable_is_refused_naming_it(monkeypatch, capsys, variable, value, said):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        _engine_config([])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{variable}={value}" in error and said in error and "Traceback" not in error
