"""Read any ISO9660 image (Rock Ridge, else Joliet, else plain ISO9660 names) with pycdlib.

The reader lists the tree (files with their size and extent, directories,
symlinks), reads single files and extracts the whole tree into a directory
without ever following a link or writing outside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from ..errors import BuildError, UsageError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Node:
    """One entry of the tree: path without leading slash ("boot/isolinux/isolinux.cfg")."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    size: int = 0
    extent: int = 0  # first 2048-byte block (files)
    mode: int = 0
    target: str = ""  # symlink target


def _safe_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise BuildError(f"the ISO holds an unsafe file name {name!r} in /{where}")
    return name


class IsoReader:
    """An open ISO image (use as a context manager)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"{self.path} is not a file")
        try:
            with open(self.path, "rb") as f:
                f.seek(16 * 2048)
                pvd = f.read(2048)
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror}") from None
        if pvd[1:6] != b"CD001" or len(pvd) < 2048:
            raise UsageError(f"{self.path} is not an ISO image (no ISO9660 volume descriptor)")
        blocks = struct.unpack_from("<I", pvd, 80)[0]
        if pvd[0] == 1 and self.path.stat().st_size < blocks * 2048:
            raise BuildError(f"{self.path} is truncated: {self.path.stat().st_size} bytes, its volume "
                             f"holds {blocks * 2048}")
        self.iso = pycdlib.PyCdlib()
        try:
            self.iso.open(str(self.path))
        except (PyCdlibException, struct.error, ValueError, IndexError, OSError) as exc:
            raise BuildError(f"cannot read {self.path} as an ISO image: {exc}") from None
        if self.iso.has_rock_ridge():
            self.space = "rr_path"
        elif self.iso.has_joliet():
            self.space = "joliet_path"
        else:
            self.space = "iso_path"
        self._nodes: dict[str, Node] | None = None
        self._iso_paths: dict[str, str] = {}

    def __enter__(self) -> IsoReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(PyCdlibException):
            self.iso.close()

    @property
    def volume_id(self) -> str:
        return self.iso.pvd.volume_identifier.decode("ascii", "replace").rstrip(" \0")

    # -- the tree ---------------------------------------------------------------------------
    def _name(self, rec: Any) -> str:
        if self.space == "rr_path" and rec.rock_ridge is not None:
            return rec.rock_ridge.name().decode("utf-8", "surrogateescape")
        ident = rec.file_identifier()
        if self.space == "joliet_path":
            return ident.decode("utf-16_be")
        name = ident.decode("ascii", "replace").split(";")[0]
        return name[:-1] if name.endswith(".") else name

    def _children(self, path: str) -> Iterator[Any]:
        kwargs = {self.space: "/" + path}
        for rec in self.iso.list_children(**kwargs):
            if rec is None or rec.is_dot() or rec.is_dotdot():
                continue
            yield rec

    def nodes(self) -> dict[str, Node]:
        """Every entry by path, parents before children, names sorted."""
        if self._nodes is not None:
            return self._nodes
        out: dict[str, Node] = {}

        def walk(directory: str) -> None:
            children = sorted(((self._name(rec), rec) for rec in self._children(directory)),
                              key=lambda item: item[0])
            for name, rec in children:
                _safe_name(name, directory)
                path = f"{directory}/{name}" if directory else name
                if rec.is_symlink():
                    target = rec.rock_ridge.symlink_path().decode("utf-8", "surrogateescape")
                    out[path] = Node(path, "symlink", target=target)
                elif rec.is_dir():
                    out[path] = Node(path, "dir", mode=stat.S_IFDIR | 0o555)
                    walk(path)
                else:
                    mode = 0o444
                    if rec.rock_ridge is not None:
                        with contextlib.suppress(PyCdlibException):
                            mode = stat.S_IMODE(rec.rock_ridge.get_file_mode())
                    out[path] = Node(path, "file", size=rec.get_data_length(),
                                     extent=rec.extent_location(), mode=mode)
        try:
            walk("")
        except PyCdlibException as exc:
            raise BuildError(f"cannot list {self.path}: {exc}") from None
        self._nodes = out
        return out

    def files(self) -> dict[str, Node]:
        return {p: n for p, n in self.nodes().items() if n.kind == "file"}

    def exists(self, path: str) -> bool:
        return path.strip("/") in self.nodes()

    def path_at_extent(self, extent: int) -> str | None:
        """The file whose data starts at block *extent* (first in path order), or None."""
        for node in self.files().values():
            if node.extent == extent and node.size:
                return node.path
        return None

    # -- contents ---------------------------------------------------------------------------
    def copy_to(self, path: str, out: BinaryIO) -> None:
        """Copy the file's bytes, read straight from its extent (ISO9660 files are contiguous)."""
        rel = path.strip("/")
        node = self.nodes().get(rel)
        if node is None or node.kind != "file":
            raise BuildError(f"{self.path} has no file /{rel}")
        with open(self.path, "rb") as f:
            f.seek(node.extent * 2048)
            left = node.size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise BuildError(f"{self.path} ends inside /{rel}")
                out.write(chunk)
                left -= len(chunk)

    def read(self, path: str) -> bytes:
        import io
        buf = io.BytesIO()
        self.copy_to(path, buf)
        return buf.getvalue()

    def read_optional(self, path: str) -> bytes | None:
        node = self.nodes().get(path.strip("/"))
        return self.read(path) if node is not None and node.kind == "file" else None

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()

        class _Sink:
            def write(self, data: bytes) -> int:
                digest.update(data)
                return len(data)
        self.copy_to(path, _Sink())  # type: ignore[arg-type]
        return digest.hexdigest()

    def extract(self, dest: Path, skip: frozenset[str] | set[str] = frozenset()) -> None:
        """Write the whole tree under *dest* (a new, empty directory); *skip*: paths left out."""
        dest = Path(dest)
        for path, node in self.nodes().items():
            if path in skip or any(str(p) in skip for p in PurePosixPath(path).parents):
                continue
            target = dest / path
            if node.kind == "dir":
                target.mkdir(mode=0o755)
            elif node.kind == "symlink":
                os.symlink(node.target, target)
            else:
                with open(target, "xb") as out:
                    self.copy_to(path, out)
                os.chmod(target, 0o644 | (0o111 if node.mode & 0o111 else 0))


def sha256_file(path: Path) -> str:
    """The sha256 of a file on the host."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
