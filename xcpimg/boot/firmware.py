"""Firmware discovery: a plain x86_64 OVMF (no Secure Boot, no SMM) for UEFI boots.

SeaBIOS needs nothing: it is QEMU's built-in BIOS. OVMF is found through QEMU's firmware
descriptors first, then a list of known distribution paths.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BootError

FIRMWARES = ("bios", "uefi")
#: OVMF files when no firmware descriptor names them: (code, vars template).
OVMF_KNOWN_PATHS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
)
FIRMWARE_DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
_UNWANTED_FEATURES = {"secure-boot", "requires-smm", "enrolled-keys", "amd-sev-es", "intel-tdx"}


def _descriptor_ok(desc: dict[str, Any]) -> bool:
    """A firmware descriptor for plain OVMF on x86_64 i440fx: flash with a VARS template,
    no Secure Boot, no SMM requirement."""
    mapping = desc.get("mapping") or {}
    features = set(desc.get("features") or [])
    x86 = any(t.get("architecture") == "x86_64"
              and any(fnmatch.fnmatch("pc-i440fx-7.2", m) for m in t.get("machines", []))
              for t in desc.get("targets") or [])
    return ("uefi" in (desc.get("interface-types") or []) and mapping.get("device") == "flash"
            and "nvram-template" in mapping and x86 and not (features & _UNWANTED_FEATURES))


def find_ovmf(descriptor_dirs: Sequence[str | Path] = FIRMWARE_DESCRIPTOR_DIRS,
              known: Sequence[tuple[str, str]] = OVMF_KNOWN_PATHS) -> tuple[Path, Path]:
    """(code, vars template) of a plain (no Secure Boot, no SMM) x86_64 OVMF.

    Firmware descriptors (``*.json``, earlier directories override later ones by file
    name, lowest name first) win over the list of known paths.
    """
    chosen: dict[str, Path] = {}
    for directory in reversed([Path(d) for d in descriptor_dirs]):
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            chosen[path.name] = path
    for name in sorted(chosen):
        try:
            desc = json.loads(chosen[name].read_text())
        except (OSError, ValueError):
            continue
        if isinstance(desc, dict) and _descriptor_ok(desc):
            code = Path(desc["mapping"]["executable"]["filename"])
            vars_ = Path(desc["mapping"]["nvram-template"]["filename"])
            if code.is_file() and vars_.is_file():
                return code, vars_
    for code_s, vars_s in known:
        if Path(code_s).is_file() and Path(vars_s).is_file():
            return Path(code_s), Path(vars_s)
    raise BootError("OVMF (UEFI firmware for QEMU) not found: install the Debian package 'ovmf'")
