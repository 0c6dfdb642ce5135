"""Read the files of any ISO 9660 image by path, whoever mastered it (pycdlib).

Rock Ridge names when the image has them, else Joliet, else plain ISO 9660 names (without
``;1``, matched case-insensitively). Links on the image are refused, never followed.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
from pathlib import Path
from types import TracebackType

import pycdlib
from pycdlib.dr import DirectoryRecord
from pycdlib.pycdlibexception import PyCdlibException

from ..errors import BuildError

_CHUNK = 1 << 20


class IsoReader:
    """Files of an ISO 9660 image by path (``/boot/xen.gz``), whoever mastered it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._iso = pycdlib.PyCdlib()
        self._names: dict[str, str] = {}   # our path -> path in the chosen namespace
        self._folded: dict[str, str] = {}  # casefolded our path -> our path
        self._kind = "iso_path"

    def __enter__(self) -> IsoReader:
        try:
            self._iso.open(str(self.path))
        except (PyCdlibException, OSError, ValueError) as exc:
            raise BuildError(f"{self.path}: not a readable ISO 9660 image ({exc})") from None
        self._kind = ("rr_path" if self._iso.has_rock_ridge() else
                      "joliet_path" if self._iso.has_joliet() else "iso_path")
        for top, _dirs, files in self._iso.walk(**{self._kind: "/"}):
            for name in files:
                ours = posixpath.join(top, name.split(";")[0] if self._kind == "iso_path" else name)
                ours = ours.rstrip(".") if self._kind == "iso_path" else ours
                self._names[ours] = posixpath.join(top, name)
                self._folded.setdefault(ours.casefold(), ours)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with contextlib.suppress(PyCdlibException, OSError):
            self._iso.close()

    def find(self, path: str) -> str | None:
        """The ISO's spelling of *path* when it is a file there (exact, else case-insensitive)."""
        path = posixpath.normpath("/" + path.lstrip("/"))
        if path in self._names:
            return path
        return self._folded.get(path.casefold())

    def is_file(self, path: str) -> bool:
        return self.find(path) is not None

    def files(self) -> list[str]:
        return sorted(self._names)

    def _lookup(self, path: str) -> tuple[dict[str, str], int]:
        """(pycdlib path argument, size) of the regular file *path*; links are refused."""
        found = self.find(path)
        if found is None:
            raise BuildError(f"{self.path}: no file {path}")
        where = {self._kind: self._names[found]}
        record = self._iso.get_record(**where)
        if isinstance(record, DirectoryRecord) and record.rock_ridge is not None \
                and record.rock_ridge.is_symlink():
            raise BuildError(f"{self.path}: {path} is a symbolic link (not followed)")
        return where, int(record.get_data_length())

    def size(self, path: str) -> int:
        return self._lookup(path)[1]

    def read(self, path: str) -> bytes:
        where, _size = self._lookup(path)
        buf = io.BytesIO()
        self._iso.get_file_from_iso_fp(buf, **where)
        return buf.getvalue()

    def copy(self, path: str, dest: Path) -> None:
        """Write the ISO file *path* to *dest* (parents created)."""
        where, _size = self._lookup(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            self._iso.get_file_from_iso_fp(out, blocksize=_CHUNK, **where)
