"""Boot media: what the VM boots from, and the boot modes built from them.

Each medium is prepared from the user's input (an ISO, or for PXE an ISO or a PXE tree)
and then contributes its QEMU arguments:

- ``cd``: the ISO on an IDE CD-ROM;
- ``usb``: the ISO as a USB stick (xhci + usb-storage);
- ``usb-noeltorito``: a copy of the ISO with its El Torito record disabled, as a USB stick,
  so UEFI firmware must boot the hybrid image's EFI partition;
- ``pxe``: QEMU's user-mode network with its TFTP server serving a PXE tree
  (``xcpimg.pxe``), and a virtio NIC whose iPXE option ROM network-boots under SeaBIOS
  and OVMF alike.

A boot mode (``uefi-usb``...) names a firmware and a medium.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import BootError, UsageError, XcpimgError
from .firmware import FIRMWARES

#: the media a boot mode can name (``usb`` without El Torito is a variant of ``usb``)
MEDIA = ("cd", "usb", "pxe")
#: the ways the matrix and the demo boot an ISO
DISK_BOOT_MODES = ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb")
PXE_BOOT_MODES = ("bios-pxe", "uefi-pxe")
BOOT_MODES = DISK_BOOT_MODES + PXE_BOOT_MODES
#: the NIC of PXE boots: its iPXE ROM (Debian's ipxe-qemu, efi-virtio.rom) boots under both firmwares
PXE_NIC = "virtio-net-pci"
#: files a disk medium's bootloader loads before Xen runs (their size sets the stage budgets)
PAYLOAD_FILES = ("/boot/xen.gz", "/boot/vmlinuz", "/install.img")


@dataclass(frozen=True)
class BootMode:
    """A boot mode: firmware and medium (uefi-usb boots a copy without El Torito)."""

    firmware: str
    media: str
    no_eltorito: bool = False

    @property
    def name(self) -> str:
        return f"{self.firmware}-{self.media}"

    @property
    def medium(self) -> str:
        """The medium kind (a key of MEDIUM_KINDS)."""
        return medium_kind(self.media, self.no_eltorito)


def boot_mode(mode: str) -> BootMode:
    """The BootMode of a name such as ``uefi-usb``.

    OVMF boots a USB stick through the El Torito EFI entry when there is one, which is the
    path uefi-cd already proves; uefi-usb disables it, so that it boots through the hybrid
    image's EFI partition, as firmware that ignores El Torito on disks does.
    """
    if mode not in BOOT_MODES:
        raise UsageError(f"unknown boot mode {mode!r} (known: {', '.join(BOOT_MODES)})")
    firmware, media = mode.split("-")
    return BootMode(firmware, media, mode == "uefi-usb")


def medium_kind(media: str, no_eltorito: bool = False) -> str:
    """The medium kind for ``--media`` *media* and ``--no-eltorito``."""
    if media not in MEDIA:
        raise UsageError(f"media must be one of {', '.join(MEDIA)}, got {media!r}")
    if no_eltorito:
        if media != "usb":
            raise UsageError("--no-eltorito applies to --media usb only")
        return "usb-noeltorito"
    return media


def qemu_value(value: object) -> str:
    """*value* as part of a QEMU option (QEMU reads ``,,`` as a literal comma)."""
    return str(value).replace(",", ",,")


def disable_eltorito(iso: Path, copy: Path) -> Path:
    """Copy *iso* to *copy* with its El Torito boot record disabled (returns *copy*).

    The Boot Record Volume Descriptor (type 0, system id ``EL TORITO SPECIFICATION``)
    gets its boot system identifier blanked: firmware then ignores the boot catalog and a
    hybrid image can only boot through its MBR/GPT partitions.
    """
    shutil.copyfile(iso, copy)
    with open(copy, "r+b") as f:
        for sector in range(16, 64):
            f.seek(sector * 2048)
            desc = f.read(2048)
            if len(desc) < 2048 or desc[1:6] != b"CD001":
                break
            if desc[0] == 255:
                break
            if desc[0] == 0 and desc[7:30] == b"EL TORITO SPECIFICATION":
                f.seek(sector * 2048 + 7)
                f.write(b"\0" * 32)
                return copy
    raise BootError(f"{iso}: no El Torito boot record to disable")


def iso_payload_bytes(iso: Path) -> int:
    """Total size of PAYLOAD_FILES on *iso*; 0 when it cannot be read as an ISO."""
    from ..media.reader import IsoReader
    try:
        with IsoReader(iso) as reader:
            files = reader.files()
            return sum(files[p.lstrip("/")].size for p in PAYLOAD_FILES if p.lstrip("/") in files)
    except XcpimgError:
        return 0


class Medium:
    """A prepared boot medium: its QEMU arguments and the bytes its bootloader loads."""

    kind: ClassVar[str]
    payload_bytes: int

    def qemu_args(self) -> list[str]:
        raise NotImplementedError

    @classmethod
    def prepare(cls, source: Path, firmware: str, work: Path) -> Medium:
        """Make the medium from *source* (files it needs go to the private dir *work*)."""
        raise NotImplementedError


def _need_iso(source: Path) -> Path:
    if not source.is_file():
        raise BootError(f"ISO not found: {source}")
    return source


@dataclass(frozen=True)
class Cd(Medium):
    """The ISO on an IDE CD-ROM, first in the boot order."""

    image: Path
    payload_bytes: int = 0
    kind: ClassVar[str] = "cd"

    @classmethod
    def prepare(cls, source: Path, firmware: str, work: Path) -> Cd:
        return cls(_need_iso(source), iso_payload_bytes(source))

    def qemu_args(self) -> list[str]:
        return ["-drive", f"if=none,id=cd,media=cdrom,format=raw,readonly=on,file={qemu_value(self.image)}",
                "-device", "ide-cd,bus=ide.1,drive=cd,bootindex=0"]


@dataclass(frozen=True)
class Usb(Medium):
    """The ISO as a removable USB stick on an xhci controller, first in the boot order."""

    image: Path
    payload_bytes: int = 0
    kind: ClassVar[str] = "usb"

    @classmethod
    def prepare(cls, source: Path, firmware: str, work: Path) -> Usb:
        return cls(_need_iso(source), iso_payload_bytes(source))

    def qemu_args(self) -> list[str]:
        return ["-drive", f"if=none,id=stick,format=raw,readonly=on,file={qemu_value(self.image)}",
                "-device", "qemu-xhci,id=xhci",
                "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]


@dataclass(frozen=True)
class UsbNoEltorito(Usb):
    """A copy of the ISO with El Torito disabled, as a USB stick (the hybrid partition path)."""

    kind: ClassVar[str] = "usb-noeltorito"

    @classmethod
    def prepare(cls, source: Path, firmware: str, work: Path) -> UsbNoEltorito:
        copy = disable_eltorito(_need_iso(source), work / source.name)
        return cls(copy, iso_payload_bytes(source))


@dataclass(frozen=True)
class Pxe(Medium):
    """A PXE tree served by QEMU's TFTP server; the NIC network-boots *bootfile* from it."""

    tree: Path
    bootfile: str
    payload_bytes: int = 0
    kind: ClassVar[str] = "pxe"

    @classmethod
    def prepare(cls, source: Path, firmware: str, work: Path) -> Pxe:
        """*source* is a PXE tree (``xcpimg pxe-tree``), or an ISO made into one inside *work*."""
        from .. import pxe
        if source.is_dir():
            tree = source.resolve()
        elif source.is_file():
            tree = pxe.build_tree(pxe.PxeOptions(iso=source), work / "pxe-tree")
        else:
            raise BootError(f"ISO or PXE tree not found: {source}")
        bootfile = pxe.BOOTFILES[firmware]
        if not (tree / bootfile).is_file():
            raise BootError(f"PXE tree {tree} has no {bootfile} (the {firmware} network boot program)")
        payload = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
        return cls(tree, bootfile, payload)

    def qemu_args(self) -> list[str]:
        return ["-netdev", f"user,id=n0,tftp={qemu_value(self.tree)},bootfile={qemu_value(self.bootfile)}",
                "-device", f"{PXE_NIC},netdev=n0,bootindex=0"]


MEDIUM_KINDS: dict[str, type[Medium]] = {m.kind: m for m in (Cd, Usb, UsbNoEltorito, Pxe)}


def prepare_medium(kind: str, source: Path, firmware: str, work: Path) -> Medium:
    """The medium of *kind* made from *source* for *firmware* (scratch files in *work*)."""
    if firmware not in FIRMWARES:
        raise UsageError(f"firmware must be one of {', '.join(FIRMWARES)}, got {firmware!r}")
    if kind not in MEDIUM_KINDS:
        raise UsageError(f"unknown medium {kind!r} (known: {', '.join(MEDIUM_KINDS)})")
    return MEDIUM_KINDS[kind].prepare(Path(source), firmware, work)
