"""What the VM shows on its display: PNG from a QEMU PPM screendump, text of a VGA text screen.

SeaBIOS, iPXE and syslinux print some of their errors only there (REFERENCE section 3).
Pure functions: bytes in, bytes or text out.
"""

from __future__ import annotations

import struct
import zlib


def ppm_to_png(ppm: bytes) -> bytes:
    """Convert a binary PPM (P6, maxval 255) to PNG with zlib only."""
    parts: list[bytes] = []
    pos = 0
    while len(parts) < 4:  # magic, width, height, maxval; '#' comments allowed
        while ppm[pos:pos + 1].isspace():
            pos += 1
        if ppm[pos:pos + 1] == b"#":
            pos = ppm.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(ppm) and not ppm[end:end + 1].isspace():
            end += 1
        parts.append(ppm[pos:end])
        pos = end
    if parts[0] != b"P6" or parts[3] != b"255":
        raise ValueError("not a binary PPM with maxval 255")
    width, height = int(parts[1]), int(parts[2])
    pixels = ppm[pos + 1:pos + 1 + width * height * 3]
    stride = width * 3
    raw = b"".join(b"\0" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def vga_text(memory: bytes, columns: int = 80) -> str:
    """Text of a VGA text-mode buffer (character, attribute pairs), one line per row."""
    chars = memory[0::2].decode("cp437", errors="replace")
    rows = [chars[i:i + columns].rstrip() for i in range(0, len(chars), columns)]
    return "\n".join(rows).rstrip("\n ")
