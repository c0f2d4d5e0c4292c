"""A streaming tar reader with the semantics of Go's ``archive/tar`` (what containerd's
applier sees), fed with decompressed chunks and writing file data with no extra copy.

Why not ``tarfile``: Python applies PAX global headers to later members and reads data
through several buffer copies; Go returns global headers as entries (containerd ignores
them), gives a GNU long name precedence over a PAX path, treats a typeflag NUL with a
trailing "/" as a directory, ignores empty PAX values, and skips no data for header-only
types whatever their size field says. Those rules decide which files land where, so they
are reproduced here exactly. Sparse files: PAX GNU sparse 0.0, 0.1 and 1.0 are expanded
(holes stay holes); the old GNU 'S' type is returned as is, and containerd fails on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nodeagent.pull.chunks import ChunkSource, TarFormatError

BLOCK = 512
MAX_SPECIAL_FILE = 1 << 20  # Go's limit for PAX headers and GNU long names
ZERO_BLOCK = bytes(BLOCK)

REG, AREG, LINK, SYMLINK = b"0", b"\0", b"1", b"2"
CHAR, BLOCKDEV, DIR, FIFO = b"3", b"4", b"5", b"6"
XHEADER, XGLOBAL, GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"x", b"g", b"L", b"K", b"S"
HEADER_ONLY = frozenset((LINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO))
_NS = 1_000_000_000


@dataclass
class TarEntry:
    name: str  # raw header name (os.fsdecode of the bytes), not cleaned
    typeflag: bytes
    linkname: str = ""
    size: int = 0  # logical size of the file's content
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None  # None: not recorded (Go's zero time)
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)  # PAX records, raw
    sparse: list[tuple[int, int]] | None = None  # (offset, length) data segments


class TarReader:
    """Iterate entries with ``next()``; after each, call ``write_data(fd)`` (regular files)
    or nothing (the remaining data is skipped before the next header)."""

    def __init__(self, source: ChunkSource) -> None:
        self.source = source
        self._remaining = 0  # physical data bytes of the current entry not yet consumed
        self._padding = 0
        self._current: TarEntry | None = None

    def next(self) -> TarEntry | None:
        pax: dict[str, str] = {}
        long_name = long_link = ""
        while True:
            self.source.skip(self._remaining + self._padding)  # rest of the last entry
            self._remaining = self._padding = 0
            block = self._read_header_block()
            if block is None:
                return None
            entry = _parse_header(block)
            self._set_data(entry.size, entry.typeflag)
            if entry.typeflag in (XHEADER, XGLOBAL):
                pax = _parse_pax(self._read_special())
                if entry.typeflag == XGLOBAL:
                    return TarEntry(name=entry.name, typeflag=XGLOBAL, pax=pax)
                continue
            if entry.typeflag in (GNU_LONGNAME, GNU_LONGLINK):
                text = _cstring(self._read_special())
                if entry.typeflag == GNU_LONGNAME:
                    long_name = text
                else:
                    long_link = text
                continue
            _merge_pax(entry, pax)
            if long_name:
                entry.name = long_name
            if long_link:
                entry.linkname = long_link
            if entry.typeflag == AREG:
                entry.typeflag = DIR if entry.name.endswith("/") else REG
            self._set_data(entry.size, entry.typeflag)
            self._read_pax_sparse(entry)
            self._current = entry
            return entry

    def write_data(self, fd: int) -> None:
        """Write the current regular file's content to fd (holes of sparse files are left
        as holes; the file is extended to its full size)."""
        entry = self._current
        if entry is None:
            return
        if entry.sparse is None:
            size = min(entry.size, self._remaining)
            self.source.write_to(fd, size)
            self._remaining -= size
            if size != entry.size:
                raise TarFormatError(f"{entry.name}: file data shorter than its size")
            return
        for offset, length in entry.sparse:
            if length > self._remaining:
                raise TarFormatError(f"{entry.name}: sparse data shorter than its map")
            self.source.write_to(fd, length, offset)
            self._remaining -= length
        os.ftruncate(fd, entry.size)

    # -- internals

    def _read_header_block(self) -> bytes | None:
        block = self.source.read(BLOCK)
        if not block:
            return None  # EOF exactly at a block boundary: Go's io.EOF
        if len(block) != BLOCK:
            raise TarFormatError("unexpected end of the tar stream in a header")
        if block == ZERO_BLOCK:
            second = self.source.read(BLOCK)
            if not second or second == ZERO_BLOCK:
                return None
            raise TarFormatError("invalid tar header: zero block followed by data")
        return block

    def _set_data(self, size: int, typeflag: bytes) -> None:
        physical = 0 if typeflag in HEADER_ONLY else size
        if physical < 0:
            raise TarFormatError("invalid tar header: negative size")
        self._remaining = physical
        self._padding = -physical % BLOCK

    def _read_special(self) -> bytes:
        if self._remaining > MAX_SPECIAL_FILE:
            raise TarFormatError("tar metadata header larger than 1 MiB")
        data = self.source.read_exact(self._remaining)
        self._remaining = 0
        return data

    def _read_pax_sparse(self, entry: TarEntry) -> None:
        records = entry.pax
        major, minor = records.get("GNU.sparse.major", ""), records.get("GNU.sparse.minor", "")
        if major == "0" and minor in ("0", "1"):
            version_1x0 = False
        elif major == "1" and minor == "0":
            version_1x0 = True
        elif major or minor:
            return  # unknown GNU sparse PAX version: a plain file, as for Go
        elif records.get("GNU.sparse.map"):
            version_1x0 = False
        else:
            return
        if records.get("GNU.sparse.name"):
            entry.name = records["GNU.sparse.name"]
        size = records.get("GNU.sparse.size") or records.get("GNU.sparse.realsize")
        if size:
            entry.size = _decimal(size)
        segments = self._sparse_map_1x0() if version_1x0 else _sparse_map_0x1(records)
        if entry.typeflag in HEADER_ONLY or not _valid_sparse(segments, entry.size):
            raise TarFormatError(f"{entry.name}: invalid sparse map")
        entry.sparse = segments

    def _sparse_map_1x0(self) -> list[tuple[int, int]]:
        buffer = b""

        def token() -> int:
            nonlocal buffer
            while b"\n" not in buffer:
                if self._remaining < BLOCK:
                    raise TarFormatError("truncated sparse map")
                buffer += self.source.read_exact(BLOCK)
                self._remaining -= BLOCK
            text, _, buffer = buffer.partition(b"\n")
            return _decimal(text.decode("ascii", "replace"))

        count = token()
        if count < 0:
            raise TarFormatError("invalid sparse map")
        return [(token(), token()) for _ in range(count)]


# ----------------------------------------------------------------------------- headers


def _parse_header(block: bytes) -> TarEntry:
    if not _checksum_ok(block):
        raise TarFormatError("invalid tar header: checksum mismatch")
    magic, version = block[257:263], block[263:265]
    ustar = magic == b"ustar\0" and version == b"00"
    gnu = magic == b"ustar " and version == b" \0"
    entry = TarEntry(
        name=_cstring(block[0:100]), typeflag=block[156:157] or AREG,
        linkname=_cstring(block[157:257]), size=_numeric(block[124:136]),
        mode=_numeric(block[100:108]), uid=_numeric(block[108:116]),
        gid=_numeric(block[116:124]), mtime_ns=_numeric(block[136:148]) * _NS,
    )
    if ustar or gnu:
        entry.devmajor = _numeric(block[329:337])
        entry.devminor = _numeric(block[337:345])
    if ustar:
        star = block[508:512] == b"tar\0"
        prefix = _cstring(block[345:345 + (131 if star else 155)])
        if star:
            entry.atime_ns = _numeric(block[476:488]) * _NS
        if prefix:
            entry.name = f"{prefix}/{entry.name}"
    elif gnu and block[345] != 0:
        try:
            entry.atime_ns = _numeric(block[345:357]) * _NS
        except TarFormatError:  # pre-Go1.8 writers put a prefix here (golang.org/issue/12594)
            prefix = _cstring(block[345:500])
            if prefix.isascii() and prefix:
                entry.name = f"{prefix}/{entry.name}"
    return entry


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 128)
    return stored in (unsigned, signed)


def _cstring(raw: bytes) -> str:
    end = raw.find(b"\0")
    return os.fsdecode(raw if end < 0 else raw[:end])


def _numeric(raw: bytes) -> int:
    if raw and raw[0] & 0x80:  # GNU base-256
        negative = raw[0] & 0x40
        value = 0
        for i, byte in enumerate(raw):
            byte ^= 0xFF if negative else 0
            if i == 0:
                byte &= 0x7F
            value = (value << 8) | byte
        return -value - 1 if negative else value
    return _octal(raw)


def _octal(raw: bytes) -> int:
    text = raw.strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"invalid tar header: bad number {raw!r}") from None


def _decimal(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise TarFormatError(f"invalid tar header: bad number {text!r}") from None


# ----------------------------------------------------------------------------- PAX


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    sparse: list[str] = []
    while data:
        length_text, space, _ = data.partition(b" ")
        if not space or not length_text.isdigit():
            raise TarFormatError("invalid PAX record")
        length = int(length_text)
        record = data[:length]
        if length < len(length_text) + 3 or len(record) != length or not record.endswith(b"\n"):
            raise TarFormatError("invalid PAX record")
        key, equals, value = record[len(length_text) + 1:-1].partition(b"=")
        if not equals or not key:
            raise TarFormatError("invalid PAX record")
        data = data[length:]
        name, text = os.fsdecode(key), os.fsdecode(value)
        if name in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
            expected = "GNU.sparse.offset" if len(sparse) % 2 == 0 else "GNU.sparse.numbytes"
            if name != expected or "," in text:
                raise TarFormatError("invalid GNU sparse 0.0 records")
            sparse.append(text)
        else:
            records[name] = text
    if sparse:
        records["GNU.sparse.map"] = ",".join(sparse)
    return records


def _merge_pax(entry: TarEntry, records: dict[str, str]) -> None:
    for key, value in records.items():
        if value == "":
            continue  # Go keeps the header's own value
        if key == "path":
            entry.name = value
        elif key == "linkpath":
            entry.linkname = value
        elif key == "uid":
            entry.uid = _decimal(value)
        elif key == "gid":
            entry.gid = _decimal(value)
        elif key == "mtime":
            entry.mtime_ns = _pax_time(value)
        elif key == "atime":
            entry.atime_ns = _pax_time(value)
        elif key == "size":
            entry.size = _decimal(value)
            if entry.size < 0:
                raise TarFormatError("invalid PAX size")
    entry.pax = records


def _pax_time(text: str) -> int:
    seconds, _, fraction = text.partition(".")
    negative = seconds.startswith("-")
    whole = _decimal(seconds or "0")
    nanos = _decimal((fraction[:9] or "0").ljust(9, "0")) if fraction else 0
    return whole * _NS - nanos if negative else whole * _NS + nanos


def _sparse_map_0x1(records: dict[str, str]) -> list[tuple[int, int]]:
    numbers = [_decimal(x) for x in records.get("GNU.sparse.map", "").split(",") if x != ""]
    count = _decimal(records.get("GNU.sparse.numblocks", str(len(numbers) // 2)))
    if len(numbers) != 2 * count:
        raise TarFormatError("invalid GNU sparse map")
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _valid_sparse(segments: list[tuple[int, int]], size: int) -> bool:
    end = 0
    for offset, length in segments:
        if offset < 0 or length < 0 or offset < end or offset + length > size:
            return False
        end = offset + length
    return size >= 0
