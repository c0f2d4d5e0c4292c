"""Platforms ("os/arch[/variant]") normalized the way containerd's platforms package does."""

from __future__ import annotations

import platform as host_platform

_KNOWN_OS = ("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris",
             "illumos", "aix", "plan9", "dragonfly", "android", "ios", "js", "wasip1")
_KNOWN_ARCH = ("amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64",
               "mips", "mipsle", "mips64", "mips64le", "loong64", "wasm")
# (arch alias) -> (arch, default variant), as containerd's platforms.Normalize does.
_ARCH_ALIASES = {"x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "aarch64": ("arm64", ""),
                 "i386": ("386", ""), "armhf": ("arm", "v7"), "armel": ("arm", "v6")}


def normalize_platform(text: str) -> tuple[str | None, str | None]:
    """("os/arch[/variant]" normalized like containerd, problem) -- exactly one is None."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        return None, 'must be "os/arch" or "os/arch/variant", e.g. "linux/amd64"'
    os_name, arch = parts[0].lower(), parts[1].lower()
    variant = parts[2].lower() if len(parts) == 3 else ""
    if os_name not in _KNOWN_OS:
        return None, f'unknown operating system "{parts[0]}" (e.g. linux, windows)'
    arch, default_variant = _ARCH_ALIASES.get(arch, (arch, ""))
    if arch not in _KNOWN_ARCH:
        return None, f'unknown architecture "{parts[1]}" (e.g. {", ".join(_KNOWN_ARCH[:4])})'
    variant = variant or default_variant
    if variant and not (variant[0] == "v" and variant[1:].isdigit()) and not variant.isdigit():
        return None, f'unknown variant "{parts[2]}" (e.g. v7, v8)'
    if variant.isdigit():
        variant = f"v{variant}"
    if arch == "arm64" and variant == "v8":
        variant = ""  # containerd treats linux/arm64/v8 as linux/arm64
    elif arch == "arm" and not variant:
        variant = "v7"
    return "/".join(p for p in (os_name, arch, variant) if p), None

_HOST_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_default_platform() -> str:
    """linux/<arch> of this machine, as containerd picks by default."""
    arch = _HOST_ARCH.get(host_platform.machine().lower(), host_platform.machine().lower())
    return f"linux/{arch}"
