"""What a PXE tree holds: the options, the ISO files placed in the tree, and path rules.

Boot files go under the prefix with ``/boot/`` dropped from their ISO path
(``/boot/xen.gz`` -> ``xcp-ng/xen.gz``, ``/boot/alt/vmlinuz`` -> ``xcp-ng/alt/vmlinuz``);
no tree path has an empty, ``.`` or ``..`` component, whatever a loader config says.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError, UsageError
from ..media import menus
from ..media.answerfile import GPG_WORDS
from ..media.reader import IsoReader

log = logging.getLogger("xcpimg.pxe")

#: the network boot program of each firmware, relative to the tree's root
BOOTFILES = {"bios": "pxelinux.0", "uefi": "EFI/xenserver/grubx64.efi"}
DEFAULT_PREFIX = "xcp-ng"
#: where an ISO keeps its BIOS loader config and pxelinux files, in the order looked at
ISOLINUX_CFGS = ("/boot/isolinux/isolinux.cfg", "/isolinux/isolinux.cfg", "/isolinux.cfg")
PXELINUX_DIRS = ("/boot/pxelinux", "/pxelinux", "/boot/isolinux", "/isolinux")
GRUB_DIR = "/EFI/xenserver"
TREEINFO = "/.treeinfo"
#: syslinux modules a PXE root always gets when the ISO has them (the docs list them)
SYSLINUX_MODULES = ("ldlinux.c32", "libcom32.c32", "libutil.c32", "mboot.c32", "menu.c32")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_URL_RE = re.compile(r"(?:https?|ftp|nfs|file)://\S+")


@dataclass(frozen=True)
class PxeOptions:
    """What `xcpimg pxe-tree` was asked for."""

    iso: Path
    dest: Path | None = None
    prefix: str = DEFAULT_PREFIX
    answerfile: str | None = None
    bootargs: str = ""
    force: bool = False

    def check(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix) or any(p in (".", "..") for p in self.prefix.split("/")):
            raise UsageError(f"--prefix must be a relative path of plain names, got {self.prefix!r}")
        if self.prefix.split("/")[0] in ("EFI", "pxelinux.cfg"):
            raise UsageError(f"--prefix {self.prefix!r} collides with the loaders' own directories")
        if self.answerfile is not None and not _URL_RE.fullmatch(self.answerfile):
            raise UsageError(f"--answerfile must be an http(s), ftp, nfs or file URL, got {self.answerfile!r}")
        if "---" in self.bootargs.split() or any(c in self.bootargs for c in "\n\r\"'"):
            raise UsageError(f"--bootargs must be plain kernel arguments, got {self.bootargs!r}")

    @property
    def extra_dom0_words(self) -> list[str]:
        """Words added to the dom0 kernel of every installer entry."""
        words = self.bootargs.split()
        if self.answerfile:
            words += [f"answerfile={self.answerfile}", "install"]
        return words


def edit_kernel_args(text: str, options: PxeOptions) -> str:
    """A generated menu with the requested words right after the dom0 kernel of every
    installer line, by the same edit as the ISO build and unattended media (media.menus);
    with an answerfile, the gpg-check words the installer would refuse are dropped."""
    if options.answerfile:
        text, removed = menus.remove_kernel_words(text, set(GPG_WORDS))
        if removed:
            log.warning("pxe-tree: dropped %s (with an answerfile, set %s=\"false\" on its root element "
                        "instead)", " ".join(sorted(removed)), "/".join(GPG_WORDS[w] for w in sorted(removed)))
    return menus.add_kernel_args(text, " ".join(options.extra_dom0_words))


class IsoFiles:
    """The regular files of an open ISO by path (``/boot/xen.gz``): exact, else case-insensitive
    (plain ISO 9660 names are upper case). A link is refused, never followed."""

    def __init__(self, reader: IsoReader) -> None:
        self.reader = reader
        self.path = reader.path
        self._kinds = {"/" + p: node.kind for p, node in reader.nodes().items()}
        self._folded: dict[str, str] = {}
        for p in self._kinds:
            self._folded.setdefault(p.casefold(), p)

    def find(self, path: str) -> str | None:
        """The ISO's spelling of *path* when it is a file there, else None."""
        path = posixpath.normpath("/" + path.lstrip("/"))
        found = path if path in self._kinds else self._folded.get(path.casefold())
        if found is not None and self._kinds[found] == "symlink":
            raise BuildError(f"{self.path}: {found} is a symbolic link (not followed)")
        return found if found is not None and self._kinds[found] == "file" else None

    def is_file(self, path: str) -> bool:
        return self.find(path) is not None

    def files(self) -> list[str]:
        return sorted(p for p, kind in self._kinds.items() if kind == "file")

    def size(self, path: str) -> int:
        return self.reader.files()[self._need(path).lstrip("/")].size

    def read(self, path: str) -> bytes:
        return self.reader.read(self._need(path))

    def copy(self, path: str, dest: Path) -> None:
        """Write the ISO file *path* to *dest* (parents created)."""
        found = self._need(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            self.reader.copy_to(found, out)

    def _need(self, path: str) -> str:
        found = self.find(path)
        if found is None:
            raise BuildError(f"{self.path}: no file {path}")
        return found


@dataclass
class Plan:
    """ISO files to copy into the tree (tree path -> ISO path), and what went wrong."""

    iso: IsoFiles
    prefix: str
    files: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def place(self, iso_path: str, tree_path: str) -> str:
        """Copy *iso_path* to *tree_path*; returns *tree_path* (also when the ISO lacks it)."""
        if any(part in ("", ".", "..") for part in tree_path.split("/")):
            raise BuildError(f"{self.iso.path}: {iso_path} cannot be placed in the tree as {tree_path!r}")
        found = self.iso.find(iso_path)
        if found is None:
            if iso_path not in self.missing:
                self.missing.append(iso_path)
            return tree_path
        other = self.files.get(tree_path)
        if other is not None and other != found:
            raise BuildError(f"{found} and {other} would both be {tree_path} in the PXE tree")
        self.files[tree_path] = found
        return tree_path

    def boot_file(self, iso_path: str) -> str:
        """Place a boot file under the prefix, without ``/boot/``; returns its tree path."""
        iso_path = posixpath.normpath("/" + iso_path.lstrip("/"))
        parts = [p for p in iso_path.split("/") if p]
        if len(parts) > 1 and parts[0] == "boot":
            parts = parts[1:]
        return self.place(iso_path, "/".join([self.prefix, *parts]))


def resolve(path: str, base: str) -> str:
    """An ISO path for *path* as a loader config in directory *base* names it."""
    path = re.sub(r"^\([^)]*\)", "", path)  # GRUB device: (cd0)/boot/x, ($root)/x
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(base, path))
