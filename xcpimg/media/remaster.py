"""`xcpimg remaster`: rebuild an existing ISO with changes, keeping its boot layout.

The tree is extracted (Rock Ridge names, links kept as links), changed
(``--install-img``, ``--bootargs`` on every installer entry of isolinux.cfg, the
``EFI/*/grub*.cfg`` files and the GRUB configurations inside efiboot.img,
``--answerfile``, ``--add FILE:DEST``) and mastered again by xcpimg.iso.master
with the source's El Torito BIOS and EFI images and boot catalog, and its MBR
boot code for the hybrid MBR/GPT. Same inputs and SOURCE_DATE_EPOCH: same bytes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import BuildError, UsageError
from ..fsutil import check_output_path, private_tempdir
from ..iso import master
from ..run import build_epoch, run
from . import answerfile, layout, menus
from .inspect import MTOOLS_ENV, efiboot_cfgs
from .reader import IsoReader

log = logging.getLogger("xcpimg.remaster")

MBR_CODE = 432


@dataclass
class RemasterOptions:
    source: Path
    output: Path
    answerfile: Path | None = None
    bootargs: str = ""
    install_img: Path | None = None
    add: list[tuple[Path, str]] = field(default_factory=list)
    volid: str | None = None
    force: bool = False


def parse_add(value: str) -> tuple[Path, str]:
    """``FILE:DEST``: an existing regular file and a path inside the tree (``/`` = the ISO root)."""
    src, sep, dest = value.rpartition(":")
    if not sep or not src or not dest:
        raise UsageError(f"--add expects FILE:DEST, got {value!r}")
    path = Path(src)
    if not path.is_file():
        raise UsageError(f"--add {value}: {src} is not a file")
    return path, tree_path(dest, f"--add {value}")


def tree_path(dest: str, what: str) -> str:
    """*dest* as a path relative to the tree root; UsageError when it would leave the tree."""
    parts = [p for p in PurePosixPath(dest).parts if p not in ("/", ".")]
    if not parts or ".." in parts or "\0" in dest:
        raise UsageError(f"{what}: destination {dest!r} is outside the ISO tree")
    return "/".join(parts)


@dataclass
class Source:
    """What the remaster keeps from the source ISO."""

    volid: str
    bios: str
    catalog: str
    efi: str | None
    mbr_code: bytes | None


def read_source(iso: IsoReader) -> Source:
    """The boot layout to keep; UsageError for an ISO that is not isolinux-bootable media."""
    lay = layout.read_layout(iso.path)
    bios = lay.bios
    if not iso.exists(menus.ISOLINUX_CFG) or bios is None:
        raise UsageError(f"{iso.path} has no isolinux boot ({menus.ISOLINUX_CFG} and an El Torito BIOS "
                         "entry): not installation media xcpimg can remaster")
    bios_image = iso.path_at_extent(bios.lba)
    catalog = iso.path_at_extent(lay.catalog_lba) if lay.catalog_lba is not None else None
    if bios_image is None or catalog is None:
        raise UsageError(f"{iso.path}: the BIOS boot image or the boot catalog is not a file of the ISO")
    efi = None
    if lay.efi is not None:
        efi = iso.path_at_extent(lay.efi.lba)
        if efi is None:
            raise UsageError(f"{iso.path}: the El Torito EFI image is not a file of the ISO")
    code = None
    if lay.hybrid and lay.mbr_boot_code:
        with open(iso.path, "rb") as f:
            code = f.read(MBR_CODE)
    return Source(iso.volume_id, bios_image, catalog, efi, code)


def _no_links_on_the_way(tree: Path, rel: str) -> None:
    current = tree
    for part in PurePosixPath(rel).parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise UsageError(f"--add destination /{rel} goes through /{current.relative_to(tree)}, "
                             "which is not a directory")
    if (tree / rel).is_dir() and not (tree / rel).is_symlink():
        raise UsageError(f"--add destination /{rel} is a directory of the ISO")


def edit_efiboot(image: Path, scratch: Path, edit: Callable[[str], str]) -> None:
    """Apply *edit* to every ``EFI/*/grub*.cfg`` inside the FAT image (mcopy, in place)."""
    for rel, text in efiboot_cfgs(image, scratch).items():
        new = edit(text)
        if new != text:
            local = scratch / "efiboot-edit.cfg"
            local.write_text(new)
            run(["mcopy", "-D", "o", "-i", image, local, f"::/{rel}"], env=MTOOLS_ENV,
                what="update efiboot.img")


def validate(opts: RemasterOptions) -> None:
    if opts.answerfile is not None:
        answerfile.load(opts.answerfile)
    if opts.install_img is not None and not opts.install_img.is_file():
        raise UsageError(f"--install-img {opts.install_img} is not a file")
    if opts.volid is not None:
        master.check_volid(opts.volid)
    check_output_path(opts.output, opts.force)


def remaster(opts: RemasterOptions) -> list[str]:
    """Build opts.output from opts.source; returns the notes to print."""
    validate(opts)
    epoch = build_epoch()
    notes: list[str] = []
    with IsoReader(opts.source) as iso, private_tempdir("xcpimg-remaster-") as work:
        src = read_source(iso)
        volid = opts.volid or src.volid
        master.check_volid(volid)
        tree, scratch = work / "iso", work / "scratch"
        tree.mkdir()
        scratch.mkdir()
        if (opts.install_img or opts.answerfile) and not iso.exists("install.img"):
            raise UsageError(f"{opts.source} has no /install.img to replace or extend")
        log.info("extracting %s", opts.source)
        iso.extract(tree, skip={src.catalog})
        for path, dest in opts.add:
            _no_links_on_the_way(tree, dest)
            (tree / dest).parent.mkdir(parents=True, exist_ok=True)
            if (tree / dest).is_symlink():
                (tree / dest).unlink()
            shutil.copyfile(path, tree / dest)
        if opts.install_img is not None:
            shutil.copyfile(opts.install_img, tree / "install.img")
        efi_image = tree / src.efi if src.efi else None
        if opts.bootargs.strip():
            for menu in menus.menu_files(tree):
                menu.write_text(menus.add_kernel_args(menu.read_text(), opts.bootargs))
            if efi_image is not None:
                edit_efiboot(efi_image, scratch, lambda t: menus.add_kernel_args(t, opts.bootargs))
        if opts.answerfile is not None:
            removed: set[str] = set()
            if efi_image is not None:
                def unattended(text: str) -> str:
                    new, gone = answerfile.unattended_menu(text)
                    removed.update(gone)
                    return new
                edit_efiboot(efi_image, scratch, unattended)
            _, notes = answerfile.make_unattended(tree, answerfile.load(opts.answerfile), tree / "install.img",
                                                  scratch, epoch, removed)
        check_output_path(opts.output, opts.force)
        try:
            master.master_iso(tree, opts.output, volid, bios_boot=src.bios, boot_catalog=src.catalog,
                              efi_image=src.efi, isohdpfx=src.mbr_code, epoch=epoch)
        except BuildError as exc:
            raise BuildError(f"cannot remaster {opts.source}: {exc}") from None
    return notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ISO", type=Path, help="the ISO to start from")
    parser.add_argument("-o", "--output", metavar="OUT", required=True, type=Path, help="the new ISO")
    parser.add_argument("--answerfile", metavar="FILE", type=Path,
                        help="unattended media: FILE into install.img as /answerfile.xml, boot entries use it")
    parser.add_argument("--bootargs", metavar='"..."', default="",
                        help="words added after the dom0 kernel of every installer entry")
    parser.add_argument("--install-img", metavar="IMG", type=Path, help="replace /install.img")
    parser.add_argument("--add", metavar="FILE:DEST", action="append", default=[],
                        help="add or replace a file of the ISO (repeatable)")
    parser.add_argument("-V", dest="volid", metavar="VOLID", help="volume id (default: the source's)")
    parser.add_argument("--force-overwrite", action="store_true", help="replace an existing output")


def command(args: argparse.Namespace) -> int:
    opts = RemasterOptions(source=args.source, output=args.output, answerfile=args.answerfile,
                           bootargs=args.bootargs, install_img=args.install_img,
                           add=[parse_add(v) for v in args.add], volid=args.volid, force=args.force_overwrite)
    for note in remaster(opts):
        log.info("%s", note)
    log.info("wrote %s", opts.output)
    return 0
