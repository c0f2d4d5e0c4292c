"""Turn an unpacked layer into a committed snapshot, as containerd's unpacker does:
``Prepare("extract-<unique> <chain ID>", parent)``, the layer's files into the prepared
directory, ``Commit(<chain ID>)``; all under the pull's lease.

The layer was unpacked in a staging directory on the snapshotter's filesystem, so
"the files into the prepared directory" is one ``rename`` over the empty ``fs``
directory the snapshotter created (after copying that directory's owner and mode, which
containerd derives from the parent). Parent directories the layer did not list get the
attributes of the first parent layer that has them (containerd's ``mkparent``), now that
the parent layers are known. Someone else (kubelet pulling the same image) committing the
same chain ID first is fine: their snapshot is the same layer, ours is dropped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid

from nodeagent.containerd.model import ContainerdError
from nodeagent.containerd.store import ContainerdStore, Mount
from nodeagent.pull.apply import ImplicitDir
from nodeagent.pull.plan import SNAPSHOT_REF_LABEL, LayerPlan, extract_key
from nodeagent.pull.preconditions import FastPathSetup
from nodeagent.pull.rootpath import root_path


class CommitError(Exception):
    pass


async def commit_layer(store: ContainerdStore, setup: FastPathSetup, layer: LayerPlan,
                       staged: str, implicit_dirs: list[ImplicitDir], lease: str) -> bool:
    """Commit ``staged`` as snapshot ``layer.chain_id``; False when it existed already
    (the staged tree is then removed)."""
    snapshotter, chain = setup.snapshotter, layer.chain_id
    labels = {SNAPSHOT_REF_LABEL: chain}
    if await store.snapshot(snapshotter, chain) is not None:
        shutil.rmtree(staged, ignore_errors=True)
        return False
    key = extract_key(uuid.uuid4().hex[:16], chain)
    mounts = await store.prepare(snapshotter, key, layer.parent, labels, lease)
    if mounts is None:  # committed by someone else since the check above
        shutil.rmtree(staged, ignore_errors=True)
        return False
    try:
        upper, lowers = _layer_dirs(mounts, key)
        target = setup.view(upper)
        copy_parent_attributes(staged, implicit_dirs, [setup.view(d) for d in lowers])
        _take_root_attributes(target, staged)
        os.rename(staged, target)  # replaces the empty directory the snapshotter made
        committed = await store.commit(snapshotter, chain, key, labels, lease)
    except BaseException:
        with contextlib.suppress(Exception):
            await store.remove_snapshot(snapshotter, key)
        raise
    if not committed:
        await store.remove_snapshot(snapshotter, key)
    return committed


def _layer_dirs(mounts: list[Mount], key: str) -> tuple[str, list[str]]:
    """(the directory the layer's files go to, the parent layers' directories top first)
    from the mounts of a prepared overlayfs snapshot."""
    if len(mounts) == 1 and mounts[0].type == "bind":
        return mounts[0].source, []
    if len(mounts) == 1 and mounts[0].type == "overlay":
        options = dict(o.split("=", 1) for o in mounts[0].options if "=" in o)
        if "upperdir" in options:
            lowers = options.get("lowerdir", "")
            return options["upperdir"], [d for d in lowers.split(":") if d]
    raise CommitError(f"snapshot {key}: unexpected mounts from the snapshotter: "
                      f"{[(m.type, m.source) for m in mounts]}")


def _take_root_attributes(prepared: str, staged: str) -> None:
    """The layer root keeps what the snapshotter gave its directory (containerd applies
    no tar entry to the root)."""
    info = os.lstat(prepared)
    if not stat.S_ISDIR(info.st_mode) or os.listdir(prepared):
        raise CommitError(f"{prepared} is not an empty directory")
    os.chown(staged, info.st_uid, info.st_gid)
    os.chmod(staged, stat.S_IMODE(info.st_mode))


def copy_parent_attributes(root: str, implicit_dirs: list[ImplicitDir],
                           parents: list[str]) -> None:
    """containerd's mkparent, deferred: owner, mode and xattrs of each implicitly created
    directory from the first parent layer that has the path (a non-directory there stops
    the search); directories a later entry set explicitly only gain missing xattrs."""
    for implicit in implicit_dirs:
        path = root + implicit.path
        if not os.path.isdir(path) or os.path.islink(path):
            continue  # removed or replaced later in the layer
        for parent in parents:
            source = root_path(parent, implicit.path)
            try:
                info = os.lstat(source)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                break
            if not implicit.explicit_later:
                os.lchown(path, info.st_uid, info.st_gid)
                os.chmod(path, stat.S_IMODE(info.st_mode))
            _copy_xattrs(source, path)
            break


def _copy_xattrs(source: str, target: str) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith("trusted."):
            continue  # containerd never copies trusted.* (overlayfs' own markers)
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, os.XATTR_CREATE, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ContainerdError(f"cannot copy xattr {name} onto {target}: {exc}") from None
