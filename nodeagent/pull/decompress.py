"""Layer decompression, picked by the stream's magic bytes as containerd does (its
``compression.DecompressStream`` ignores the media type): gzip through ISA-L (``isal``,
several times faster than zlib here), zstd through ``zstandard``, anything else is an
uncompressed tar. Concatenated gzip members and zstd frames are read through, like Go's
readers. Output comes in pieces of at most ``MAX_PIECE`` bytes so memory stays bounded
whatever the compression ratio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from isal import isal_zlib

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_PIECE = 1 << 20
_ZSTD_FEED = 512 << 10  # zstd has no max_length: feed it small pieces instead


class DecompressError(ValueError):
    pass


def detect(head: bytes) -> str:
    """"gzip", "zstd" or "none" from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The decompressed stream of ``chunks`` (compression detected from the first one)."""
    source = iter(chunks)
    first = b""
    for first in source:
        if first:
            break
    if not first:
        return
    kind = detect(first)
    if kind == "gzip":
        yield from _gunzip(first, source)
    elif kind == "zstd":
        yield from _unzstd(first, source)
    else:
        yield first
        yield from source


def _gunzip(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    decoder = isal_zlib.decompressobj(31)
    for chunk in _chain(first, rest):
        data = chunk
        while data:
            if decoder.eof:
                decoder = isal_zlib.decompressobj(31)  # the next gzip member
            try:
                piece = decoder.decompress(data, MAX_PIECE)
            except isal_zlib.error as exc:
                raise DecompressError(f"gzip data is corrupt: {exc}") from None
            if piece:
                yield piece
            data = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
    if not decoder.eof:
        raise DecompressError("gzip stream ends early (truncated blob)")


def _unzstd(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    import zstandard  # only images with zstd layers pay for the import

    decoder = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    for chunk in _chain(first, rest):
        for start in range(0, len(chunk), _ZSTD_FEED):
            try:
                piece = decoder.decompress(chunk[start:start + _ZSTD_FEED])
            except zstandard.ZstdError as exc:
                raise DecompressError(f"zstd data is corrupt: {exc}") from None
            if piece:
                yield piece


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
