"""The boot layout of an ISO image, read from its bytes: El Torito catalog, MBR, GPT.

Lenient where xcpimg.iso.hybrid (the writer's own check) is strict: any ISO is
described, hybrid or not, with whatever boot entries it has.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BuildError, UsageError
from ..iso.hybrid import ISO_BLOCK, SECTOR, volume_descriptors

PLATFORMS = {0: "bios", 1: "ppc", 2: "mac", 0xEF: "efi"}
MEDIA = {0: "no-emulation", 1: "1.2M floppy", 2: "1.44M floppy", 3: "2.88M floppy", 4: "hard disk"}
GPT_TYPES = {"ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "basic data",
             "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI system"}


@dataclass
class BootEntry:
    """One El Torito boot entry."""

    platform: str
    bootable: bool
    media: str
    lba: int
    sectors: int  # 512-byte sectors loaded (El Torito "sector count")
    image: str | None = None  # the file at that extent, when it is one


@dataclass
class Partition:
    """One MBR or GPT partition (sectors of 512 bytes)."""

    index: int
    type: str
    start: int
    sectors: int
    active: bool = False
    name: str = ""


@dataclass
class Layout:
    """El Torito catalog and the hybrid system area."""

    volume_blocks: int
    catalog_lba: int | None = None
    catalog: str | None = None
    entries: list[BootEntry] = field(default_factory=list)
    mbr_boot_code: bool = False
    mbr: list[Partition] = field(default_factory=list)
    gpt: list[Partition] | None = None

    @property
    def bios(self) -> BootEntry | None:
        return next((e for e in self.entries if e.platform == "bios"), None)

    @property
    def efi(self) -> BootEntry | None:
        return next((e for e in self.entries if e.platform == "efi"), None)

    @property
    def hybrid(self) -> bool:
        return bool(self.mbr)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _block(f: Any, lba: int, size: int = ISO_BLOCK) -> bytes:
    f.seek(lba * ISO_BLOCK)
    return f.read(size)


def read_layout(path: Path) -> Layout:
    """The El Torito entries and the MBR/GPT of the ISO image at *path*."""
    with open(path, "rb") as f:
        volume_blocks, catalog_lba, _ = volume_descriptors(lambda lba: _block(f, lba))
        if volume_blocks is None:
            raise UsageError(f"{path} is not an ISO image (no primary volume descriptor)")
        layout = Layout(volume_blocks, catalog_lba)
        if catalog_lba is not None:
            layout.entries = _catalog(_block(f, catalog_lba))
        f.seek(0)
        system = f.read(SECTOR * 34)
    if len(system) >= SECTOR and system[510:512] == b"\x55\xaa":
        layout.mbr_boot_code = bool(system[:432].strip(b"\0"))
        for i in range(4):
            status, ptype, start, count = struct.unpack_from("<B3xB3xII", system, 446 + 16 * i)
            if ptype or count:
                layout.mbr.append(Partition(i + 1, f"0x{ptype:02x}", start, count, status == 0x80))
    if system[SECTOR:SECTOR + 8] == b"EFI PART":
        layout.gpt = _gpt(system)
    return layout


def _catalog(cat: bytes) -> list[BootEntry]:
    if len(cat) < 64 or cat[0] != 1 or cat[30:32] != b"\x55\xaa":
        raise BuildError("the El Torito boot catalog is invalid")
    entries = [_entry(cat, 32, PLATFORMS.get(cat[1], f"0x{cat[1]:02x}"))]
    pos = 64
    while pos + 32 <= len(cat) and cat[pos] in (0x90, 0x91):
        platform = PLATFORMS.get(cat[pos + 1], f"0x{cat[pos + 1]:02x}")
        count = struct.unpack_from("<H", cat, pos + 2)[0]
        for i in range(count):
            if pos + 32 * (i + 2) <= len(cat):
                entries.append(_entry(cat, pos + 32 * (i + 1), platform))
        if cat[pos] == 0x91:
            break
        pos += 32 * (count + 1)
    return entries


def _entry(cat: bytes, pos: int, platform: str) -> BootEntry:
    boot, media, _seg, _sys, count, lba = struct.unpack_from("<BBHBxHI", cat, pos)
    return BootEntry(platform, boot == 0x88, MEDIA.get(media & 0x0F, f"0x{media:02x}"), lba, count)


def _gpt(system: bytes) -> list[Partition]:
    header = system[SECTOR:2 * SECTOR]
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    out = []
    for i in range(min(count, 128)):
        off = entries_lba * SECTOR + i * size
        if off + 128 > len(system):
            break
        raw = system[off:off + 128]
        type_guid = uuid.UUID(bytes_le=raw[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").rstrip("\0")
        out.append(Partition(i + 1, GPT_TYPES.get(str(type_guid), str(type_guid)), first, last - first + 1,
                             name=name))
    return out
