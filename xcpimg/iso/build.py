"""`xcpimg iso`: build an XCP-ng installation ISO (full or netinstall), like create-iso.sh.

Steps: stage the dist's ISO template tree, add install.img and the boot files
taken from RPMs (kernel, kernel-alt, Xen debug build, memtest, branding,
syslinux, grub-efi), insert boot arguments, add the package repository
(full image; optionally signed) or switch to netinstall, build efiboot.img,
then master a hybrid BIOS/UEFI ISO.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import compat, progress
from ..dnf import Dnf, check_package_names
from ..errors import BuildError, ConfigError, ToolError, UsageError
from ..fsutil import atomic_output, check_output_path, copy_node, copy_tree, private_tempdir
from ..layers import Layers, configs_dir, read_layer_text, resolve
from ..render import render_text
from ..repos import RepoConfig, add_repo_arguments, repo_config_from_args
from ..rpm import RpmPackage
from ..run import build_epoch, run
from . import efiboot, master

log = logging.getLogger("xcpimg.iso")

BOOT_PACKAGES = ("kernel", "kernel-alt", "xen-hypervisor", "memtest86+", "branding-xcp-ng",
                 "syslinux", "grub-efi")
SYSLINUX_FILES = ("isolinux.bin", "mboot.c32", "menu.c32")
PXELINUX_FILES = ("pxelinux.0", "mboot.c32", "menu.c32")
#: syslinux 6 libraries: without them a syslinux-6 ISO stops at "Failed to load ldlinux.c32"
SYSLINUX6_LIBS = ("ldlinux.c32", "libcom32.c32", "libutil.c32")
#: GRUB modules built into the image in mkimage mode, so it boots without loading modules
#: (efinet, net and tftp: so it also boots over the network, reading grub.cfg over TFTP)
GRUB_BUILTIN = ("part_gpt", "part_msdos", "part_apple", "iso9660", "normal", "configfile", "multiboot2",
                "gzio", "search", "search_fs_file", "serial", "terminal", "ext2", "fat", "echo", "test",
                "all_video", "efinet", "net", "tftp")
GRUB_PREFIX = "()/EFI/xenserver"


@dataclass
class IsoOptions:
    """Everything one ISO build needs."""

    layers: Layers
    install_img: Path
    output: Path
    volid: str
    repo_config: RepoConfig = field(default_factory=RepoConfig)
    extra_packages: list[str] = field(default_factory=list)
    efi_installer: str = "rpm"
    netinstall: bool = False
    sign_script: Path | None = None
    force: bool = False
    progress: bool = False
    answerfile: Path | None = None


def validate(opts: IsoOptions) -> None:
    """Refuse bad input before any work is done."""
    if opts.netinstall and opts.sign_script:
        raise UsageError("--sign-script is useless with --netinstall (no repository to sign)")
    if opts.efi_installer not in ("rpm", "mkimage"):
        raise UsageError(f"unknown --efi-installer {opts.efi_installer!r} (rpm or mkimage)")
    master.check_volid(opts.volid)
    check_package_names(opts.extra_packages, "--extra-packages name")
    img = opts.install_img
    if not img.is_file() or not os.access(img, os.R_OK):
        raise UsageError(f"cannot read install.img {img}")
    if opts.sign_script is not None:
        s = opts.sign_script
        if not s.is_file() or not os.access(s, os.X_OK):
            raise UsageError(f"sign script {s} is not an executable file")
    if opts.answerfile is not None:
        from ..media import answerfile
        answerfile.load(opts.answerfile)
    check_output_path(opts.output, opts.force)


def insert_boot_args(tree: Path, args: str) -> None:
    """Insert *args* right after the first ``/vmlinuz`` of every line of the boot menus."""
    from ..media import menus
    if not args.strip():
        return
    for menu in menus.menu_files(tree):
        menu.write_text(menus.add_kernel_args(menu.read_text(), args))


def installer_bootargs(layers: Layers) -> str:
    """Contents of every layer's installer-bootargs.lst, joined on one line."""
    parts = [read_layer_text(p).split() for p in layers.find_all("installer-bootargs.lst")]
    return " ".join(word for words in parts for word in words)


def parse_branding(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of /usr/src/branding/branding (values may be shell-quoted)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.strip()):
            try:
                words = shlex.split(value, comments=False)
            except ValueError:
                words = [value]
            values[key.strip()] = " ".join(words)
    return values


class BootRpms:
    """The downloaded boot packages, by package name."""

    def __init__(self, paths: list[Path]):
        self.by_name: dict[str, RpmPackage] = {}
        for path in paths:
            pkg = RpmPackage(path)
            self.by_name[pkg.name] = pkg
        missing = [n for n in BOOT_PACKAGES if n not in self.by_name]
        if missing:
            raise BuildError(f"package {missing[0]} is not in the repositories")

    def __getitem__(self, name: str) -> RpmPackage:
        return self.by_name[name]

    def one(self, name: str, pattern: str) -> str:
        """The first regular file (not a symlink) of package *name* matching *pattern*."""
        pkg = self[name]
        links = {f.path for f in pkg.files() if f.linkto}
        matches = sorted(p for p in pkg.glob(pattern) if p not in links)
        if not matches:
            raise BuildError(f"{pkg.nevra} has no file matching {pattern}")
        return matches[0]

    def copy(self, name: str, pattern: str, dest: Path) -> Path:
        """Extract the file of *name* matching *pattern* to *dest*."""
        path = self.one(name, pattern)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self[name].extract_file(path))
        return dest


def stage_templates(layers: Layers, tree: Path) -> None:
    """Copy the merged ISO template tree (overlays replace single files)."""
    files = layers.merged_entries("iso")
    if not files:
        raise BuildError(f"layers {':'.join(layers.names)} hold no iso/ template tree")
    for rel, (top, src) in files.items():
        if rel.endswith(".cfg") or rel == ".treeinfo":
            read_layer_text(src)  # menus and .treeinfo are edited as text later: say now which layer file is bad
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_node(src, dest, top)  # a link stays a link, and only if it stays inside its layer's tree
    for required in ("boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg"):
        if not (tree / required).is_file():
            raise BuildError(f"ISO template tree lacks {required}")


def add_boot_files(rpms: BootRpms, tree: Path) -> None:
    """Kernels, Xen debug build, memtest, EULA/LICENSES (create-iso steps 3)."""
    boot = tree / "boot"
    rpms.copy("kernel", "/boot/vmlinuz-*", boot / "vmlinuz")
    rpms.copy("kernel-alt", "/boot/vmlinuz-*", boot / "alt/vmlinuz")
    rpms.copy("xen-hypervisor", "/boot/xen-*-d.gz", boot / "xen.gz")
    memtest = rpms["memtest86+"]
    if memtest.glob("/boot/memtest.bin"):
        rpms.copy("memtest86+", "/boot/memtest.bin", boot / "memtest.bin")
        if memtest.glob("/boot/memtest.efi"):
            rpms.copy("memtest86+", "/boot/memtest.efi", boot / "memtest.efi")
    else:  # 5.x packaging: /boot/memtest86+-5.01 (its elf- twin is dropped)
        rpms.copy("memtest86+", "/boot/memtest86+-*", boot / "memtest.bin")
    for doc in ("EULA", "LICENSES"):
        rpms.copy("branding-xcp-ng", f"/usr/src/branding/{doc}", tree / doc)


def add_bios_loader(rpms: BootRpms, tree: Path) -> bytes:
    """isolinux and pxelinux files; returns isohdpfx.bin (MBR code for the hybrid image)."""
    syslinux = rpms["syslinux"]
    libs = [f for f in SYSLINUX6_LIBS if syslinux.glob(f"/usr/share/syslinux/{f}")]
    extracted: dict[str, Path] = {}  # each file is read from the package once
    for subdir, names in (("isolinux", SYSLINUX_FILES), ("pxelinux", PXELINUX_FILES)):
        for fname in (*names, *libs):
            dest = tree / "boot" / subdir / fname
            if fname in extracted:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(extracted[fname], dest)
            else:
                extracted[fname] = rpms.copy("syslinux", f"/usr/share/syslinux/{fname}", dest)
    return syslinux.extract_file(rpms.one("syslinux", "/usr/share/syslinux/isohdpfx.bin"))


def efi_loader(rpms: BootRpms, mode: str, tree: Path, scratch: Path) -> Path:
    """The GRUB EFI binary: prebuilt from grub-efi (rpm) or made with grub-mkimage (mkimage)."""
    if mode == "rpm":
        return rpms.copy("grub-efi", "/boot/efi/EFI/xenserver/grubx64.efi", scratch / "grubx64.efi")
    grub = rpms["grub-efi"]
    moddir_rpm = "/usr/lib/grub/x86_64-efi"
    unpack = scratch / "grub-efi"
    grub.extract(unpack, grub.glob(f"{moddir_rpm}/*"))
    if not (unpack / moddir_rpm.lstrip("/")).is_dir():
        raise BuildError(f"{grub.nevra} has no GRUB module directory {moddir_rpm}")
    # copied first: a link leaving the module tree is refused before grub-mkimage reads anything
    moddir = tree / "boot/grub/x86_64-efi"
    copy_tree(unpack / moddir_rpm.lstrip("/"), moddir, what=f"{grub.nevra} {moddir_rpm}")
    if not (moddir / "moddep.lst").is_file():
        raise BuildError(f"{grub.nevra} has no GRUB module directory {moddir_rpm}")
    out = scratch / "grubx64.efi"
    run(["grub-mkimage", "--directory", moddir, "--prefix", GRUB_PREFIX, "--output", out,
         "--format", "x86_64-efi", "--compression", "auto", "--", *GRUB_BUILTIN],
        what="build the GRUB EFI image")
    return out


#: upstream's layer file for the efiboot grub.cfg change: a patch applied to a copy of grub.cfg
EFIBOOT_PATCH = "grub-efiboot-cfg.patch"


def efiboot_grub_cfg(layers: Layers, iso_cfg: str, scratch: Path) -> str:
    """The grub.cfg placed in efiboot.img: the ISO's, changed by upstream's ``grub-efiboot-cfg.patch``
    (applied with ``patch``) when a layer holds one, else by ``efiboot-grub.cfg`` (lines inserted
    after ``set timeout=``; base has the default). A layer's ``efiboot-grub.cfg`` wins over a
    patch only when that layer comes first in the search path."""
    extra_file = layers.find_optional("efiboot-grub.cfg")
    patch_file = layers.find_optional(EFIBOOT_PATCH)
    if patch_file is not None and (extra_file is None or extra_file.parent == configs_dir() / "base"
                                   or layers.dirs.index(patch_file.parent) < layers.dirs.index(extra_file.parent)):
        return apply_patch(patch_file, iso_cfg, scratch)
    extra = read_layer_text(extra_file) if extra_file else "search --file --set /install.img\n"
    lines = iso_cfg.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().startswith("set timeout="):
            return "".join(lines[:i + 1]) + extra + "".join(lines[i + 1:])
    return extra + iso_cfg


def apply_patch(patch_file: Path, text: str, scratch: Path) -> str:
    """*text* (the ISO's grub.cfg) changed by the layer file *patch_file*, applied with ``patch``;
    a patch that does not apply is a ConfigError naming the layer file."""
    work = scratch / "efiboot-patch"
    work.mkdir()
    original, patched = work / "grub.cfg", work / "grub.cfg.patched"
    original.write_text(text)
    try:
        run(["patch", "--batch", "--forward", "--silent", "--fuzz=1", "--no-backup-if-mismatch",
             f"--reject-file={work / 'rej'}",
             f"--output={patched}", f"--input={patch_file}", "--", str(original)], cwd=work,
            what=f"apply {patch_file}")
    except ToolError as exc:
        if exc.returncode is None:
            raise  # patch is not installed, or could not start
        raise ConfigError(f"layer file {patch_file} does not apply to EFI/xenserver/grub.cfg: "
                          f"{(exc.stderr_tail or str(exc)).splitlines()[-1]}") from None
    return patched.read_text()


def repository_packages(opts: IsoOptions) -> list[str]:
    """What the full image's Packages/ holds, with dependencies."""
    return ["xcp-ng-deps", "kernel-alt", *opts.extra_packages]


def add_repository(opts: IsoOptions, dnf: Dnf, rpms: BootRpms, tree: Path, epoch: int) -> None:
    """Full image: .treeinfo from branding, Packages/ with dependencies, createrepo_c, signature."""
    branding = parse_branding(rpms["branding-xcp-ng"].extract_file(
        rpms.one("branding-xcp-ng", "/usr/src/branding/branding")).decode())
    treeinfo = tree / ".treeinfo"
    if treeinfo.is_file():
        variables = {**branding, "timestamp": f"{epoch}.00", "TIMESTAMP": f"{epoch}.00"}  # date +%s.00, as upstream
        treeinfo.write_text(render_text(treeinfo.read_text(), variables, ".treeinfo"))
    packages = tree / "Packages"
    dnf.download(repository_packages(opts), packages, resolve=True)
    for rpm in packages.iterdir():
        os.utime(rpm, (epoch, epoch))  # createrepo_c records file mtimes
    with progress.activity(f"createrepo_c ({len(list(packages.iterdir()))} packages)"):
        run(["createrepo_c", "--quiet", "--revision", str(epoch), "--set-timestamp-to-revision",
             "--workers", "2", tree], what="create the ISO's repository metadata")
    if opts.sign_script:
        from ..sign import run_sign_script
        run_sign_script(opts.sign_script.absolute(), tree)  # a relative Path would be looked up on PATH
    else:
        if treeinfo.is_file():
            treeinfo.write_text(re.sub(r"(?m)^key", "#key", treeinfo.read_text()))
        insert_boot_args(tree, "no-repo-gpgcheck")


def build_iso(opts: IsoOptions) -> None:
    """Build the ISO described by *opts* into opts.output (atomically, never clobbering one).

    The staging tree is removed (uninterruptibly) before the ISO is published: an
    interrupt leaves either no ISO or a whole one, and never a staging tree.
    """
    validate(opts)
    epoch = build_epoch()
    layers = opts.layers
    with atomic_output(opts.output, opts.force) as part, private_tempdir("xcpimg-iso-") as work:
        tree, scratch = work / "iso", work / "scratch"
        scratch.mkdir()
        dnf = Dnf(layers, opts.repo_config, work / "dnf")  # reads the keys first: a bad --gpgkey fails at once
        log.info("staging the %s ISO tree from layers %s", layers.dist, ":".join(layers.names))
        stage_templates(layers, tree)
        shutil.copyfile(opts.install_img, tree / "install.img")
        if not opts.netinstall:  # boot and repository packages fetched in one batch
            dnf.prefetch([(BOOT_PACKAGES, False), (repository_packages(opts), True)])
        rpms = BootRpms(dnf.download(BOOT_PACKAGES, scratch / "rpms"))
        add_boot_files(rpms, tree)
        insert_boot_args(tree, installer_bootargs(layers))
        if opts.netinstall:
            (tree / ".treeinfo").unlink(missing_ok=True)
            insert_boot_args(tree, "netinstall")
        else:
            add_repository(opts, dnf, rpms, tree, epoch)
        if opts.answerfile is not None:
            from ..media import answerfile
            _, notes = answerfile.make_unattended(tree, answerfile.load(opts.answerfile), tree / "install.img",
                                                  scratch, epoch)
            for note in notes:
                log.info("%s", note)
        isohdpfx = add_bios_loader(rpms, tree)
        loader = efi_loader(rpms, opts.efi_installer, tree, scratch)
        grub_cfg = scratch / "grub-efiboot.cfg"
        grub_cfg.write_text(efiboot_grub_cfg(layers, (tree / "EFI/xenserver/grub.cfg").read_text(), scratch))
        efiboot.make_efiboot(tree / "boot/efiboot.img", {
            "EFI/BOOT/BOOTX64.EFI": loader, "EFI/xenserver/grub.cfg": grub_cfg})
        shutil.copyfile(loader, tree / "EFI/xenserver/grubx64.efi")
        log.info("mastering %s", opts.output)
        master.master_iso(tree, part, opts.volid, isohdpfx=isohdpfx, epoch=epoch,
                          progress=opts.progress)
    log.info("wrote %s (%d MiB)", opts.output, opts.output.stat().st_size >> 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="ISO", required=True, type=Path, help="output ISO file")
    parser.add_argument("-V", dest="volid", metavar="VOLID", required=True, help="ISO volume ID")
    add_repo_arguments(parser)
    parser.add_argument("--extra-packages", metavar='"A B"', default="",
                        help="more packages (with dependencies) for the ISO's repository")
    parser.add_argument("--efi-installer", choices=("rpm", "mkimage"), default="rpm",
                        help="GRUB EFI binary: prebuilt from grub-efi (rpm) or grub-mkimage (mkimage)")
    parser.add_argument("--netinstall", action="store_true", help="no repository on the ISO")
    parser.add_argument("--sign-script", metavar="SCRIPT",
                        help="run SCRIPT ISO_DIR to sign repodata/repomd.xml (a bare name is looked up on PATH)")
    parser.add_argument("--force-overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--answerfile", metavar="FILE", type=Path,
                        help="unattended media: put FILE into install.img as /answerfile.xml and boot with it")
    compat.add_arguments(parser)
    parser.add_argument("spec", metavar="LAYERS", help="layer search path, e.g. 8.3:testing")
    parser.add_argument("install_img", metavar="INSTALL.IMG", type=Path, help="the installer image")


def sign_script_path(value: str | None) -> Path | None:
    """--sign-script: a path (``./sign.sh``: argparse's Path would drop the ``./``) or a command on PATH."""
    if value is None:
        return None
    if "/" in value or Path(value).exists():
        return Path(value)
    found = shutil.which(value)
    if found is None:
        raise UsageError(f"sign script {value} is neither a file nor a command on PATH")
    return Path(found)


def command(args: argparse.Namespace) -> int:
    compat.check(args)
    opts = IsoOptions(layers=resolve(args.spec), install_img=args.install_img, output=args.output,
                      volid=args.volid, repo_config=repo_config_from_args(args),
                      extra_packages=args.extra_packages.split(), efi_installer=args.efi_installer,
                      netinstall=args.netinstall, sign_script=sign_script_path(args.sign_script),
                      force=args.force_overwrite, progress=sys.stderr.isatty(), answerfile=args.answerfile)
    build_iso(opts)
    return 0
