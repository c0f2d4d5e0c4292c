"""Build the disks-only single-file zipapp: `python -m nodeagent.disks.zipapp OUT.pyz`.

The archive holds the CLI skeleton (nodeagent/__init__, cli, errors, inputs, log,
redaction), nodeagent/disks and the host facts it reads (nodeagent/hostfacts): standard
library only. It runs with
any python3 >= 3.11 on the host, `./nodeagent.pyz disks setup`, which is how the boot
service runs on nodes that do not have nodeagent's Python dependencies.

pyudev is not vendored: it needs libudev through ctypes anyway, and discovery reads the
same sysfs attributes directly when pyudev is missing (see hostfacts/sysfs.py), so the
zipapp has one dependency fewer to break at boot.
"""

from __future__ import annotations

import argparse
import py_compile
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

import nodeagent

CORE = ("__init__.py", "cli.py", "errors.py", "inputs.py", "log.py", "redaction.py")
PACKAGES = ("disks", "hostfacts")
MAIN = '''"""nodeagent (disks-only build)."""
import sys

from nodeagent.cli import main

sys.exit(main(modules=("nodeagent.disks.commands",)))
'''


def build(out: Path, interpreter: str = "/usr/bin/env python3") -> Path:
    package = Path(nodeagent.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in PACKAGES:
            (root / "nodeagent" / sub).mkdir(parents=True)
            for src in sorted((package / sub).glob("*.py")):
                shutil.copy2(src, root / "nodeagent" / sub / src.name)
        for name in CORE:
            shutil.copy2(package / name, root / "nodeagent" / name)
        (root / "__main__.py").write_text(MAIN)
        _precompile(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, out, interpreter=interpreter, compressed=True)
    return out


def _precompile(root: Path) -> None:
    """Bytecode next to each module (zipimport's layout), so a start does not compile
    ~4000 lines first: that is most of the start-up time on a small or emulated CPU.
    Unchecked hash-based .pyc: valid whatever the zip entry times; another Python version
    ignores them (magic number) and compiles the sources as usual."""
    for src in root.rglob("*.py"):
        if src.name == "__main__.py":
            continue  # run as a script, never imported from a .pyc
        py_compile.compile(str(src), cfile=str(src.with_suffix(".pyc")),
                           dfile=str(src.relative_to(root)), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodeagent.disks.zipapp", allow_abbrev=False,
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="archive to write, e.g. nodeagent.pyz")
    parser.add_argument("--python", default="/usr/bin/env python3",
                        help="interpreter line (default: /usr/bin/env python3)")
    args = parser.parse_args(argv)
    path = build(args.out, args.python)
    print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
