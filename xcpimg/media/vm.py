"""The one place release tooling boots media (a thin wrapper over xcpimg.qemu)."""

from __future__ import annotations

from pathlib import Path

from ..qemu import BOOT_MODES, BootResult, boot, boot_mode

__all__ = ["BOOT_MODES", "BootResult", "boot_in_mode"]


def boot_in_mode(iso: Path, mode: str, logdir: Path | None = None, until: str = "init") -> BootResult:
    """Boot *iso* in a matrix mode (``bios-cd``, ``uefi-usb``...) until *until* (the installer's init)."""
    firmware, media, no_eltorito = boot_mode(mode)
    return boot(iso, firmware=firmware, media=media, until=until, logdir=logdir, no_eltorito=no_eltorito)
