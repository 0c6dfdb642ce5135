"""`xcpimg pxe-tree`: a network boot tree (a TFTP/HTTP root) made from an ISO.

The layout follows the XCP-ng documentation (REFERENCE 4.4). BIOS: ``pxelinux.0`` and the
syslinux modules at the root, ``pxelinux.cfg/default`` generated from the ISO's own
``isolinux.cfg`` (same labels and arguments, file paths rewritten into the prefix). UEFI:
``EFI/xenserver/grubx64.efi`` and an ``EFI/xenserver/grub.cfg`` generated from the ISO's
grub.cfg (paths rewritten, CD root searches dropped: over TFTP, GRUB's root already is the
server). Boot files (Xen, the dom0 kernels, install.img, memtest, ``.treeinfo``) go under
the prefix: ``/boot/`` is dropped from their ISO path (``/boot/xen.gz`` ->
``xcp-ng/xen.gz``, ``/boot/alt/vmlinuz`` -> ``xcp-ng/alt/vmlinuz``).

Any ISO 9660 image is read (pycdlib; Rock Ridge, else Joliet, else plain names), not only
ones xcpimg built. The tree is written beside DEST and published in one step, never over
an existing DEST unless ``--force-overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pycdlib
from pycdlib.dr import DirectoryRecord
from pycdlib.pycdlibexception import PyCdlibException

from .errors import BuildError, UsageError
from .fsutil import remove_tree
from .run import build_epoch

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
#: installer words an answerfile replaces (the installer refuses them with one: REFERENCE 4.5)
GPGCHECK_WORDS = ("no-repo-gpgcheck", "no-gpgcheck")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_URL_RE = re.compile(r"(?:https?|ftp|nfs|file)://\S+")
_CHUNK = 1 << 20


# -- reading an ISO ----------------------------------------------------------------------

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

    def _record(self, path: str) -> object:
        found = self.find(path)
        if found is None:
            raise BuildError(f"{self.path}: no file {path}")
        record = self._iso.get_record(**{self._kind: self._names[found]})
        if isinstance(record, DirectoryRecord) and record.rock_ridge is not None \
                and record.rock_ridge.is_symlink():
            raise BuildError(f"{self.path}: {path} is a symbolic link (not followed)")
        return record

    def size(self, path: str) -> int:
        return int(self._record(path).get_data_length())  # type: ignore[attr-defined]

    def read(self, path: str) -> bytes:
        self._record(path)
        found = self.find(path)
        assert found is not None
        import io
        buf = io.BytesIO()
        self._iso.get_file_from_iso_fp(buf, **{self._kind: self._names[found]})
        return buf.getvalue()

    def copy(self, path: str, dest: Path) -> None:
        """Write the ISO file *path* to *dest* (parents created)."""
        self._record(path)
        found = self.find(path)
        assert found is not None
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            self._iso.get_file_from_iso_fp(out, blocksize=_CHUNK, **{self._kind: self._names[found]})


# -- the plan: which ISO file goes where -------------------------------------------------

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


@dataclass
class Plan:
    """ISO files to copy into the tree (tree path -> ISO path), and what went wrong."""

    iso: IsoReader
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


def _resolve(path: str, base: str) -> str:
    """An ISO path for *path* as a loader config in directory *base* names it."""
    path = re.sub(r"^\([^)]*\)", "", path)  # GRUB device: (cd0)/boot/x, ($root)/x
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(base, path))


def _dom0_words(words: list[str], options: PxeOptions) -> list[str]:
    """The dom0 kernel's arguments with the requested words added (gpgcheck words dropped
    when an answerfile is given: they belong on its root element then)."""
    if options.answerfile:
        dropped = [w for w in words if w in GPGCHECK_WORDS]
        if dropped:
            log.warning("pxe-tree: dropped %s (with an answerfile, set repo-gpgcheck/gpgcheck=\"false\" "
                        "on its root element instead)", " ".join(dict.fromkeys(dropped)))
        words = [w for w in words if w not in GPGCHECK_WORDS]
    return words + [w for w in options.extra_dom0_words if w not in words]


# -- BIOS: pxelinux.cfg/default from isolinux.cfg ----------------------------------------

_SYSLINUX_FILE_KEYS = {"display", "font", "kbdmap"} | {f"f{i}" for i in range(1, 13)}


def _module(plan: Plan, name: str, cfg_dir: str) -> str:
    """Place a syslinux module at the tree root; returns the name pxelinux loads it by."""
    base = posixpath.basename(name)
    for directory in (*PXELINUX_DIRS, cfg_dir):
        if plan.iso.is_file(f"{directory}/{base}"):
            return plan.place(f"{directory}/{base}", base)
    return plan.place(_resolve(name, cfg_dir), base)


def _display_file(plan: Plan, iso_path: str, tree: dict[str, bytes], cfg_dir: str) -> str:
    """Place a DISPLAY/Fn text file, rewriting the ``^X`` image names inside it."""
    target = plan.boot_file(iso_path)
    found = plan.iso.find(iso_path)
    if found is not None:
        text = plan.iso.read(found)

        def image(m: re.Match[bytes]) -> bytes:
            return b"\x18" + plan.boot_file(_resolve(m.group(1).decode("latin-1"), cfg_dir)).encode()
        tree[target] = re.sub(rb"\x18([^\s\x00-\x1f]+)", image, text)
        plan.files.pop(target, None)
    return target


def pxelinux_config(plan: Plan, cfg_path: str, options: PxeOptions, extra: dict[str, bytes]) -> str:
    """``pxelinux.cfg/default`` for the ISO's isolinux config at *cfg_path*."""
    cfg_dir = posixpath.dirname(cfg_path)
    text = plan.iso.read(cfg_path).decode("utf-8", errors="replace")
    out = [f"# Made by xcpimg pxe-tree from {options.iso.name}:{cfg_path}; paths are relative",
           "# to the directory of pxelinux.0, boot files live in its prefix directory."]
    kernel = ""
    for line in text.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        words = line.split()
        key = words[0].lower() if words else ""
        args = words[1:]
        if key == "label":
            kernel = ""
        elif key in ("kernel", "linux", "com32") and args:
            kernel = posixpath.basename(args[0]).lower()
            path = _module(plan, args[0], cfg_dir) if kernel.endswith(".c32") \
                else plan.boot_file(_resolve(args[0], cfg_dir))
            line = f"{indent}{words[0]} {path} {' '.join(args[1:])}".rstrip()
        elif key in ("ui", "default") and args and args[0].lower().endswith(".c32"):
            line = f"{indent}{words[0]} {_module(plan, args[0], cfg_dir)} {' '.join(args[1:])}".rstrip()
        elif key == "menu" and len(args) >= 2 and args[0].lower() == "background":
            line = f"{indent}{words[0]} {args[0]} {plan.boot_file(_resolve(args[1], cfg_dir))}"
        elif key in _SYSLINUX_FILE_KEYS and args:
            path = _display_file(plan, _resolve(args[0], cfg_dir), extra, cfg_dir) if key != "kbdmap" \
                and key != "font" else plan.boot_file(_resolve(args[0], cfg_dir))
            line = f"{indent}{words[0]} {path}"
        elif key == "initrd" and args:
            line = f"{indent}{words[0]} " + ",".join(plan.boot_file(_resolve(p, cfg_dir))
                                                   for p in args[0].split(","))
        elif key == "append" and args:
            line = f"{indent}{words[0]} {_append(plan, kernel, args, cfg_dir, options)}"
        elif key in ("include", "config") or (key == "menu" and args[:1] == ["include"]):
            log.warning("pxe-tree: %s: %r is not supported in a generated config; left out", cfg_path, line.strip())
            line = f"{indent}# (left out by xcpimg pxe-tree) {line.strip()}"
        out.append(line)
    return "\n".join(out) + "\n"


def _append(plan: Plan, kernel: str, args: list[str], cfg_dir: str, options: PxeOptions) -> str:
    if kernel == "mboot.c32":  # Xen --- dom0 kernel --- modules: each segment starts with a file
        segments: list[list[str]] = [[]]
        for word in args:
            if word == "---":
                segments.append([])
            else:
                segments[-1].append(word)
        for i, seg in enumerate(segments):
            if seg:
                seg[0] = plan.boot_file(_resolve(seg[0], cfg_dir))
            if i == 1 and len(segments) > 1:
                segments[i] = seg[:1] + _dom0_words(seg[1:], options)
        return " --- ".join(" ".join(seg) for seg in segments)
    out = []
    for word in args:
        if word.startswith("initrd="):
            word = "initrd=" + ",".join(plan.boot_file(_resolve(p, cfg_dir)) for p in word[7:].split(","))
        out.append(word)
    return " ".join(out)


# -- UEFI: EFI/xenserver/grub.cfg --------------------------------------------------------

_GRUB_LOADERS = {"multiboot2", "multiboot", "module2", "module", "linux", "linuxefi", "linux16",
                 "initrd", "initrdefi", "initrd16", "chainloader"}


def grub_config(plan: Plan, cfg_path: str, options: PxeOptions) -> str:
    """The ISO's grub.cfg for a TFTP root: file paths under ``/<prefix>``, CD root searches
    and ``set root=`` dropped, the requested words on each Xen entry's dom0 kernel."""
    text = plan.iso.read(cfg_path).decode("utf-8", errors="replace")
    out = [f"# Made by xcpimg pxe-tree from {options.iso.name}:{cfg_path} for a network boot:",
           "# GRUB's root is the TFTP server it was loaded from; boot files are under the prefix."]
    dom0_next = False
    for line in text.splitlines():
        indent = line[:len(line) - len(line.lstrip())]
        words = line.split()
        cmd = words[0] if words else ""
        if cmd == "menuentry" or cmd == "}":
            dom0_next = False
        if cmd == "search" or re.match(r"set\s+root=", line.strip()):
            out.append(f"{indent}# (dropped by xcpimg pxe-tree: the root is the TFTP server) {line.strip()}")
            continue
        if cmd in _GRUB_LOADERS and len(words) > 1:
            opts = [w for w in words[1:] if w.startswith("--")]
            rest = words[1 + len(opts):]
            if rest:
                if "$" in rest[0]:
                    log.warning("pxe-tree: %s: cannot rewrite %r (a variable in the path)", cfg_path, rest[0])
                else:
                    files = rest if cmd.startswith("initrd") else rest[:1]
                    new = ["/" + plan.boot_file(_resolve(p, "/")) for p in files]
                    rest = new + rest[len(files):]
                if cmd in ("module2", "module") and dom0_next:
                    rest = rest[:1] + _dom0_words(rest[1:], options)
                    dom0_next = False
                line = indent + " ".join([cmd, *opts, *rest])
            if cmd in ("multiboot2", "multiboot"):
                dom0_next = True
        out.append(line)
    return "\n".join(out) + "\n"


# -- the tree ----------------------------------------------------------------------------

def _bios_part(plan: Plan, options: PxeOptions, generated: dict[str, bytes]) -> bool:
    cfg = next((c for c in ISOLINUX_CFGS if plan.iso.is_file(c)), None)
    loader = next((f"{d}/pxelinux.0" for d in PXELINUX_DIRS if plan.iso.is_file(f"{d}/pxelinux.0")), None)
    if cfg is None or loader is None:
        log.warning("pxe-tree: %s has no %s: no BIOS (pxelinux) boot in the tree", options.iso,
                    "isolinux.cfg" if cfg is None else "pxelinux.0")
        return False
    plan.place(loader, "pxelinux.0")
    loader_dir = posixpath.dirname(loader)
    for name in SYSLINUX_MODULES:
        if plan.iso.is_file(f"{loader_dir}/{name}"):
            plan.place(f"{loader_dir}/{name}", name)
        elif plan.iso.is_file(f"{posixpath.dirname(cfg)}/{name}"):
            plan.place(f"{posixpath.dirname(cfg)}/{name}", name)
    generated["pxelinux.cfg/default"] = pxelinux_config(plan, cfg, options, generated).encode()
    return True


def _uefi_part(plan: Plan, options: PxeOptions, generated: dict[str, bytes]) -> bool:
    cfg, loader = f"{GRUB_DIR}/grub.cfg", f"{GRUB_DIR}/grubx64.efi"
    if not (plan.iso.is_file(cfg) and plan.iso.is_file(loader)):
        log.warning("pxe-tree: %s has no %s: no UEFI (GRUB) boot in the tree", options.iso,
                    cfg if not plan.iso.is_file(cfg) else loader)
        return False
    for path in plan.iso.files():  # the GRUB image and whatever it keeps beside it (modules, fonts)
        if path.startswith(GRUB_DIR + "/") and path.casefold() != cfg.casefold():
            plan.place(path, path.lstrip("/"))
    generated[cfg.lstrip("/")] = grub_config(plan, cfg, options).encode()
    return True


def build_tree(options: PxeOptions, root: Path) -> Path:
    """Write the PXE tree for *options* into the new directory *root* (returns *root*)."""
    options.check()
    root.mkdir(mode=0o755)
    with IsoReader(options.iso) as iso:
        plan = Plan(iso, options.prefix)
        generated: dict[str, bytes] = {}
        bios = _bios_part(plan, options, generated)
        uefi = _uefi_part(plan, options, generated)
        if not (bios or uefi):
            raise BuildError(f"{options.iso}: neither isolinux.cfg with pxelinux.0 nor {GRUB_DIR}/grub.cfg "
                             "with grubx64.efi: nothing to network-boot")
        if iso.is_file(TREEINFO):
            plan.place(TREEINFO, f"{options.prefix}/.treeinfo")
        for missing in plan.missing:
            log.warning("pxe-tree: %s names %s, which the ISO does not have", options.iso.name, missing)
        for tree_path, iso_path in sorted(plan.files.items()):
            iso.copy(iso_path, root / tree_path)
    for tree_path, data in sorted(generated.items()):
        (root / tree_path).parent.mkdir(parents=True, exist_ok=True)
        (root / tree_path).write_bytes(data)
    _normalise(root)
    return root


def _normalise(root: Path) -> None:
    """Modes a server can serve (0755 dirs, 0644 files) and every mtime at the build epoch."""
    epoch = build_epoch()
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch))
    root.chmod(0o755)
    os.utime(root, (epoch, epoch))


# -- publishing --------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(dst))


def publish_tree(tmp: Path, dest: Path, force: bool) -> None:
    """Move the finished tree *tmp* to *dest* in one step: never onto an existing *dest*
    unless *force*, and then by an atomic exchange (the old tree is never half gone), after
    which the old tree is removed."""
    try:
        _renameat2(tmp, dest, _RENAME_NOREPLACE)
        return
    except FileExistsError:
        if not force:
            raise UsageError(f"output {dest} already exists (use --force-overwrite to replace it)") from None
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        if dest.exists() or dest.is_symlink():  # a file system without renameat2 flags
            if not force:
                raise UsageError(f"output {dest} already exists (use --force-overwrite to replace it)") from None
        else:
            os.rename(tmp, dest)
            return
    _renameat2(tmp, dest, _RENAME_EXCHANGE)
    remove_tree(tmp)


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A hidden scratch path beside *dest* (same file system), removed unless published."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        yield scratch
    finally:
        remove_tree(scratch)


def make_pxe_tree(options: PxeOptions) -> Path:
    """Write the PXE tree of *options* at ``options.dest``; returns it."""
    options.check()
    dest = options.dest
    if dest is None:
        raise UsageError("no destination for the PXE tree")
    if not options.iso.is_file():
        raise UsageError(f"ISO not found: {options.iso}")
    if (dest.exists() or dest.is_symlink()) and not options.force:
        raise UsageError(f"output {dest} already exists (use --force-overwrite to replace it)")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"directory of output {dest} does not exist")
    with _staging(dest) as scratch:
        tree = build_tree(options, scratch / "tree")
        publish_tree(tree, dest, options.force)
    return dest


# -- CLI ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("iso", type=Path, metavar="ISO", help="installation ISO (any, not only xcpimg's)")
    parser.add_argument("dest", type=Path, metavar="DEST", help="directory to create: the TFTP/HTTP root")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help=f"directory of the boot files inside DEST (default {DEFAULT_PREFIX})")
    parser.add_argument("--answerfile", metavar="URL",
                        help="unattended install: add 'answerfile=URL install' to every installer entry")
    parser.add_argument("--bootargs", default="", metavar='"ARGS"',
                        help="more dom0 kernel arguments for every installer entry")
    parser.add_argument("--force-overwrite", action="store_true", help="replace an existing DEST")


def command(args: argparse.Namespace) -> int:
    options = PxeOptions(iso=args.iso, dest=args.dest, prefix=args.prefix, answerfile=args.answerfile,
                         bootargs=args.bootargs, force=args.force_overwrite)
    dest = make_pxe_tree(options)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    print(f"wrote {dest} ({len(files)} files): DHCP boot file {BOOTFILES['bios']} (BIOS), "
          f"{BOOTFILES['uefi']} (UEFI)")
    return 0
