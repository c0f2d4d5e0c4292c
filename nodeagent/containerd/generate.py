"""Regenerate the committed gRPC stubs in nodeagent/containerd/api from protos/.

Run ``python -m nodeagent.containerd.generate`` after editing a .proto file. protoc
emits absolute imports rooted at the proto include root (``from containerd.types
import descriptor_pb2``); they are rewritten to ``nodeagent.containerd.api.…`` so the
stubs import as a normal installed package. Output is deterministic for a given
grpcio-tools version (sorted inputs, no timestamps), which lets a test compare the
committed stubs with a fresh generation.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR / "protos"
API_DIR = PACKAGE_DIR / "api"
API_PACKAGE = "nodeagent.containerd.api"
COMMAND = "python -m nodeagent.containerd.generate"
GENERATED_SUFFIXES = (".py", ".pyi")

# Top-level proto packages whose generated imports must be prefixed with API_PACKAGE.
_LOCAL_ROOTS = ("containerd", "runtime")
_ROOTS = "|".join(_LOCAL_ROOTS)
_IMPORT_RE = re.compile(rf"^(from|import) ({_ROOTS})([. ])", re.MULTILINE)
_STUB_RE = re.compile(r"^class \w+Stub\b", re.MULTILINE)
# The module name protobuf gives the generated message classes (their __module__).
_MODULE_NAME_RE = re.compile(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({_ROOTS})\.)")

_INIT_DOC = f'"""Generated gRPC stubs. Do not edit: change ../protos and run `{COMMAND}`."""\n'


class GenerateError(RuntimeError):
    pass


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def _rewrite_imports(text: str) -> str:
    text = _IMPORT_RE.sub(lambda m: f"{m.group(1)} {API_PACKAGE}.{m.group(2)}{m.group(3)}", text)
    return _MODULE_NAME_RE.sub(lambda m: f"{m.group(1)}{API_PACKAGE}.{m.group(2)}", text)


def _run_protoc(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency, imported on use

    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    # Input names are relative to PROTO_ROOT, so protoc records them (and the descriptor
    # pool registers them) as "containerd/types/descriptor.proto", as upstream does.
    if protoc.main(args) != 0:
        raise GenerateError(f"protoc failed on {PROTO_ROOT} (see messages above)")


def _finish_tree(out_dir: Path) -> None:
    """Rewrite imports, drop service-less *_grpc.py, add __init__.py to every directory."""
    for path in sorted(out_dir.rglob("*")):
        if path.suffix not in GENERATED_SUFFIXES or not path.is_file():
            continue
        text = path.read_text()
        if path.name.endswith("_pb2_grpc.py") and not _STUB_RE.search(text):
            path.unlink()  # a proto with messages only (e.g. types) has no service code
            continue
        path.write_text(_rewrite_imports(text))
    for directory in [out_dir, *sorted(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text(_INIT_DOC if directory == out_dir else "")


def generate(out_dir: Path) -> list[Path]:
    """Generate the stub tree into out_dir (created if needed); returns relative paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_protoc(out_dir)
    _finish_tree(out_dir)
    return generated_files(out_dir)


def generated_files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.suffix in GENERATED_SUFFIXES and "__pycache__" not in p.parts
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nodeagent-protos-") as tmp:
        fresh = Path(tmp) / "api"
        generate(fresh)
        # Replace the whole generated tree so stubs of deleted protos do not linger.
        if API_DIR.exists():
            shutil.rmtree(API_DIR)
        shutil.copytree(fresh, API_DIR)
    for rel in generated_files(API_DIR):
        print(f"wrote {API_DIR.relative_to(PACKAGE_DIR.parent.parent) / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
