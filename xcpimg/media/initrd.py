"""install.img: its compression, the files of its (possibly concatenated) cpio archives,
the packages of its rpm database, and extra files appended as a new newc segment.

An initramfs may be several archives one after the other, each compressed or not,
with zero padding between them; Linux unpacks them in order, later files replacing
earlier ones. An appended segment must start on a 4-byte boundary of the file
(the kernel checks the offset of an uncompressed header), so it is padded to 512.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import posixpath
import shutil
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .. import compress, cpio
from ..dnf import RPMDB_PATH
from ..errors import BuildError
from ..fsutil import private_tempdir
from ..probe import Entry, newc_archive
from ..run import output
from .repodata import Package, parse_nevra

CHUNK = 1 << 20
#: Where an image's rpm database may live (the second for newer distributions).
RPMDB_DIRS = (RPMDB_PATH.strip("/"), "usr/lib/sysimage/rpm")
NEVRA_QF = "%{NAME}-%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}.%{ARCH}\\n"


def compression(path: Path) -> str | None:
    """The compression of the image's first segment, from its magic bytes (None: plain cpio)."""
    with open(path, "rb") as f:
        return compress.detect(f.read(8))


def _decompressor(method: str) -> Any:
    if method == "gzip":
        return zlib.decompressobj(wbits=31)
    if method == "bzip2":
        return bz2.BZ2Decompressor()
    if method == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    import zstandard
    return zstandard.ZstdDecompressor().decompressobj()


class _OneStream(io.RawIOBase):
    """The decompressed bytes of the one compressed stream at *raw*'s position; afterwards
    *raw* is positioned right after that stream."""

    def __init__(self, raw: BinaryIO, method: str) -> None:
        self.raw, self.method = raw, method
        self.dec = _decompressor(method)
        self.buf = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf and not self.done:
            chunk = self.raw.read(CHUNK)
            try:
                self.buf = self.dec.decompress(chunk) if chunk else b""
            except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError) as exc:
                raise BuildError(f"install.img: corrupt {self.method} data: {exc}") from None
            if self.dec.eof:
                self.done = True
                self.raw.seek(-len(self.dec.unused_data), os.SEEK_CUR)
            elif not chunk:
                raise BuildError(f"install.img: truncated {self.method} stream")
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def _skip_zeros(f: BinaryIO) -> bytes:
    """Skip zero padding; return (without consuming) the next 8 bytes, b"" at the end."""
    while (byte := f.read(1)) == b"\0":
        pass
    if not byte:
        return b""
    f.seek(-1, os.SEEK_CUR)
    head = f.read(8)
    f.seek(-len(head), os.SEEK_CUR)
    return head


def _raw_segments(path: Path, f: BinaryIO) -> Iterator[tuple[str | None, BinaryIO]]:
    """(compression, decompressed stream) of each segment; a plain cpio runs to the end."""
    while head := _skip_zeros(f):
        if head.startswith(cpio.MAGIC):
            yield None, f
            return
        method = compress.detect(head)
        if method is None:
            raise BuildError(f"{path}: unknown data at offset {f.tell()} (neither cpio nor a known "
                             "compression)")
        yield method, io.BufferedReader(_OneStream(f, method), CHUNK)  # type: ignore[arg-type]


def segments(path: Path) -> Iterator[tuple[str | None, Iterator[cpio.Member]]]:
    """(compression, members) of each segment of the image, in order."""
    with open(path, "rb") as f:
        for method, stream in _raw_segments(path, f):
            yield method, cpio.read_newc(stream)


def members(path: Path) -> Iterator[cpio.Member]:
    """Every member of every segment (later ones may replace earlier files)."""
    for _method, found in segments(path):
        yield from found


def _clean(name: str) -> str | None:
    """A member name as a relative path, or None when it is absolute or leaves the root."""
    if name.startswith("/"):
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


def packages(path: Path) -> list[Package]:
    """The packages of the image's rpm database (``rpm --root``, on a private copy of it)."""
    with private_tempdir("xcpimg-rpmdb-") as root:
        found = False
        for member in members(path):
            rel = _clean(member.name)
            if rel is None or not any(rel.startswith(d + "/") or rel == d for d in RPMDB_DIRS):
                continue
            dest = root / rel
            if member.is_dir:
                dest.mkdir(parents=True, exist_ok=True)
            elif member.is_symlink:  # only the database directory itself, to the other known place
                target = member.data.decode(errors="replace")
                inside = _clean(str(PurePosixPath(rel).parent / target))
                if rel in RPMDB_DIRS and not target.startswith("/") and inside in RPMDB_DIRS:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.is_symlink() or dest.exists():
                        continue
                    os.symlink(target, dest)
            elif member.is_file:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_symlink():
                    dest.unlink()
                dest.write_bytes(member.data)
                found = True
        if not found:
            raise BuildError(f"{path} holds no rpm database (/{RPMDB_DIRS[0]})")
        text = output(["rpm", "--root", root, "--dbpath", RPMDB_PATH, "-qa", "--qf", NEVRA_QF],
                      what="read install.img's rpm database")
    pkgs = [parse_nevra(line.strip()) for line in text.splitlines() if line.strip()]
    return sorted(p for p in pkgs if p.name != "gpg-pubkey")


def file_data(path: Path, name: str) -> bytes | None:
    """The data of member *name* as the kernel would leave it (the last one wins)."""
    data = None
    for member in members(path):
        if _clean(member.name) == name.strip("/") and member.is_file:
            data = member.data
    return data


def extra_segment(files: dict[str, bytes], epoch: int) -> bytes:
    """A newc archive holding *files* (relative path -> data, mode 0644, root-owned)."""
    dirs = {str(p) for rel in files for p in PurePosixPath(rel).parents if str(p) != "."}
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries += [Entry(rel, stat.S_IFREG | 0o644, data) for rel, data in files.items()]
    return newc_archive(entries, epoch)


def append_segment(src: Path, dest: Path, files: dict[str, bytes], epoch: int, rebuild: bool) -> None:
    """Write *src* plus *files* to *dest*: appended as a new segment, or with *rebuild* the
    image decompressed, extended and recompressed with its own method (one stream)."""
    segment = extra_segment(files, epoch)
    method = compression(src)
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        if not rebuild or method is None:
            shutil.copyfileobj(fin, fout, CHUNK)
            fout.write(b"\0" * (-fout.tell() % cpio.BLOCK))
            fout.write(segment)
            return
        with compress.open_compressor(fout, method) as stream:  # type: ignore[arg-type]
            written = 0
            for _method, part in _raw_segments(src, fin):
                while chunk := part.read(CHUNK):
                    stream.write(chunk)
                    written += len(chunk)
                stream.write(b"\0" * (-written % cpio.BLOCK))
                written += -written % cpio.BLOCK
            stream.write(segment)
