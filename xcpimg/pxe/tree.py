"""Writing the tree, published beside DEST in one step (``fsutil.atomic_tree``): never over
an existing DEST unless forced, and then by an atomic exchange."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from ..errors import BuildError, UsageError
from ..fsutil import atomic_tree
from ..media.reader import IsoReader
from ..run import build_epoch
from .grub import grub_config
from .plan import GRUB_DIR, ISOLINUX_CFGS, PXELINUX_DIRS, SYSLINUX_MODULES, TREEINFO, IsoFiles, Plan, PxeOptions, log
from .syslinux import pxelinux_config


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
    """Write the PXE tree for *options* into *root*, an empty directory made if missing."""
    options.check()
    root.mkdir(mode=0o755, exist_ok=True)
    if any(root.iterdir()):
        raise BuildError(f"{root} is not empty")
    with IsoReader(options.iso) as reader:
        iso = IsoFiles(reader)
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


def make_pxe_tree(options: PxeOptions) -> Path:
    """Write the PXE tree of *options* at ``options.dest``; returns it."""
    options.check()
    dest = options.dest
    if dest is None:
        raise UsageError("no destination for the PXE tree")
    if not options.iso.is_file():
        raise UsageError(f"ISO not found: {options.iso}")
    with atomic_tree(dest, options.force) as tmp:  # published in one step, never over DEST unless forced
        build_tree(options, tmp)
    return dest
