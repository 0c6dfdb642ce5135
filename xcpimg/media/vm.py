"""The one place release tooling boots media (a thin wrapper over xcpimg.boot)."""

from __future__ import annotations

from pathlib import Path

from ..boot import BOOT_MODES, BootResult, boot, boot_mode

__all__ = ["BOOT_MODES", "BootResult", "boot_in_mode"]


def boot_in_mode(iso: Path, mode: str, logdir: Path | None = None, until: str = "init") -> BootResult:
    """Boot *iso* in a matrix mode (``bios-cd``, ``uefi-usb``...) until *until* (the installer's init)."""
    bm = boot_mode(mode)
    return boot(iso, firmware=bm.firmware, media=bm.media, until=until, logdir=logdir, no_eltorito=bm.no_eltorito)
