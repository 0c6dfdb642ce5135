"""Master a staging tree into a bootable, hybrid, reproducible ISO with pycdlib.

The ISO carries three name spaces: ISO9660 level 3 (uppercase d-characters,
unique per directory, what isolinux reads), Rock Ridge 1.09 (the real names,
symlinks and modes, what Linux and GRUB read) and Joliet with names up to 103
characters like genisoimage ``-joliet-long`` (pycdlib caps them at 64; a small
subclass lifts that limit). Modes are normalised like ``genisoimage -r``:
everything readable, nothing writable, executable for all when executable for
anyone; owner 0.

El Torito: a no-emulation BIOS entry (load size 4, boot info table) plus an
EFI entry (platform 0xEF). The hybrid MBR/GPT comes from xcpimg.iso.hybrid.

Reproducible: pycdlib stamps every date from ``time.time()`` in local time;
the build runs under a frozen clock (the build epoch, in UTC) that is swapped
into pycdlib's modules only for the duration of the build. Directory walks are
sorted and the hybrid ids derive from the volume id.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.pycdlib
import pycdlib.utils
from pycdlib.dr import DirectoryRecord
from pycdlib.pycdlibexception import PyCdlibException

from .. import progress as progress_display
from ..errors import BuildError, UsageError
from ..fsutil import atomic_output, shown_path
from ..run import build_epoch
from . import hybrid

log = logging.getLogger("xcpimg.iso.master")

VOLID_MAX = 32
JOLIET_VOLID_MAX = 16
#: ISO9660 a-characters plus lowercase letters (what genisoimage -V is given in practice).
_VOLID_RE = re.compile(r"[A-Za-z0-9 _!\"%&'()*+,\-./:;<=>?]+")
JOLIET_MAX = 103
_ISO_FILE_MAX = 30  # name + extension, ISO9660 level 2/3
_ISO_DIR_MAX = 31
_ISO_EXT_MAX = 12  # keeps room for a unique stem
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")
_NOT_JOLIET = re.compile(r"[*/:;?\\\x00-\x1f]")
WRITE_BLOCKSIZE = 1 << 20


def check_volid(volid: str) -> None:
    """Refuse a volume id that is empty, longer than 32 characters or has odd characters."""
    if not volid:
        raise UsageError("volume id must not be empty")
    if len(volid) > VOLID_MAX:
        raise UsageError(f"volume id {volid!r} is {len(volid)} characters long (at most {VOLID_MAX})")
    if not _VOLID_RE.fullmatch(volid):
        bad = sorted({c for c in volid if not _VOLID_RE.fullmatch(c)})
        raise UsageError(f"volume id {volid!r} has invalid characters: {''.join(bad)!r} "
                         "(use letters, digits, space and _-.)")


# --- pycdlib adjustments -------------------------------------------------------------------------

class _FrozenTime:
    """Stands in for the ``time`` module inside pycdlib: a fixed clock, local time = UTC."""

    localtime = staticmethod(time.gmtime)
    gmtime = staticmethod(time.gmtime)

    def __init__(self, epoch: int) -> None:
        self._epoch = float(epoch)

    def time(self) -> float:
        return self._epoch

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


_PYCDLIB_MODULES: tuple[ModuleType, ...] = (pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates, pycdlib.utils)


@contextlib.contextmanager
def frozen_clock(epoch: int) -> Iterator[None]:
    """Make pycdlib see *epoch* as the current time and UTC as the local zone."""
    saved = {mod: mod.time for mod in _PYCDLIB_MODULES if getattr(mod, "time", None) is time}
    clock = _FrozenTime(epoch)
    try:
        for mod in saved:
            mod.time = clock  # type: ignore[attr-defined]
        yield
    finally:
        for mod, orig in saved.items():
            mod.time = orig  # type: ignore[attr-defined]


def _copy_in_kernel(data_length: int, blocksize: int, infp: Any, outfp: Any) -> Iterator[int]:
    """pycdlib's file-data copy done by the kernel (``copy_file_range``, no user-space buffers),
    with the same contract: yield the bytes done after each block; a short source ends it."""
    try:
        infd, outfd = infp.fileno(), outfp.fileno()
    except (AttributeError, OSError, ValueError):
        yield from _PYCDLIB_COPY(data_length, blocksize, infp, outfp)
        return
    outfp.flush()
    src, dst = infp.tell(), outfp.tell()
    left = data_length
    while left > 0:
        try:
            n = os.copy_file_range(infd, outfd, min(blocksize * 16, left), src, dst)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            infp.seek(src)  # another file system, or a kernel without it: copy the rest in user space
            outfp.seek(dst)
            yield from _PYCDLIB_COPY(left, blocksize, infp, outfp)
            return
        if n == 0:  # the file is shorter than it said: as pycdlib, stop quietly
            n = left
        src, dst, left = src + n, dst + n, left - n
        yield n
    infp.seek(src)
    outfp.seek(dst)


_PYCDLIB_COPY = pycdlib.utils.copy_data_yield


@contextlib.contextmanager
def kernel_copy() -> Iterator[None]:
    """Make pycdlib copy file data with ``copy_file_range`` while mastering."""
    if not hasattr(os, "copy_file_range"):  # pragma: no cover - Linux has it
        yield
        return
    pycdlib.utils.copy_data_yield = _copy_in_kernel  # type: ignore[assignment]
    try:
        yield
    finally:
        pycdlib.utils.copy_data_yield = _PYCDLIB_COPY


class _PyCdlib(pycdlib.PyCdlib):
    """pycdlib with Joliet names up to 103 characters (genisoimage -joliet-long)."""

    def _joliet_name_and_parent_from_path(self, joliet_path: bytes) -> tuple[bytes, DirectoryRecord]:
        *parents, name = pycdlib.utils.split_path(joliet_path)
        encoded = name.decode("utf-8").encode("utf-16_be")
        if len(encoded) > 2 * JOLIET_MAX:
            raise pycdlib.pycdlibexception.PyCdlibInvalidInput(
                f"Joliet names can be at most {JOLIET_MAX} characters")
        return encoded, self._find_joliet_record(b"/" + b"/".join(parents))


if not hasattr(pycdlib.PyCdlib, "_joliet_name_and_parent_from_path"):  # pragma: no cover
    raise ImportError("this pycdlib version lacks _joliet_name_and_parent_from_path; "
                      "xcpimg.iso.master needs updating")


# --- names ---------------------------------------------------------------------------------------

class _Names:
    """Per-directory unique ISO9660 and Joliet names for the real (Rock Ridge) names."""

    def __init__(self) -> None:
        self._taken: dict[tuple[str, str], set[str]] = {}

    def _unique(self, space: str, parent: str, make: object) -> str:
        taken = self._taken.setdefault((space, parent), set())
        for n in range(10000):
            name = make(n)  # type: ignore[operator]
            if name.upper() not in taken:
                taken.add(name.upper())
                return name
        raise BuildError(f"too many names clash in {parent or '/'}")

    def iso(self, parent: str, name: str, is_dir: bool) -> str:
        if is_dir:
            base = _NOT_D_CHAR.sub("_", name.upper()) or "_"
            return self._unique("iso", parent, lambda n: base[:_ISO_DIR_MAX - len(s := _sfx(n))] + s)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        stem = _NOT_D_CHAR.sub("_", stem.upper())
        ext = _NOT_D_CHAR.sub("_", ext.upper())[:_ISO_EXT_MAX]
        return self._unique("iso", parent, lambda n: (
            stem[:max(0, _ISO_FILE_MAX - len(ext) - len(s := _sfx(n)))] + s + "." + ext + ";1"))

    def joliet(self, parent: str, name: str) -> str:
        clean = _NOT_JOLIET.sub("_", name)
        stem, dot, ext = clean.rpartition(".")
        if not dot or not stem or len(ext) > 16:
            stem, dot, ext = clean, "", ""
        tail = dot + ext

        def make(n: int) -> str:
            sfx = f"~{n}" if n else ""
            if _utf16_len(clean) + len(sfx) <= JOLIET_MAX and not sfx:
                return clean
            room = JOLIET_MAX - _utf16_len(tail) - len(sfx)
            return _utf16_cut(stem, room) + sfx + tail
        return self._unique("joliet", parent, make)


def _sfx(n: int) -> str:
    return f"_{n}" if n else ""


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_cut(text: str, units: int) -> str:
    while _utf16_len(text) > units:
        text = text[:-1]
    return text


# --- the tree ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    parent: str  # directory relative to the tree root, "" for the root ("boot/isolinux")
    name: str
    path: str  # on the host
    kind: str  # "dir", "file" or "symlink"
    mode: int = 0
    target: str = ""  # symlink target

    @property
    def rel(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name


def _walk(tree: Path, skip: set[str]) -> Iterator[_Entry]:
    """Every entry under *tree*, parents before children, names sorted."""
    def walk(directory: str, rel: str) -> Iterator[_Entry]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(f"cannot read directory {directory}: {exc.strerror}") from None
        for entry in entries:
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                raise BuildError(f"file name is not valid UTF-8: {os.fsencode(entry.path)!r}") from None
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if sub in skip:
                log.info("not mastering %s: the boot catalog takes its place", sub)
                continue
            path = entry.path
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                yield _Entry(rel, entry.name, path, "symlink", target=os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                if not os.access(path, os.R_OK | os.X_OK):
                    raise BuildError(f"cannot read directory {path}: permission denied")
                yield _Entry(rel, entry.name, path, "dir", mode=stat.S_IFDIR | 0o555)
                yield from walk(path, sub)
            elif stat.S_ISREG(st.st_mode):
                if not os.access(path, os.R_OK):
                    raise BuildError(f"cannot read {path}: permission denied")
                executable = 0o111 if st.st_mode & 0o111 else 0
                yield _Entry(rel, entry.name, path, "file", mode=stat.S_IFREG | 0o444 | executable)
            else:
                raise BuildError(f"cannot put {path} on an ISO: not a regular file, directory or symlink")
    yield from walk(str(tree), "")


# --- mastering -----------------------------------------------------------------------------------

def _tree_path(rel: str) -> str:
    """Normalise a path inside the tree ("/boot//efiboot.img" -> "boot/efiboot.img")."""
    return str(PurePosixPath("/", rel).relative_to("/"))


def _require_file(tree: Path, rel: str, what: str) -> str:
    path = _tree_path(rel)
    full = tree / path
    if full.is_symlink() or not full.is_file():
        raise BuildError(f"{what} {rel} not found in {tree}")
    return path


def master_iso(tree: Path, output: Path, volid: str, *,
               bios_boot: str = "boot/isolinux/isolinux.bin",
               boot_catalog: str = "boot/isolinux/boot.cat",
               efi_image: str | None = "boot/efiboot.img",
               isohdpfx: bytes | None = None,
               epoch: int | None = None,
               progress: bool = False) -> None:
    """Master *tree* into the ISO *output* (written atomically, replacing any existing file).

    *bios_boot*, *boot_catalog* and *efi_image* are paths inside the tree
    (*efi_image* None: BIOS only). *isohdpfx*: the bytes of syslinux's
    isohdpfx.bin to make the image hybrid (None: a plain ISO). *epoch*: the
    time every date is set to (default: the build epoch).
    """
    check_volid(volid)
    tree = Path(tree)
    if not tree.is_dir():
        raise BuildError(f"ISO tree {tree} is not a directory")
    bios = _require_file(tree, bios_boot, "BIOS boot image")
    efi = _require_file(tree, efi_image, "EFI boot image") if efi_image else None
    catalog = _tree_path(boot_catalog)
    if not (tree / catalog).parent.is_dir():
        raise BuildError(f"directory of the boot catalog {boot_catalog} not found in {tree}")
    if isohdpfx is not None and len(isohdpfx) < hybrid.MBR_CODE_SIZE:
        raise BuildError(f"MBR boot code is {len(isohdpfx)} bytes, expected the {hybrid.MBR_CODE_SIZE}+ "
                         "bytes of isohdpfx.bin")
    efi_sectors = math.ceil((tree / efi).stat().st_size / 512) if efi else 0
    if efi_sectors > 0xFFFF:
        raise BuildError(f"EFI boot image {efi_image} is larger than 32 MiB (El Torito limit)")
    epoch = build_epoch() if epoch is None else epoch
    bars: list[Any] = []
    shown = progress and progress_display.enabled()

    def show(done: int, total: int, _opaque: object) -> None:  # pycdlib counts the arguments
        if not bars:  # made once the size is known
            bars.append(progress_display.bar(f"mastering {Path(shown_path(output)).name}", total >> 20,
                                             unit="MiB", leave=True,
                                             bar_format="{desc}: {percentage:3.0f}% ({n}/{total} MiB)"))
        bars[0].update((done >> 20) - bars[0].n)

    with atomic_output(Path(output), force=True) as tmp, frozen_clock(epoch):
        iso = _PyCdlib()
        try:
            _build(iso, tree, volid, bios, catalog, efi, efi_sectors)
            # the file exists (empty): opened without truncation, or ext4 flushes it on close
            with open(tmp, "r+b") as out, kernel_copy():
                iso.write_fp(out, blocksize=WRITE_BLOCKSIZE, progress_cb=show if shown else None)
        except PyCdlibException as exc:
            raise BuildError(f"cannot master {shown_path(output)}: {exc}") from None
        except OSError as exc:
            where = f" ({shown_path(exc.filename)})" if exc.filename else ""
            raise BuildError(f"cannot master {shown_path(output)}: {exc.strerror or exc}{where}") from None
        finally:
            for b in bars:
                b.close()
            with contextlib.suppress(PyCdlibException):
                iso.close()
        if isohdpfx is not None:
            hybrid.make_hybrid(tmp, isohdpfx, volid, uefi=efi is not None)
    log.info("mastered %s (%d MiB)", shown_path(output), Path(output).stat().st_size >> 20)


def _build(iso: _PyCdlib, tree: Path, volid: str, bios: str, catalog: str, efi: str | None,
           efi_sectors: int) -> None:
    """Fill *iso* with the tree and the El Torito entries."""
    # The Joliet volume id holds 16 UCS-2 characters: pycdlib gives it the PVD's, so start
    # from the cut one (as genisoimage cuts it) and put the whole id in the PVD.
    iso.new(interchange_level=3, sys_ident="LINUX", vol_ident=volid[:JOLIET_VOLID_MAX],
            app_ident_str="XCPIMG", joliet=3, rock_ridge="1.09")
    iso.pvd.volume_identifier = volid.encode("ascii").ljust(VOLID_MAX)
    names = _Names()
    iso_of: dict[str, str] = {"": ""}  # tree path -> ISO9660 path
    joliet_of: dict[str, str] = {"": ""}  # tree path -> Joliet path

    def place(parent: str, name: str, is_dir: bool) -> tuple[str, str]:
        parent_iso, parent_joliet = iso_of[parent], joliet_of[parent]
        iso_path = f"{parent_iso}/{names.iso(parent_iso, name, is_dir)}"
        joliet_path = f"{parent_joliet}/{names.joliet(parent_joliet, name)}"
        rel = f"{parent}/{name}" if parent else name
        iso_of[rel], joliet_of[rel] = iso_path, joliet_path
        return iso_path, joliet_path

    for entry in _walk(tree, {catalog}):
        if entry.kind == "dir":
            iso_path, joliet_path = place(entry.parent, entry.name, True)
            iso.add_directory(iso_path=iso_path, rr_name=entry.name, joliet_path=joliet_path,
                              file_mode=entry.mode)
        elif entry.kind == "file":
            iso_path, joliet_path = place(entry.parent, entry.name, False)
            iso.add_file(entry.path, iso_path=iso_path, rr_name=entry.name, joliet_path=joliet_path,
                         file_mode=entry.mode)
        else:  # symlinks exist in Rock Ridge only, as with genisoimage -r -J
            parent_iso = iso_of[entry.parent]
            iso_path = f"{parent_iso}/{names.iso(parent_iso, entry.name, False)}"
            iso.add_symlink(symlink_path=iso_path, rr_symlink_name=entry.name, rr_path=entry.target)

    for rel in (bios, efi):
        if rel is not None and rel not in iso_of:
            raise BuildError(f"boot image {rel} is not a regular file of the tree (symlinked directory?)")
    cat_parent, _, cat_name = catalog.rpartition("/")
    cat_iso, cat_joliet = place(cat_parent, cat_name, False)
    iso.add_eltorito(iso_of[bios], bootcatfile=cat_iso, rr_bootcatname=cat_name,
                     joliet_bootcatfile=cat_joliet, boot_load_size=4, boot_info_table=True)
    if efi is not None:
        iso.add_eltorito(iso_of[efi], efi=True, boot_load_size=efi_sectors)
