"""LSS16, syslinux's 16-colour splash image format: encode, decode, and xcpimg's own splash.

Layout: magic ``3D F3 13 14``, width and height (16-bit little-endian), 16 palette
entries of 3 bytes (6-bit R, G, B), then the rows. Each row is a string of nybbles,
low nybble of a byte first, padded to a whole byte; the "previous colour" starts at 0
on every row. A nybble that differs from the previous colour paints one pixel of it
and becomes the previous colour; a nybble equal to it introduces a run of the previous
colour: the next nybble N paints N pixels (1-15), or, when N is 0, the next two nybbles
(low first) give M and M + 16 pixels are painted (16-271).

The ISO menus show the file through a ``^X`` line (byte 0x18 then its name) at the top
of ``pg_main`` and ``pg_help``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

MAGIC = b"\x3d\xf3\x13\x14"
MAX_RUN = 255 + 16

Palette = Sequence[tuple[int, int, int]]


class Lss16Error(ValueError):
    """Bytes that are not a valid LSS16 image."""


def encode(width: int, height: int, palette: Palette, pixels: Sequence[int]) -> bytes:
    """An LSS16 image of *width* x *height* *pixels* (colour indexes 0-15, row by row)."""
    if len(palette) != 16 or any(not 0 <= c <= 63 for rgb in palette for c in rgb):
        raise ValueError("an LSS16 palette has 16 entries of 6-bit (0-63) components")
    if len(pixels) != width * height or any(not 0 <= p <= 15 for p in pixels):
        raise ValueError("pixels must be width*height colour indexes 0-15")
    out = bytearray(MAGIC + struct.pack("<HH", width, height))
    for rgb in palette:
        out += bytes(rgb)
    for y in range(height):
        out += _encode_row(pixels[y * width:(y + 1) * width])
    return bytes(out)


def _encode_row(row: Sequence[int]) -> bytes:
    nybbles: list[int] = []
    prev = 0
    x = 0
    while x < len(row):
        colour = row[x]
        run = 1
        while x + run < len(row) and row[x + run] == colour:
            run += 1
        x += run
        if colour != prev:
            nybbles.append(colour)
            prev = colour
            run -= 1
        while run:
            n = min(run, MAX_RUN)
            nybbles.append(prev)
            if n < 16:
                nybbles.append(n)
            else:
                nybbles += [0, (n - 16) & 0xF, (n - 16) >> 4]
            run -= n
    if len(nybbles) % 2:
        nybbles.append(0)
    return bytes(nybbles[i] | nybbles[i + 1] << 4 for i in range(0, len(nybbles), 2))


def decode(data: bytes) -> tuple[int, int, list[tuple[int, int, int]], list[int]]:
    """(width, height, palette, pixels) of an LSS16 image; Lss16Error if *data* is not one."""
    if len(data) < 8 + 48 or data[:4] != MAGIC:
        raise Lss16Error("not an LSS16 image (bad magic or too short)")
    width, height = struct.unpack_from("<HH", data, 4)
    palette = [tuple(data[8 + 3 * i:11 + 3 * i]) for i in range(16)]
    if any(c > 63 for rgb in palette for c in rgb):
        raise Lss16Error("LSS16 palette component above 63")
    reader = _Nybbles(data, 56)
    pixels: list[int] = []
    for y in range(height):
        row: list[int] = []
        prev = 0
        reader.align()
        while len(row) < width:
            c = reader.next(y)
            if c != prev:
                row.append(c)
                prev = c
                continue
            n = reader.next(y)
            if n == 0:
                n = reader.next(y) + (reader.next(y) << 4) + 16
            row.extend([prev] * n)
        if len(row) != width:
            raise Lss16Error(f"LSS16 row {y} has {len(row)} pixels, not {width}")
        pixels += row
    reader.align()
    pos = reader.pos
    if pos != len(data):
        raise Lss16Error(f"{len(data) - pos} bytes after the last LSS16 row")
    return width, height, palette, pixels  # type: ignore[return-value]


class _Nybbles:
    """Nybbles of *data* from byte *pos* on, low nybble first; rows start on a whole byte."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos, self.high = data, pos, False

    def align(self) -> None:
        if self.high:
            self.pos, self.high = self.pos + 1, False

    def next(self, row: int) -> int:
        if self.pos >= len(self.data):
            raise Lss16Error(f"LSS16 data ends in row {row}")
        byte = self.data[self.pos]
        if self.high:
            self.pos, self.high = self.pos + 1, False
            return byte >> 4
        self.high = True
        return byte & 0xF


#: xcpimg's splash palette: 0 background navy, 1 white, 2 teal, 3 light teal, then greys
SPLASH_PALETTE: list[tuple[int, int, int]] = [
    (2, 6, 16), (63, 63, 63), (0, 38, 44), (20, 52, 56), (8, 14, 26), (40, 40, 44),
    (24, 24, 28), (12, 12, 14), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0),
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0),
]


def draw_splash(width: int = 640, height: int = 320) -> list[int]:
    """xcpimg's own splash: a navy field, a band across it, and a stylised X of two bars."""
    px = [0] * (width * height)

    def put(x: int, y: int, c: int) -> None:
        if 0 <= x < width and 0 <= y < height:
            px[y * width + x] = c

    for y in range(height // 2 - 70, height // 2 + 70):
        for x in range(width):
            put(x, y, 4)
    cx, cy, half, thick = width // 2, height // 2, 90, 16
    for d in range(-half, half + 1):
        for t in range(-thick, thick + 1):
            put(cx + d + t, cy + d, 2)
            put(cx + d + t, cy - d, 3)
    for x in range(width):
        put(x, height // 2 - 71, 5)
        put(x, height // 2 + 70, 5)
    return px


def splash() -> bytes:
    """The bytes of the ``splash.lss`` the ISO templates ship."""
    return encode(640, 320, SPLASH_PALETTE, draw_splash())
