"""Read what an ELF file needs at run time: its interpreter, DT_NEEDED libraries, RUNPATH.

Used to compute the shared-library closure of the fixture's userland binaries (taken
from Debian packages) without running them or the host's loader. Only 64-bit
little-endian files are read (x86_64); anything else is reported as not ELF.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 15, 29


@dataclass(frozen=True)
class Dynamic:
    """The run-time needs of one ELF file."""

    interpreter: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(path: Path) -> bool:
    """True when *path* is a regular file starting with the ELF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def read_dynamic(path: Path) -> Dynamic | None:
    """The interpreter, needed libraries and RUNPATH (or RPATH) of *path*; None if it is not a
    64-bit little-endian ELF file. A static binary gives an empty Dynamic."""
    data = Path(path).read_bytes()
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp: str | None = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 56 > len(data):
            return None
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].split(b"\0", 1)[0].decode()
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return Dynamic(interp, (), ())
    entries: list[tuple[int, int]] = []
    start, size = dynamic
    for off in range(start, min(start + size, len(data) - 15), 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    strtab_addr = next((v for t, v in entries if t == _DT_STRTAB), None)
    strtab = _file_offset(loads, strtab_addr) if strtab_addr is not None else None
    if strtab is None:
        return Dynamic(interp, (), ())

    def string(offset: int) -> str:
        end = data.find(b"\0", strtab + offset)
        return data[strtab + offset:end].decode()

    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    paths = [string(v) for t, v in entries if t == _DT_RUNPATH] or \
        [string(v) for t, v in entries if t == _DT_RPATH]
    runpath = tuple(p for item in paths for p in item.split(":") if p)
    return Dynamic(interp, needed, runpath)


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for seg_vaddr, seg_offset, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return seg_offset + (vaddr - seg_vaddr)
    return None
