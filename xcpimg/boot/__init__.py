"""Boot verification: boot an ISO in QEMU and report the boot stages reached on its console.

One VM per boot: firmware ``bios`` (SeaBIOS) or ``uefi`` (OVMF), a medium (CD, USB stick,
USB stick without El Torito, or PXE over QEMU's TFTP server). KVM is used only when a probe
guest really runs under it, otherwise TCG. Modules, one per concern:

- ``firmware``: OVMF discovery;      ``accel``: KVM or TCG;
- ``media``: the media and boot modes, each medium's QEMU arguments;
- ``process``: QEMU processes that die with us;  ``screen``: PNG and VGA text;
- ``machine``: one VM (command line, console, QMP, screendump);
- ``watch``: the watch loop and its per-stage budgets;  ``session``: ``boot()``, ``boot_in_mode()``;
- ``cli``: ``xcpimg boot``.
"""

from __future__ import annotations

from .media import BOOT_MODES, DISK_BOOT_MODES, PXE_BOOT_MODES, BootMode, boot_mode
from .session import boot, boot_in_mode
from .watch import BootFailure, BootResult

__all__ = ["BOOT_MODES", "DISK_BOOT_MODES", "PXE_BOOT_MODES", "BootFailure", "BootMode", "BootResult",
           "boot", "boot_in_mode", "boot_mode"]
