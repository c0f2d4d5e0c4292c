"""The layers of the fast-pull equivalence tests: each one exercises tar features and
containerd applier rules (see nodeagent/sandbox/featured.py for the builders)."""

from __future__ import annotations

import tarfile

from nodeagent.sandbox.featured import Entry, LayerBlob, layer_blob, sparse_tar, tar_bytes

T = 1_600_000_000
RAW_NAME = b"raw-\xff\xfe-name".decode("utf-8", "surrogateescape")
LONG_DIR = "deep/" + "d" * 90
LONG_FILE = LONG_DIR + "/" + "f" * 120


def base_entries() -> list[Entry]:
    """Layer 1 (no parent: containerd's naive whiteouts, no copy-up)."""
    return [
        Entry("etc/", "dir", mode=0o755, mtime=T + 1),
        Entry("etc/hostname", data=b"node\n", mtime=T + 0.25),
        Entry("etc/empty", data=b""),
        Entry("etc/epoch", data=b"old", mtime=0),
        Entry("etc/xattrs", data=b"x", xattrs={"user.alpha": "1", "user.beta": "two words",
                                               "trusted.ignored": "never set"}),
        Entry("etc/dup", data=b"first"),
        Entry("etc/dup", data=b"second replaces first", mode=0o600),
        Entry("usr/", "dir"), Entry("usr/lib/", "dir", mode=0o755, uid=2, gid=3,
                                    xattrs={"user.libdir": "yes"}),
        Entry("usr/bin/", "dir"),
        Entry("usr/lib/libx.so.1", data=b"\x7fELF" + bytes(range(256)) * 40),
        Entry("usr/lib/libx.so", "symlink", link="libx.so.1"),
        Entry("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755, uid=0),
        Entry("usr/bin/grp", data=b"g", mode=0o2711, gid=5),
        Entry("usr/bin/tool-hard", "hardlink", link="usr/bin/tool", mode=0o755, uid=7, gid=8,
              mtime=T + 99),
        Entry("lib", "symlink", link="usr/lib"),
        Entry("abs-link", "symlink", link="/etc/hostname"),
        Entry("dangling", "symlink", link="nowhere/at/all"),
        Entry("long-target", "symlink", link="t" * 180),
        Entry("tmp/", "dir", mode=0o1777),
        Entry("tmp/gone", data=b"removed by the whiteout below"),
        Entry("tmp/.wh.gone"),
        Entry("private/", "dir", mode=0o700, uid=1000, gid=1000, xattrs={"user.dir": "1"}),
        Entry("private/secret", data=b"s", mode=0o600, uid=1000, gid=1000),
        Entry("shared/", "dir", mode=0o2775, gid=50),
        Entry("shared/old.txt", data=b"hidden by the opaque dir above"),
        Entry("dev/", "dir"),
        Entry("dev/null-ish", "char", mode=0o666, device=(1, 3)),
        Entry("dev/loop-ish", "block", mode=0o660, device=(7, 0)),
        Entry("dev/pipe", "fifo", mode=0o644),
        Entry(LONG_FILE, data=b"long path"),
        Entry("données/été.txt", data=b"unicode"),
        Entry(RAW_NAME, data=b"not utf-8"),
        Entry("implicit/a/b/file.txt", data=b"parents not listed"),
        Entry("./dotslash/file", data=b"dot slash"),
        Entry("/absolute/file", data=b"leading slash"),
        Entry("late/f1", data=b"dir entry comes after"),
        Entry("late/", "dir", mode=0o750, mtime=T + 5),
        Entry("opq-base/keep", data=b"listed before the marker"),
        Entry("opq-base/sub/inner", data=b"implicit sub dir"),
        Entry("opq-base/.wh..wh..opq"),
        Entry("big.bin", data=bytes(range(256)) * 4096),
        Entry("./", "dir", mode=0o700),  # the root entry: ignored
    ]


def upper_entries() -> list[Entry]:
    """Layer 2 (has a parent: overlayfs whiteouts, attributes copied from below)."""
    return [
        Entry("etc/.wh.hostname"),
        Entry("usr/.wh.bin"),
        Entry("shared/.wh..wh..opq"),
        Entry("shared/new.txt", data=b"only file visible in shared/"),
        Entry("private/added.txt", data=b"parent copied from layer 1"),
        Entry("lib/newlib.so", data=b"resolved in the upper layer only"),
        Entry("etc/h1", data=b"hard"),
        Entry("etc/h2", "hardlink", link="etc/h1"),
        Entry("x", data=b"file first"),
        Entry("x/", "dir", mode=0o711),
        Entry("y/", "dir"),
        Entry("y", data=b"then a file"),
        Entry("adir/", "dir", mode=0o755, mtime=T + 7),
        Entry("alink", "symlink", link="adir"),
        Entry("alink/through", data=b"written into adir through the symlink"),
        Entry("usr/lib/libx.so.2", data=b"new version", uid=3),
    ]


def gnu_entries() -> list[Entry]:
    """Layer 3, GNU format: long names and link targets as 'L'/'K' records."""
    return [
        Entry("gnu/" + "n" * 150, data=b"gnu long name"),
        Entry("gnu/link", "symlink", link="k" * 150),
        Entry("gnu/dir/", "dir", mode=0o700),
    ]


def global_header_layer() -> LayerBlob:
    """A PAX global header first: Go (containerd) ignores it, Python's tarfile would not."""
    raw = tar_bytes([Entry("after-global", data=b"g")],
                    global_headers={"comment": "global", "uid": "4242"})
    return layer_blob(raw, "gzip")


def feature_layers() -> list[LayerBlob]:
    """The amd64 image of the equivalence test, bottom first."""
    return [
        layer_blob(base_entries(), "gzip"),
        layer_blob(upper_entries(), "zstd"),
        layer_blob(gnu_entries(), "none", fmt=tarfile.GNU_FORMAT),
        layer_blob(sparse_tar("posix"), "gzip"),
        layer_blob(tar_bytes([]), "gzip"),  # an empty layer
        global_header_layer(),
    ]
