"""Hybrid system area: the MBR (and GPT) that let an ISO boot from a USB stick.

The layout is the one ``isohybrid [--uefi]`` (syslinux-utils) writes on a
genisoimage ISO, computed here from the image itself (volume size, El Torito
catalog) so that any ISO9660 writer can be made hybrid:

* MBR boot code: the 432 bytes of syslinux's isohdpfx.bin; at 432 the 512-byte
  LBA of the BIOS boot image (isolinux.bin), at 440 the disk id.
* Partition 1: active (0x80), from sector 0 over the whole padded image;
  type 0x17 (0x00 with --uefi, as isohybrid does), CHS for 64 heads x 32 sectors.
* Partition 2 (UEFI only): type 0xEF on the El Torito EFI image's extent.
* GPT (UEFI only): primary at sector 1 (entries from sector 2, 128 x 128 bytes),
  backup header in the last sector with its entries just before it; entry 1
  "ISOHybrid ISO" over the ISO9660 volume, entry 2 "ISOHybrid" over the EFI image,
  both of the "basic data" type as isohybrid writes them (the EFI System type
  would be more exact, but readers of isohybrid images, pycdlib's among them,
  refuse it; firmware uses the MBR here since it is not a protective one).
  Both CRCs cover the whole 128-entry array, and the backup mirrors the primary.
* Size padded to a multiple of the 1 MiB cylinder, plus one more cylinder when
  the backup GPT would not otherwise fit after the volume.

Every id (MBR disk id, GPT disk and partition GUIDs) is derived from the volume
id, so the same ISO gets the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError

SECTOR = 512
ISO_BLOCK = 2048
HEADS = 64
SECTORS_PER_TRACK = 32
CYLINDER = HEADS * SECTORS_PER_TRACK * SECTOR  # 1 MiB
MBR_CODE_SIZE = 432
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ARRAY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32
GPT_SPACE = SECTOR + GPT_ENTRIES * GPT_ENTRY_SIZE  # header sector + entry array

#: Signature isolinux.bin carries at offset 0x40 when it can be booted through the hybrid MBR.
ISOLINUX_HYBRID_MAGIC = b"\xfb\xc0\x78\x70"

GPT_TYPE_BASIC_DATA = uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
_ID_NAMESPACE = uuid.UUID("6f3d1c9e-2a41-5b7e-9c07-4d1f0e8a6b52")


@dataclass(frozen=True)
class BootInfo:
    """What the hybrid tables need to know about an ISO image (all in 2048-byte blocks)."""

    volume_blocks: int
    bios_lba: int
    efi_lba: int | None = None
    efi_sectors: int | None = None  # 512-byte sectors, from the El Torito entry


@dataclass(frozen=True)
class Ids:
    """Disk and partition identities, derived from the volume id."""

    mbr_id: int
    disk_guid: uuid.UUID
    iso_guid: uuid.UUID
    efi_guid: uuid.UUID

    @classmethod
    def from_volid(cls, volid: str) -> Ids:
        digest = hashlib.sha256(f"xcpimg-mbr-id:{volid}".encode()).digest()
        mbr_id = int.from_bytes(digest[:4], "little") or 1
        return cls(mbr_id,
                   uuid.uuid5(_ID_NAMESPACE, f"{volid}/disk"),
                   uuid.uuid5(_ID_NAMESPACE, f"{volid}/iso"),
                   uuid.uuid5(_ID_NAMESPACE, f"{volid}/efi"))


def volume_descriptors(block: Callable[[int], bytes]) -> tuple[int | None, int | None, int | None]:
    """Walk the volume descriptor set of an ISO image read through *block* (LBA -> its 2 KiB):
    (volume size in blocks from the primary descriptor, El Torito boot catalog block, the first
    block before the set's terminator that holds no volume descriptor). None where absent."""
    volume_blocks = catalog_lba = None
    for lba in range(16, 16 + 64):
        vd = block(lba)
        if len(vd) < ISO_BLOCK or vd[1:6] != b"CD001":
            return volume_blocks, catalog_lba, lba
        if vd[0] == 1 and volume_blocks is None:
            volume_blocks = struct.unpack_from("<I", vd, 80)[0]
        elif vd[0] == 0 and vd[7:30] == b"EL TORITO SPECIFICATION":
            catalog_lba = struct.unpack_from("<I", vd, 71)[0]
        elif vd[0] == 255:
            break
    return volume_blocks, catalog_lba, None


def read_boot_info(fp: object) -> BootInfo:
    """Read the volume size and the El Torito BIOS and EFI entries of an ISO image."""
    def block(lba: int, count: int = 1) -> bytes:
        fp.seek(lba * ISO_BLOCK)  # type: ignore[attr-defined]
        data = fp.read(count * ISO_BLOCK)  # type: ignore[attr-defined]
        if len(data) != count * ISO_BLOCK:
            raise BuildError(f"ISO image ends before block {lba}")
        return data

    volume_blocks, catalog_lba, not_a_descriptor = volume_descriptors(block)
    if not_a_descriptor is not None:
        raise BuildError(f"not an ISO9660 image (no volume descriptor at block {not_a_descriptor})")
    if volume_blocks is None:
        raise BuildError("ISO image has no primary volume descriptor")
    if catalog_lba is None:
        raise BuildError("ISO image has no El Torito boot record: it cannot be made hybrid")
    cat = block(catalog_lba)
    if cat[0] != 1 or cat[30:32] != b"\x55\xaa" or sum(struct.unpack_from("<16H", cat)) & 0xFFFF:
        raise BuildError("El Torito boot catalog is invalid")
    boot, media, _seg, _sys, count, bios_lba = struct.unpack_from("<BBHBxHI", cat, 32)
    if boot != 0x88 or media != 0 or count != 4:
        raise BuildError("El Torito default entry must be a bootable no-emulation image loading 4 sectors")
    efi_lba = efi_sectors = None
    pos = 64
    while pos + 32 <= len(cat) and cat[pos] in (0x90, 0x91) and efi_lba is None:
        platform, entries = cat[pos + 1], struct.unpack_from("<H", cat, pos + 2)[0]
        for i in range(entries):
            entry = pos + 32 * (i + 1)
            if platform == 0xEF and cat[entry] == 0x88:
                efi_sectors, efi_lba = struct.unpack_from("<HI", cat, entry + 6)
                break
        if cat[pos] == 0x91:
            break
        pos += 32 * (entries + 1)
    if block(bios_lba)[0x40:0x44] != ISOLINUX_HYBRID_MAGIC:
        raise BuildError("the BIOS boot image has no isohybrid signature (use isolinux.bin from syslinux)")
    return BootInfo(volume_blocks, bios_lba, efi_lba, efi_sectors)


def padded_size(file_size: int, volume_size: int, gpt: bool) -> int:
    """Image size after padding: whole cylinders, with room for the backup GPT."""
    padding = -file_size % CYLINDER
    if gpt and file_size - volume_size < GPT_SPACE and padding < GPT_SPACE:
        padding += CYLINDER
    return file_size + padding


def _chs_end(cylinders: int) -> bytes:
    c = min(cylinders, 1024) - 1
    return bytes([HEADS - 1, SECTORS_PER_TRACK | ((c & 0x300) >> 2), c & 0xFF])


def mbr(code: bytes, info: BootInfo, image_size: int, ids: Ids, uefi: bool) -> bytes:
    """The 512-byte MBR: boot code, boot image LBA, disk id and partition table."""
    if len(code) < MBR_CODE_SIZE:
        raise BuildError(f"MBR boot code is {len(code)} bytes, expected at least {MBR_CODE_SIZE} "
                         "(pass the contents of syslinux's isohdpfx.bin)")
    sectors = image_size // SECTOR
    part1 = struct.pack("<B3sB3sII", 0x80, bytes([0, 1, 0]), 0x00 if uefi else 0x17,
                        _chs_end(image_size // CYLINDER), 0, sectors)
    part2 = bytes(16)
    if uefi:
        if info.efi_lba is None or not info.efi_sectors:
            raise BuildError("ISO image has no El Torito EFI entry: cannot add the EFI partition")
        part2 = struct.pack("<B3sB3sII", 0x00, b"\xfe\xff\xff", 0xEF, b"\xfe\xff\xff",
                            info.efi_lba * 4, info.efi_sectors)
    head = code[:MBR_CODE_SIZE] + struct.pack("<IIIH", info.bios_lba * 4, 0, ids.mbr_id, 0)
    return head + part1 + part2 + bytes(32) + b"\x55\xaa"


def _gpt_entries(info: BootInfo, ids: Ids) -> bytes:
    assert info.efi_lba is not None and info.efi_sectors is not None
    def entry(type_: uuid.UUID, guid: uuid.UUID, first: int, last: int, name: str) -> bytes:
        return struct.pack("<16s16sQQQ72s", type_.bytes_le, guid.bytes_le, first, last, 0,
                           name.encode("utf-16-le"))
    iso_sectors = info.volume_blocks * 4
    efi_first = info.efi_lba * 4
    entries = (entry(GPT_TYPE_BASIC_DATA, ids.iso_guid, 0, iso_sectors - 1, "ISOHybrid ISO")
               + entry(GPT_TYPE_BASIC_DATA, ids.efi_guid, efi_first, efi_first + info.efi_sectors - 1,
                       "ISOHybrid"))
    return entries.ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0")


def _gpt_header(current: int, backup: int, entries_lba: int, last_sector: int, ids: Ids,
                entries_crc: int) -> bytes:
    def pack(crc: int) -> bytes:
        return struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, crc, 0, current, backup,
                           2 + GPT_ARRAY_SECTORS, last_sector - 1 - GPT_ARRAY_SECTORS,
                           ids.disk_guid.bytes_le, entries_lba, GPT_ENTRIES, GPT_ENTRY_SIZE, entries_crc)
    return pack(zlib.crc32(pack(0))).ljust(SECTOR, b"\0")


def gpt(info: BootInfo, image_size: int, ids: Ids) -> tuple[bytes, bytes]:
    """(primary, backup) GPT: header + entries at sector 1, entries + header at the end."""
    last = image_size // SECTOR - 1
    entries = _gpt_entries(info, ids)
    crc = zlib.crc32(entries)
    primary = _gpt_header(1, last, 2, last, ids, crc) + entries
    backup = entries + _gpt_header(last, 1, last - GPT_ARRAY_SECTORS, last, ids, crc)
    return primary, backup


def make_hybrid(path: Path, code: bytes, volid: str, uefi: bool = True) -> None:
    """Turn the ISO image at *path* into a hybrid one, in place (like ``isohybrid [--uefi]``)."""
    ids = Ids.from_volid(volid)
    with open(path, "r+b") as fp:
        info = read_boot_info(fp)
        file_size = os.fstat(fp.fileno()).st_size
        fp.seek(0)
        if fp.read(SECTOR + GPT_SPACE).strip(b"\0"):
            raise BuildError(f"{path}: system area is not empty; refusing to overwrite it")
        size = padded_size(file_size, info.volume_blocks * ISO_BLOCK, uefi)
        fp.truncate(size)
        fp.seek(0)
        fp.write(mbr(code, info, size, ids, uefi))
        if uefi:
            primary, backup = gpt(info, size, ids)
            fp.write(primary)
            fp.seek(size - len(backup))
            fp.write(backup)
