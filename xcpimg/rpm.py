"""RPM header and payload access in pure Python.

`RpmPackage` parses the lead, the signature header and the main header, lists
the files and streams the compressed cpio payload (gzip, bzip2, xz, lzma,
zstd; newc or the "stripped" cpio of rpm >= 4.12 large-file packages) to
extract files safely: nothing is written outside the destination, no symlink
already in the destination is ever followed, set-id bits are dropped.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import logging
import lzma
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import zstandard

from . import compress
from .errors import BuildError

log = logging.getLogger("xcpimg.rpm")

LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
LEAD_SIZE = 96

# Header tags (rpm/rpmtag.h).
NAME, VERSION, RELEASE, EPOCH, SUMMARY = 1000, 1001, 1002, 1003, 1004
BUILDTIME, SIZE, ARCH = 1006, 1009, 1022
OLDFILENAMES, FILESIZES, FILEMODES, FILERDEVS, FILEMTIMES = 1027, 1028, 1030, 1033, 1034
FILEDIGESTS, FILELINKTOS, FILEFLAGS, FILEUSERNAME, FILEGROUPNAME = 1035, 1036, 1037, 1039, 1040
SOURCERPM, PROVIDENAME, REQUIREFLAGS, REQUIRENAME, REQUIREVERSION = 1044, 1047, 1048, 1049, 1050
FILEDEVICES, FILEINODES = 1095, 1096
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
PAYLOADFORMAT, PAYLOADCOMPRESSOR, PAYLOADFLAGS = 1124, 1125, 1126
LONGFILESIZES, LONGSIZE = 5008, 5009
PAYLOADDIGEST, PAYLOADDIGESTALGO = 5092, 5093
# Signature header tags.
SIG_SHA1, SIG_SHA256 = 269, 273

#: File flag of %ghost files: listed in the header, absent from the payload.
RPMFILE_GHOST = 1 << 6

# Header data types.
_CHAR, _INT8, _INT16, _INT32, _INT64, _STRING, _BIN, _STRING_ARRAY, _I18NSTRING = range(1, 10)
_INT_FORMATS = {_CHAR: "B", _INT8: "B", _INT16: "H", _INT32: "I", _INT64: "Q"}

#: OpenPGP hash ids used by PAYLOADDIGESTALGO.
_DIGEST_ALGOS = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

_CHUNK = 1 << 20
_NEWC_MAGICS = (b"070701", b"070702")
_STRIPPED_MAGIC = b"07070X"
_TRAILER = "TRAILER!!!"
_MAX_NAME = 1 << 16
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


@dataclass(frozen=True)
class RpmFile:
    """One entry of a package's file list."""

    path: str          # absolute, e.g. "/boot/vmlinuz-4.19.0+1"
    mode: int          # st_mode, file type included
    size: int
    linkto: str        # symlink target, "" otherwise
    flags: int = 0     # RPMFILE_* bits (config, doc, ghost...)
    mtime: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_ghost(self) -> bool:
        return bool(self.flags & RPMFILE_GHOST)


@dataclass
class _Entry:
    """One member of the payload archive."""

    path: str     # normalised absolute path
    mode: int
    size: int     # bytes of data stored in the archive for this member
    nlink: int
    ino: int
    mtime: int


def _split(path: str) -> list[str]:
    """Components of an archive or requested path, refusing any '..'; [] for the root."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(path)
    return parts


def _normalize(path: str) -> str:
    return "/" + "/".join(_split(path))


class _Reader:
    """A read() over a stream that never returns more than *size* bytes."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self._stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self._stream.read_exact(n)
        self.left -= len(data)
        return data


class _Stream:
    """The decompressed payload, read exactly, with a running offset for cpio padding."""

    def __init__(self, raw: IO[bytes], pkg: str) -> None:
        self.raw, self.pkg, self.offset = raw, pkg, 0

    def read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.raw.read(min(n - len(buf), _CHUNK))
            except _DECOMPRESS_ERRORS as exc:
                raise BuildError(f"{self.pkg}: corrupt payload ({exc})") from None
            if not chunk:
                raise BuildError(f"{self.pkg}: payload is truncated (corrupt or partly downloaded package)")
            buf += chunk
        self.offset += n
        return bytes(buf)

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, _CHUNK)
            self.read_exact(step)
            n -= step

    def align(self) -> None:
        self.skip(-self.offset % 4)


class _HashingFile(io.RawIOBase):
    """Reads a file from its current position, hashing everything read."""

    def __init__(self, f: IO[bytes], algo: str | None) -> None:
        self._f = f
        self.hash = hashlib.new(algo) if algo else None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        if self.hash is not None:
            self.hash.update(data)
        b[: len(data)] = data
        return len(data)


class RpmPackage:
    """A binary or source RPM file, parsed on construction (headers only)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                lead = f.read(LEAD_SIZE)
                if len(lead) < LEAD_SIZE or lead[:4] != LEAD_MAGIC:
                    raise BuildError(f"{self.path} is not an RPM package (bad lead)")
                self.is_source = struct.unpack(">H", lead[6:8])[0] == 1
                self.signature, _ = self._read_header(f, "signature")
                f.seek(-f.tell() % 8, os.SEEK_CUR)
                self.header, raw = self._read_header(f, "main")
                self.payload_offset = f.tell()
        except OSError as exc:
            raise BuildError(f"cannot read package {self.path}: {exc.strerror}") from None
        self._check_header_digest(raw)

    def _read_header(self, f: IO[bytes], which: str) -> tuple[dict[int, Any], bytes]:
        intro = f.read(16)
        if len(intro) < 16 or intro[:4] != HEADER_MAGIC:
            raise BuildError(f"{self.path}: bad {which} header (not an RPM package, or truncated)")
        count, size = struct.unpack(">II", intro[8:16])
        if count > 0x10000 or size > 0x10000000:
            raise BuildError(f"{self.path}: {which} header is implausibly large (corrupt package)")
        index = f.read(16 * count)
        store = f.read(size)
        if len(index) < 16 * count or len(store) < size:
            raise BuildError(f"{self.path}: {which} header is truncated")
        tags: dict[int, Any] = {}
        for i in range(count):
            tag, typ, off, cnt = struct.unpack_from(">IIiI", index, 16 * i)
            try:
                tags[tag] = self._value(store, typ, off, cnt)
            except (struct.error, IndexError, ValueError):
                raise BuildError(f"{self.path}: {which} header tag {tag} is corrupt") from None
        return tags, intro + index + store

    @staticmethod
    def _value(store: bytes, typ: int, off: int, cnt: int) -> Any:
        if off < 0 or off > len(store):
            raise ValueError("offset out of range")
        if typ in _INT_FORMATS:
            fmt = f">{cnt}{_INT_FORMATS[typ]}"
            if off + struct.calcsize(fmt) > len(store):
                raise ValueError("value out of range")
            return list(struct.unpack_from(fmt, store, off))
        if typ == _BIN:
            if off + cnt > len(store):
                raise ValueError("value out of range")
            return store[off:off + cnt]
        if typ in (_STRING, _STRING_ARRAY, _I18NSTRING):
            n = 1 if typ == _STRING else cnt
            out = []
            for _ in range(n):
                end = store.index(b"\0", off)
                out.append(store[off:end].decode("utf-8", "surrogateescape"))
                off = end + 1
            return out[0] if typ == _STRING else (out[0] if typ == _I18NSTRING else out)
        return None

    def _check_header_digest(self, raw: bytes) -> None:
        for tag, algo in ((SIG_SHA256, "sha256"), (SIG_SHA1, "sha1")):
            want = self.signature.get(tag)
            if isinstance(want, str):
                if hashlib.new(algo, raw).hexdigest() != want:
                    raise BuildError(f"{self.path}: header {algo} digest mismatch (corrupt package)")
                return

    # -- header values -------------------------------------------------------

    def tag(self, tag: int, default: Any = None) -> Any:
        """Raw value of a main-header tag: str, list[str], list[int], bytes, or *default*."""
        return self.header.get(tag, default)

    def _str(self, tag: int) -> str:
        value = self.header.get(tag, "")
        return value[0] if isinstance(value, list) else value

    def _int(self, tag: int) -> int | None:
        value = self.header.get(tag)
        return value[0] if isinstance(value, list) and value else None

    @property
    def name(self) -> str:
        return self._str(NAME)

    @property
    def version(self) -> str:
        return self._str(VERSION)

    @property
    def release(self) -> str:
        return self._str(RELEASE)

    @property
    def epoch(self) -> int | None:
        return self._int(EPOCH)

    @property
    def arch(self) -> str:
        return "src" if self.is_source else self._str(ARCH)

    @property
    def buildtime(self) -> int | None:
        return self._int(BUILDTIME)

    @property
    def sourcerpm(self) -> str:
        return self._str(SOURCERPM)

    @property
    def payload_compressor(self) -> str:
        """As the header says ("gzip" when absent, as rpm assumes)."""
        return self._str(PAYLOADCOMPRESSOR) or "gzip"

    @property
    def payload_format(self) -> str:
        return self._str(PAYLOADFORMAT) or "cpio"

    @property
    def evr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch is not None else ""
        return f"{epoch}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def requires(self) -> list[str]:
        """Required capability names (rpmlib() ones included)."""
        return list(self.header.get(REQUIRENAME, []))

    @property
    def provides(self) -> list[str]:
        return list(self.header.get(PROVIDENAME, []))

    def __repr__(self) -> str:
        return f"RpmPackage({self.nevra})"

    # -- file list -----------------------------------------------------------

    @cached_property
    def _files(self) -> list[RpmFile]:
        try:
            return self._file_list()
        except (ValueError, IndexError, TypeError):
            raise BuildError(f"{self.path}: corrupt or unsafe file list in the header") from None

    def _file_list(self) -> list[RpmFile]:
        h = self.header
        if BASENAMES in h:
            dirs, idx = h.get(DIRNAMES, []), h.get(DIRINDEXES, [])
            paths = [dirs[i] + base for i, base in zip(idx, h[BASENAMES], strict=True)]
        else:
            paths = list(h.get(OLDFILENAMES, []))
        n = len(paths)

        def column(tag: int, default: Any) -> list[Any]:
            values = h.get(tag)
            return list(values) if isinstance(values, list) and len(values) == n else [default] * n

        sizes = column(LONGFILESIZES, 0) if LONGFILESIZES in h else column(FILESIZES, 0)
        return [RpmFile(_normalize(p), mode, size, link, flags, mtime)
                for p, mode, size, link, flags, mtime in zip(
                    paths, column(FILEMODES, 0), sizes, column(FILELINKTOS, ""),
                    column(FILEFLAGS, 0), column(FILEMTIMES, 0), strict=True)]

    def files(self) -> list[RpmFile]:
        """Every file the header lists, in header order (%ghost files included)."""
        return list(self._files)

    def glob(self, pattern: str) -> list[str]:
        """Sorted paths matching *pattern*; each `*`/`?`/`[..]` stays within one path component."""
        want = _normalize(pattern).split("/")
        out = []
        for f in self._files:
            parts = f.path.split("/")
            if len(parts) == len(want) and all(map(fnmatch.fnmatchcase, parts, want)):
                out.append(f.path)
        return sorted(out)

    # -- payload -------------------------------------------------------------

    @contextlib.contextmanager
    def _payload(self) -> Iterator[tuple[_Stream, _HashingFile]]:
        """The decompressed payload stream (decompressor chosen by magic, not by header)."""
        algo = _DIGEST_ALGOS.get(self._int(PAYLOADDIGESTALGO) or 8)
        with open(self.path, "rb") as f:
            f.seek(self.payload_offset)
            magic = f.read(6)
            f.seek(self.payload_offset)
            hashing = _HashingFile(f, algo if PAYLOADDIGEST in self.header else None)
            raw = io.BufferedReader(hashing, _CHUNK)
            dec: Any = compress.decompressing(raw, magic)  # type: ignore[arg-type]
            if dec is raw and magic not in _NEWC_MAGICS and magic != _STRIPPED_MAGIC:
                raise BuildError(f"{self.path}: unsupported payload compression "
                                 f"{self.payload_compressor!r} (magic {magic.hex()})")
            try:
                yield _Stream(dec, str(self.path.name)), hashing
            finally:
                dec.close()

    def _entries(self, stream: _Stream) -> Iterator[tuple[_Entry, _Reader]]:
        """Walk the cpio archive; the consumer may read each member's data through the reader."""
        if self.payload_format != "cpio":
            raise BuildError(f"{self.path}: unsupported payload format {self.payload_format!r}")
        files = self._files
        stripped_info: dict[int, tuple[int, int]] | None = None
        while True:
            stream.align()
            magic = stream.read_exact(6)
            if magic == _STRIPPED_MAGIC:
                if stripped_info is None:
                    stripped_info = self._stripped_layout()
                fx = _hex(stream.read_exact(8), self.path)
                stream.align()
                if fx >= len(files):
                    raise BuildError(f"{self.path}: payload names file #{fx}, header lists {len(files)}")
                f = files[fx]
                size, ino = stripped_info[fx]
                entry = _Entry(f.path, f.mode, size, 1 if ino < 0 else 2, ino, f.mtime)
            elif magic in _NEWC_MAGICS:
                fields = [_hex(stream.read_exact(8), self.path) for _ in range(13)]
                ino, mode, _uid, _gid, nlink, mtime, size = fields[:7]
                if fields[11] > _MAX_NAME or (stat.S_ISLNK(mode) and size > _MAX_NAME):
                    raise BuildError(f"{self.path}: corrupt payload (implausible name or link length)")
                name = stream.read_exact(fields[11]).rstrip(b"\0").decode("utf-8", "surrogateescape")
                stream.align()
                if name == _TRAILER:
                    return
                try:
                    path = _normalize(name)
                except ValueError:
                    raise BuildError(f"{self.path}: unsafe path {name!r} in payload") from None
                entry = _Entry(path, mode, size, nlink, ino, mtime)
            else:
                raise BuildError(f"{self.path}: corrupt payload (bad cpio magic {magic!r})")
            reader = _Reader(stream, entry.size)
            yield entry, reader
            stream.skip(reader.left)

    def _stripped_layout(self) -> dict[int, tuple[int, int]]:
        """For a stripped cpio: file index -> (bytes stored, hardlink group or -1).

        rpm >= 4.12 stores a regular file's data once per hardlink set, with the
        last member of the set in header order; a symlink stores its target.
        """
        files = self._files
        inodes = self.header.get(FILEINODES, [])
        devices = self.header.get(FILEDEVICES, [0] * len(files))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(files):
            if f.is_file and i < len(inodes):
                groups.setdefault((devices[i], inodes[i]), []).append(i)
        layout: dict[int, tuple[int, int]] = {}
        for i, f in enumerate(files):
            if f.is_symlink:
                layout[i] = (len(os.fsencode(f.linkto)), -1)
            elif f.is_file:
                group = groups.get((devices[i], inodes[i]), [i]) if i < len(inodes) else [i]
                ino = group[-1] if len(group) > 1 else -1
                layout[i] = (f.size if i == group[-1] else 0, ino)
            else:
                layout[i] = (0, -1)
        return layout

    def _check_payload_digest(self, stream: _Stream, hashing: _HashingFile) -> None:
        """Read the rest of the payload and compare with the header's PAYLOADDIGEST."""
        want = self.header.get(PAYLOADDIGEST)
        if not want or hashing.hash is None:
            return
        try:
            while stream.raw.read(_CHUNK):
                pass
        except _DECOMPRESS_ERRORS as exc:
            raise BuildError(f"{self.path}: corrupt payload ({exc})") from None
        while hashing.read(_CHUNK):
            pass
        if hashing.hash.hexdigest() != want[0]:
            raise BuildError(f"{self.path}: payload digest mismatch (corrupt or partly downloaded package)")

    def _requested(self, paths: Iterable[str] | None) -> set[str] | None:
        if paths is None:
            return None
        wanted = set()
        for p in paths:
            try:
                wanted.add(_normalize(p))
            except ValueError:
                raise BuildError(f"invalid path {p!r} requested from {self.nevra}") from None
        in_payload = {f.path for f in self._files if not f.is_ghost}
        for p in sorted(wanted):
            if p not in in_payload:
                raise BuildError(f"package {self.nevra} ({self.path.name}) has no file {p}")
        return wanted

    def extract(self, dest: Path, paths: Iterable[str] | None = None) -> list[Path]:
        """Extract every file, or only *paths* (exact names), under *dest*; return what was written.

        Directories are created as needed; modes are kept without set-id bits;
        symlinks are recreated, hardlinks linked; devices, fifos and sockets are skipped.
        A full extraction also checks the header's payload digest.
        """
        wanted = self._requested(paths)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if wanted == set():
            return []
        written: list[Path] = []
        found: set[str] = set()
        groups: dict[int, _LinkGroup] = {}
        try:
            self._extract(dest, wanted, found, written, groups)
        except OSError as exc:
            raise BuildError(f"package {self.nevra}: cannot extract into {dest}: {exc}") from None
        self._check_found(wanted, found)
        return written

    def _extract(self, dest: Path, wanted: set[str] | None, found: set[str], written: list[Path],
                 groups: dict[int, _LinkGroup]) -> None:
        with _SafeTree(dest, self) as tree, self._payload() as (stream, hashing):
            for entry, reader in self._entries(stream):
                is_wanted = wanted is None or entry.path in wanted
                fmt = stat.S_IFMT(entry.mode)
                if fmt == stat.S_IFREG and entry.nlink > 1:
                    group = groups.get(entry.ino)
                    if is_wanted or (group and entry.size > 0):
                        groups.setdefault(entry.ino, _LinkGroup()).add(tree, entry, reader, is_wanted)
                elif not is_wanted:
                    continue
                elif fmt == stat.S_IFREG:
                    tree.write_file(entry.path, entry.mode, reader, entry.mtime)
                elif fmt == stat.S_IFDIR:
                    tree.mkdir(entry.path, entry.mode, entry.mtime)
                elif fmt == stat.S_IFLNK:
                    target = reader.read().decode("utf-8", "surrogateescape")
                    tree.symlink(entry.path, target, entry.mtime)
                else:
                    log.debug("%s: skipping special file %s", self.path.name, entry.path)
                    continue
                if is_wanted:
                    found.add(entry.path)
                    written.append(dest / entry.path.lstrip("/"))
                if (wanted is not None and found >= wanted
                        and all(g.holder for g in groups.values())):
                    break
            else:
                self._check_payload_digest(stream, hashing)
            tree.finish()

    def _check_found(self, wanted: set[str] | None, found: set[str]) -> None:
        missing = sorted((wanted or set()) - found)
        if missing:
            raise BuildError(f"package {self.nevra} ({self.path.name}): {missing[0]} is listed "
                             f"in the header but missing from the payload")

    def extract_file(self, path: str) -> bytes:
        """The content of one (small) regular file, read into memory."""
        wanted = self._requested([path])
        assert wanted is not None
        target = next(iter(wanted))
        info = next(f for f in self._files if f.path == target)
        if not info.is_file:
            raise BuildError(f"package {self.nevra}: {target} is not a regular file")
        want_ino = None
        with self._payload() as (stream, _):
            for entry, reader in self._entries(stream):
                if entry.path == target:
                    if entry.size > 0 or entry.nlink <= 1 or info.size == 0:
                        return reader.read()
                    want_ino = entry.ino   # hardlink whose data comes with a later member
                elif want_ino is not None and entry.ino == want_ino and entry.size > 0:
                    return reader.read()
        self._check_found(wanted, set())
        return b""


class _LinkGroup:
    """The extracted members of one hardlink set; the data may come with any member."""

    def __init__(self) -> None:
        self.members: list[str] = []   # wanted paths, all linked to members[0]
        self.holder = False            # True once the data has been written

    def add(self, tree: _SafeTree, entry: _Entry, reader: _Reader, is_wanted: bool) -> None:
        if entry.size > 0 and not self.holder:
            target = entry.path if is_wanted else self.members[0]
            tree.write_file(target, entry.mode, reader, entry.mtime)
            for other in self.members:
                if other != target:
                    tree.hardlink(other, target)
            self.holder = True
            if is_wanted:
                self.members.insert(0, entry.path)
        elif self.members:
            tree.hardlink(entry.path, self.members[0])
            self.members.append(entry.path)
        else:   # first member, no data yet: an empty file the data may replace later
            tree.write_file(entry.path, entry.mode, reader, entry.mtime)
            self.members.append(entry.path)


def _hex(field: bytes, pkg: Path) -> int:
    try:
        return int(field, 16)
    except ValueError:
        raise BuildError(f"{pkg}: corrupt payload (bad cpio header field {field!r})") from None


class _SafeTree:
    """Writes under a root directory through directory fds, never following a symlink."""

    def __init__(self, root: Path, pkg: RpmPackage) -> None:
        self.root, self.pkg = root, pkg
        self.dirs: dict[str, tuple[int, int]] = {}   # path -> (mode, mtime), applied at finish()
        self.root_fd = -1

    def __enter__(self) -> _SafeTree:
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.root_fd)

    def _fail(self, path: str, why: str) -> BuildError:
        return BuildError(f"package {self.pkg.nevra}: cannot extract {path}: {why}")

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """(fd of the parent directory, last component), creating missing directories."""
        parts = _split(path)
        if not parts:
            raise self._fail(path, "empty path")
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts[:-1]):
                try:
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/" + "/".join(parts[:i + 1])
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    why = (f"{where} is a symlink (refusing to write through it)"
                           if stat.S_ISLNK(st.st_mode) else f"{where} is not a directory")
                    raise self._fail(path, why) from None
                os.close(fd)
                fd = nfd
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _clear(self, fd: int, name: str, path: str) -> None:
        """Remove what is at *name* (never following it); an empty directory is removed too."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                raise self._fail(path, "a non-empty directory is in the way") from None
        else:
            os.unlink(name, dir_fd=fd)

    def write_file(self, path: str, mode: int, reader: _Reader, mtime: int) -> None:
        with self._parent(path) as (pfd, name):
            self._clear(pfd, name, path)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
            try:
                with os.fdopen(os.dup(fd), "wb", buffering=0) as out:
                    while chunk := reader.read(_CHUNK):
                        out.write(chunk)
                os.fchmod(fd, stat.S_IMODE(mode) & 0o777)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def symlink(self, path: str, target: str, mtime: int) -> None:
        with self._parent(path) as (pfd, name):
            self._clear(pfd, name, path)
            os.symlink(target, name, dir_fd=pfd)
            os.utime(name, (mtime, mtime), dir_fd=pfd, follow_symlinks=False)

    def hardlink(self, path: str, existing: str) -> None:
        with self._parent(existing) as (sfd, sname), self._parent(path) as (dfd, dname):
            self._clear(dfd, dname, path)
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)

    def mkdir(self, path: str, mode: int, mtime: int) -> None:
        with self._parent(path) as (pfd, name):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=pfd)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=pfd)
        self.dirs[_normalize(path)] = (stat.S_IMODE(mode) & 0o1777, mtime)

    def finish(self) -> None:
        """Apply directory modes and times, deepest first (so writes above stay possible)."""
        for path in sorted(self.dirs, key=lambda p: (-p.count("/"), p)):
            mode, mtime = self.dirs[path]
            with self._parent(path) as (pfd, name):
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    os.fchmod(fd, mode)
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)
