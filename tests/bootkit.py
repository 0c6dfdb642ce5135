"""Test scaffolding: hand-make a bootable hybrid BIOS/UEFI ISO from Debian parts.

Xen 4.17 and the generic Debian kernel as dom0, isolinux + menu.c32 + mboot.c32 for BIOS,
a GRUB EFI image with its modules built in for UEFI, and the probe initrd as /install.img.
Mastered with genisoimage + ``isohybrid --uefi`` (scaffolding only: the product masters
its ISOs itself). Lets the boot machinery be tested before, and apart from, the ISO builder.

Variants: ``good``; ``no-xen`` (no /boot/xen.gz); ``no-ldlinux`` (isolinux without ldlinux.c32).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from filelock import FileLock

from xcpimg import debs
from xcpimg.probe import build_probe_initrd
from xcpimg.run import output, run

VARIANTS = ("good", "no-xen", "no-ldlinux")
VOLUME_ID = "XCPIMG-BOOTKIT"
#: Marker argument on the dom0 command line, asserted by the boot tests.
DOM0_MARKER = "xcpimg-bootkit"
XEN_ARGS = "com1=115200,8n1 console=com1,vga dom0_mem=768M,max:768M dom0_max_vcpus=1"
DOM0_ARGS = f"console=hvc0 console=tty0 {DOM0_MARKER}"
GRUB_MODULES = ("normal configfile multiboot2 gzio search search_fs_file serial terminal ext2 fat "
                "iso9660 part_gpt part_msdos echo test all_video").split()
SYSLINUX_MODULES = ("ldlinux.c32", "mboot.c32", "menu.c32", "libcom32.c32", "libutil.c32")

ISOLINUX_CFG = """SERIAL 0 115200
UI menu.c32
DEFAULT xen
TIMEOUT 50
MENU TITLE xcpimg bootkit
LABEL xen
  MENU LABEL Xen + Debian dom0 + probe initrd
  KERNEL mboot.c32
  APPEND /boot/xen.gz {xen} --- /boot/vmlinuz {dom0} --- /install.img
"""

#: GRUB prints where it was loaded from (``(cd0)``, ``(hd0)``, ``(hd0,msdos2)``...) on this line.
GRUB_CMDPATH_PREFIX = "xcpimg-grub-cmdpath: "
GRUB_CFG = """echo "xcpimg-grub-cmdpath: $cmdpath"
search --no-floppy --file --set=root /install.img
set default=0
set timeout=5
menuentry "Xen + Debian dom0 + probe initrd" {{
    multiboot2 /boot/xen.gz {xen}
    module2 /boot/vmlinuz {dom0}
    module2 /install.img
}}
"""


def kernel_package() -> str:
    """The generic dom0-capable kernel package behind Debian's linux-image-amd64 metapackage."""
    text = output(["apt-cache", "depends", "linux-image-amd64"])
    for line in text.splitlines():
        name = line.split(":", 1)[-1].strip()
        if "Depends:" in line and name.startswith("linux-image-") and name.endswith("-amd64") \
                and "cloud" not in name:
            return name
    raise RuntimeError("cannot resolve linux-image-amd64 to a kernel package")


def parts_dir(cache: Path) -> Path:
    """Unpacked Debian parts (xen, kernel, syslinux, grub), cached under *cache*."""
    names = ["xen-hypervisor-4.17-amd64", kernel_package(), "isolinux", "syslinux-common",
             "grub-efi-amd64-bin"]
    paths = [debs.fetch(n) for n in names]
    key = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:16]
    root = cache / f"parts-{key}"
    with FileLock(str(cache / "parts.lock")):
        if not (root / ".done").exists():
            shutil.rmtree(root, ignore_errors=True)
            for deb in paths:
                debs.extract(deb, root)
            (root / ".done").touch()
    return root


def _stage(parts: Path, tree: Path, initrd: Path, variant: str, xen: str, dom0: str) -> None:
    iso_boot = tree / "boot" / "isolinux"
    iso_boot.mkdir(parents=True)
    shutil.copy(parts / "usr/lib/ISOLINUX/isolinux.bin", iso_boot)
    for mod in SYSLINUX_MODULES:
        if not (variant == "no-ldlinux" and mod == "ldlinux.c32"):
            shutil.copy(parts / "usr/lib/syslinux/modules/bios" / mod, iso_boot)
    (iso_boot / "isolinux.cfg").write_text(ISOLINUX_CFG.format(xen=xen, dom0=dom0))
    if variant != "no-xen":
        shutil.copy(next((parts / "boot").glob("xen-4.17-*.gz")), tree / "boot/xen.gz")
    shutil.copy(next((parts / "boot").glob("vmlinuz-*")), tree / "boot/vmlinuz")
    shutil.copy(initrd, tree / "install.img")
    efi_dir = tree / "EFI" / "xenserver"
    efi_dir.mkdir(parents=True)
    (efi_dir / "grub.cfg").write_text(GRUB_CFG.format(xen=xen, dom0=dom0))


def _efiboot(parts: Path, tree: Path, work: Path) -> None:
    grub = work / "BOOTX64.EFI"
    run(["grub-mkimage", "-O", "x86_64-efi", "-p", "/EFI/xenserver", "-d",
         parts / "usr/lib/grub/x86_64-efi", "-o", grub, *GRUB_MODULES])
    img = tree / "boot" / "efiboot.img"
    run(["mkfs.msdos", "-C", "-n", "EFIBOOT", "-i", "12345678", img, "2880"])
    run(["mmd", "-i", img, "::/EFI", "::/EFI/BOOT", "::/EFI/xenserver"])
    run(["mcopy", "-i", img, grub, "::/EFI/BOOT/BOOTX64.EFI"])
    run(["mcopy", "-i", img, tree / "EFI/xenserver/grub.cfg", "::/EFI/xenserver/grub.cfg"])


def build_bootkit_iso(out: Path, variant: str = "good", cache: Path | None = None,
                      xen_args: str = XEN_ARGS, dom0_args: str = DOM0_ARGS) -> Path:
    """Write the bootkit ISO of *variant* to *out* (parts cached under *cache*) and return *out*."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown bootkit variant {variant!r}")
    cache = cache or debs.cache_root() / "bootkit"
    cache.mkdir(parents=True, exist_ok=True)
    parts = parts_dir(cache)
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    try:
        tree.mkdir(parents=True)
        initrd = work / "probe.img"
        build_probe_initrd(initrd)
        _stage(parts, tree, initrd, variant, xen_args, dom0_args)
        _efiboot(parts, tree, work)
        tmp_iso = work / "out.iso"
        run(["genisoimage", "-quiet", "-o", tmp_iso, "-V", VOLUME_ID, "-R", "-J", "-joliet-long",
             "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot", "-e", "boot/efiboot.img",
             "-no-emul-boot", tree])
        run(["isohybrid", "--uefi", tmp_iso])
        tmp_iso.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":  # python tests/bootkit.py OUT.iso [VARIANT]
    import sys
    extra = " ".join(sys.argv[3:])
    print(build_bootkit_iso(Path(sys.argv[1]).resolve(), *(sys.argv[2:3] or ["good"]),
                            xen_args=f"{XEN_ARGS} {extra}".strip()))
