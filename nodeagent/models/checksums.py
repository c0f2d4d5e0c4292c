"""How an object is verified, and the hashing that does it (pure apart from hashing).

S3 objects carry up to three integrity facts; ``expected_for`` takes the strongest one
this machine can check:

1. An S3 checksum (HEAD with ChecksumMode=ENABLED): CRC32 (zlib), SHA1/SHA256 (hashlib),
   CRC32C/CRC64NVME (awscrt, a dependency). FULL_OBJECT checksums are of the whole
   object: CRCs of parallel ranges are combined (``crc_combine``), SHA needs one ordered
   pass. COMPOSITE checksums (multipart uploads) are the checksum of the parts'
   checksums, so they need the part layout.
2. The ETag when it is a plain MD5 (single-part upload without SSE-KMS): one ordered pass.
3. A multipart ETag "<md5 of the parts' MD5s>-N" when the part layout is known.
Otherwise only the size is checked, and the manifest says so.

Ordered passes (MD5, SHA, FULL_OBJECT SHA) of an object split into several ranges are done
by reading the finished file back; everything else is hashed as the bytes arrive.
Measured here (one core): CRC32 (zlib) 2.9 GiB/s, CRC64NVME 8 GiB/s and CRC32C 4.9 GiB/s
(awscrt), SHA256 1.3 GiB/s, MD5 0.57 GiB/s: which is why checksums come first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
MULTIPART_ETAG = re.compile(r"([0-9a-f]{32})-(\d+)")
# Reflected polynomials and widths of the CRCs S3 uses.
CRC_SPECS = {"CRC32": (0xEDB88320, 32), "CRC32C": (0x82F63B78, 32),
             "CRC64NVME": (0x9A6C9329AC4BC9B5, 64)}


@functools.cache
def _crt() -> Any:
    """awscrt's checksums (CRC32C, CRC64NVME: S3's default for new objects), imported on
    first use (~50 ms, 7 MiB; boto3 loads it anyway when installed). A dependency; an
    install without it falls back to the ETag checks (``computable``)."""
    try:
        from awscrt import checksums
    except ImportError:
        return None
    return checksums



class Hasher(Protocol):
    def update(self, data: bytes | memoryview) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.width = CRC_SPECS[algorithm][1]
        self.value = 0
        self.length = 0
        if algorithm == "CRC32":
            self._fn = zlib.crc32
        else:
            crt = _crt()
            if crt is None:
                raise LookupError(algorithm)
            self._fn = crt.crc32c if algorithm == "CRC32C" else crt.crc64nvme

    def update(self, data: bytes | memoryview) -> None:
        self.value = self._fn(data, self.value)
        self.length += len(data)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width // 8, "big")


def computable(algorithm: str) -> bool:
    if algorithm in ("CRC32", "SHA1", "SHA256", "MD5"):
        return True
    return algorithm in CRC_SPECS and _crt() is not None


def new_hasher(algorithm: str) -> Hasher:
    if algorithm in CRC_SPECS:
        return _Crc(algorithm)
    return hashlib.new(algorithm.lower())


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # CRC32 | CRC32C | CRC64NVME | SHA1 | SHA256
    value: str  # base64, without any "-N" suffix
    type: str  # FULL_OBJECT | COMPOSITE


@dataclass(frozen=True)
class Expected:
    """What the downloaded bytes must hash to."""

    method: str  # full | composite | md5 | multipart-md5 | size
    algorithm: str = ""  # CRC32 ... SHA256, or MD5
    value: str = ""  # base64 checksum, or hex MD5 / multipart ETag
    parts: tuple[int, ...] = ()  # part sizes, for composite and multipart-md5

    @property
    def per_part(self) -> bool:
        return self.method in ("composite", "multipart-md5")

    @property
    def combinable(self) -> bool:
        """Ranges can be hashed apart and combined (CRCs), no ordered pass needed."""
        return self.method == "full" and self.algorithm in CRC_SPECS

    def describe(self) -> str:
        return self.method if self.method == "size" else f"{self.method} {self.algorithm}"


def expected_for(size: int, etag: str, checksum: Checksum | None,
                 parts: Sequence[int] | None) -> Expected:
    """The strongest check available for an object (see the module docstring)."""
    layout = tuple(parts or ())
    if checksum is not None and computable(checksum.algorithm):
        if checksum.type == "FULL_OBJECT":
            return Expected("full", checksum.algorithm, checksum.value)
        if layout and sum(layout) == size:
            return Expected("composite", checksum.algorithm, checksum.value, layout)
    if PLAIN_MD5.fullmatch(etag):
        return Expected("md5", "MD5", etag)
    m = MULTIPART_ETAG.fullmatch(etag)
    if m and layout and len(layout) == int(m.group(2)) and sum(layout) == size:
        return Expected("multipart-md5", "MD5", etag, layout)
    return Expected("size")


def checksum_type(algorithm: str, value: str, declared: str | None, etag: str) -> str:
    """FULL_OBJECT or COMPOSITE. S3 says so in x-amz-checksum-type; without it: a "-N"
    value or a multipart object with a non-CRC64NVME checksum is composite (CRC64NVME is
    always full-object)."""
    if declared in ("FULL_OBJECT", "COMPOSITE"):
        return declared
    if re.search(r"-\d+$", value):
        return "COMPOSITE"
    if algorithm != "CRC64NVME" and MULTIPART_ETAG.fullmatch(etag):
        return "COMPOSITE"
    return "FULL_OBJECT"


def compose(expected: Expected, part_digests: Sequence[bytes]) -> str:
    """The object-level value from per-part digests, in the form S3 gives it."""
    if expected.method == "multipart-md5":
        return hashlib.md5(b"".join(part_digests)).hexdigest() + f"-{len(part_digests)}"
    h = new_hasher(expected.algorithm)
    h.update(b"".join(part_digests))
    return base64.b64encode(h.digest()).decode()


def encode(expected: Expected, digest: bytes) -> str:
    """A whole-object digest in the form S3 gives it (hex for MD5, else base64)."""
    return digest.hex() if expected.algorithm == "MD5" else base64.b64encode(digest).decode()


def matches(expected: Expected, got: str) -> bool:
    want = expected.value.split("-")[0] if expected.method == "composite" else expected.value
    return got == want


# ------------------------------------------------------------------ CRC combination
def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, row) for row in mat]


def crc_combine(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    """CRC of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, any width)."""
    if len2 <= 0:
        return crc1
    poly, width = CRC_SPECS[algorithm]
    odd = [poly] + [1 << i for i in range(width - 1)]  # operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def combine_ranges(algorithm: str, ranges: Sequence[tuple[int, int]]) -> bytes:
    """Whole-object CRC digest from (crc, length) of consecutive ranges."""
    crc = 0
    for value, length in ranges:
        crc = crc_combine(algorithm, crc, value, length)
    return crc.to_bytes(CRC_SPECS[algorithm][1] // 8, "big")
