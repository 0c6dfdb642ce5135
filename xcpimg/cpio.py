"""Deterministic cpio "newc" archives (the initramfs format) and a small reader.

The writer walks a tree in sorted order (a directory before its contents,
entries by byte-wise name), clamps every mtime to the build epoch, numbers
inodes in walk order, and gives device numbers of 0, so the same tree always
gives the same bytes. Hard links inside the tree share one inode number and,
as newc expects, only the last link carries the data (the kernel and GNU
cpio both rebuild the link from that). The archive ends with ``TRAILER!!!``
and is padded with zeros to a multiple of 512 bytes, as GNU cpio does (the
kernel skips zero padding between and after archives).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BuildError

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
BLOCK = 512
CHUNK = 1 << 20
MAX_SIZE = 0xFFFFFFFF


def _pad4(n: int) -> int:
    return (-n) & 3


def _walk_dir(dirpath: str, prefix: bytes) -> Iterator[tuple[bytes, str, os.stat_result]]:
    """Pre-order walk: each entry, then (for a directory) its subtree; names sorted byte-wise."""
    with os.scandir(dirpath) as it:
        children = sorted(it, key=lambda e: os.fsencode(e.name))
    for child in children:
        name = prefix + os.fsencode(child.name)
        st = child.stat(follow_symlinks=False)
        yield name, child.path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(child.path, name + b"/")


def walk(root: Path) -> list[tuple[bytes, str, os.stat_result]]:
    """(archive name, disk path, lstat) of every entry of *root*, in archive order."""
    root_st = os.lstat(root)
    if not stat.S_ISDIR(root_st.st_mode):
        raise BuildError(f"cpio: {root} is not a directory")
    out = [(b".", os.fspath(root), root_st)]
    out += list(_walk_dir(os.fspath(root), b""))
    return out


def header(*, ino: int, mode: int, uid: int = 0, gid: int = 0, nlink: int, mtime: int, size: int,
           rdevmajor: int = 0, rdevminor: int = 0, name: bytes) -> bytes:
    """One newc member header with its NUL-terminated name, padded to 4 bytes."""
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdevmajor, rdevminor, len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + b"\0" * _pad4(len(head))


def write_newc(root: Path, out: BinaryIO, *, epoch: int, keep_owner: bool = False) -> int:
    """Write the tree *root* to *out* as one newc archive; return the bytes written.

    Owners are 0/0 unless *keep_owner* (then the numeric uid/gid on disk are kept,
    which are deterministic when the tree comes from RPMs). Sockets are skipped.
    """
    entries = walk(Path(root))
    # hard links: group regular files by (dev, ino) within the tree
    links: dict[tuple[int, int], list[int]] = {}
    for i, (_name, _path, st) in enumerate(entries):
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            links.setdefault((st.st_dev, st.st_ino), []).append(i)
    subdirs: dict[bytes, int] = {}
    for name, _path, st in entries:
        if stat.S_ISDIR(st.st_mode) and name != b".":
            parent = name.rpartition(b"/")[0] or b"."
            subdirs[parent] = subdirs.get(parent, 0) + 1

    written = 0
    next_ino = 1
    group_ino: dict[tuple[int, int], int] = {}
    for idx, (name, path, st) in enumerate(entries):
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            continue
        key = (st.st_dev, st.st_ino)
        group = links.get(key)
        if group is not None and key in group_ino:
            ino = group_ino[key]
        else:
            ino = next_ino
            next_ino += 1
            if group is not None:
                group_ino[key] = ino
        nlink = 1
        if stat.S_ISDIR(mode):
            nlink = 2 + subdirs.get(name, 0)
        elif group is not None:
            nlink = len(group)
        rdev_major = rdev_minor = 0
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            rdev_major, rdev_minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        data: bytes | None = None
        size = 0
        if stat.S_ISLNK(mode):
            data = os.fsencode(os.readlink(path))
            size = len(data)
        elif stat.S_ISREG(mode) and (group is None or group[-1] == idx):
            size = st.st_size
            if size > MAX_SIZE:
                raise BuildError(f"cpio: {path} is too large for newc ({size} bytes)")
        uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
        head = header(ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink,
                       mtime=min(int(st.st_mtime), epoch), size=size,
                       rdevmajor=rdev_major, rdevminor=rdev_minor, name=name)
        out.write(head)
        written += len(head)
        if data is not None:
            out.write(data)
        elif size:
            _copy_exact(path, size, out)
        if size:
            out.write(b"\0" * _pad4(size))
            written += size + _pad4(size)
    trailer = header(ino=0, mode=0, nlink=1, mtime=0, size=0, name=TRAILER.encode())
    out.write(trailer)
    written += len(trailer)
    tail = (-written) % BLOCK
    out.write(b"\0" * tail)
    return written + tail


def _copy_exact(path: str, size: int, out: BinaryIO) -> None:
    """Stream exactly *size* bytes of *path* (a file changing under us is an error)."""
    left = size
    with open(path, "rb") as f:
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise BuildError(f"cpio: {path} shrank while being archived")
            out.write(chunk)
            left -= len(chunk)


# ---------------------------------------------------------------- reader (tests, inspection)

@dataclass(frozen=True)
class Member:
    """One entry read back from a newc archive."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdevmajor: int
    rdevminor: int
    data: bytes

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BuildError("cpio: truncated archive")
    return data


def read_newc(f: BinaryIO) -> Iterator[Member]:
    """Yield the members of the newc archive(s) in *f*, up to the end of input.

    Several concatenated archives (zero padding between them) read as one
    sequence, as the kernel unpacks them. Data is held in memory: for tests
    and inspection of small archives.
    """
    pos = 0
    while True:
        first = f.read(1)
        while first == b"\0":
            pos += 1
            first = f.read(1)
        if not first:
            return
        if pos & 3:
            raise BuildError(f"cpio: misaligned header at offset {pos}")
        head = first + _read_exact(f, HEADER_LEN - 1)
        if head[:6] != MAGIC:
            raise BuildError(f"cpio: bad magic {head[:6]!r} at offset {pos}")
        v = [int(head[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _dm, _dn, rmaj, rmin, namesize, _chk = v
        name = _read_exact(f, namesize)[:-1].decode("utf-8", "surrogateescape")
        _read_exact(f, _pad4(HEADER_LEN + namesize))
        data = _read_exact(f, size)
        _read_exact(f, _pad4(size))
        pos += HEADER_LEN + namesize + _pad4(HEADER_LEN + namesize) + size + _pad4(size)
        if name == TRAILER:
            continue
        yield Member(name, ino, mode, uid, gid, nlink, mtime, rmaj, rmin, data)
