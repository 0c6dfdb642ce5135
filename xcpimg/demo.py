"""`xcpimg demo`: build the fixture repository, an ISO from it, and boot the ISO in QEMU.

The main job in one command: it shows every piece working end to end on a
machine with no XCP-ng mirror: fixture repository -> install image -> hybrid
ISO -> QEMU boots (firmware -> bootloader -> Xen -> dom0 Linux -> init -> the
installer's first screen). As root it builds a real install.img (systemd, the fixture
installer) and boots to the installer; otherwise it uses the probe initrd and boots
to its init.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from .boot import DISK_BOOT_MODES, boot_in_mode, boot_mode
from .errors import BootError, UsageError
from .fixture_repo import ensure_fixture_repo
from .layers import resolve
from .repos import RepoConfig

log = logging.getLogger("xcpimg.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outdir", type=Path, default=Path("out"), help="where the ISO and logs go (default ./out)")
    parser.add_argument("--spec", default="8.3:testing", help="layer spec to build (default 8.3:testing)")
    parser.add_argument("--modes", default=",".join(DISK_BOOT_MODES),
                        help=f"boot modes (default {','.join(DISK_BOOT_MODES)}; also bios-pxe, uefi-pxe)")
    parser.add_argument("--installimg", choices=("auto", "probe", "build"), default="auto",
                        help="install.img to put on the ISO: a real build (root; boots to the installer), "
                             "the probe initrd (boots to its init); default: build when root")
    parser.add_argument("--netinstall", action="store_true", help="build netinstall media")


def _step(what: str, start: float) -> None:
    print(f"  {what} ({time.monotonic() - start:.1f} s)", flush=True)


def command(args: argparse.Namespace) -> int:
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        boot_mode(mode)  # refuses an unknown mode before any work
    layers = resolve(args.spec)
    outdir: Path = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    print("1. fixture repository", flush=True)
    repo = ensure_fixture_repo()
    _step(f"ready at {repo.root}", t)
    cfg = RepoConfig(srcurl=repo.srcurl(layers.dist), gpgkey=repo.gpgkey_url,
                     layer_srcurls={"linstor": repo.linstor_srcurl(layers.dist)} if "linstor" in layers.names else {})

    t = time.monotonic()
    img = outdir / "install.img"
    build = args.installimg == "build" or (args.installimg == "auto" and os.geteuid() == 0)
    until = "installer" if build else "init"
    if build:
        if os.geteuid() != 0:
            raise UsageError("--installimg build needs root")
        from .installimg import build_installimg
        print("2. install.img (dnf --installroot)", flush=True)
        build_installimg(layers, cfg, img, force=True)
    else:
        from .probe import build_probe_initrd
        print("2. probe initrd as install.img", flush=True)
        img.unlink(missing_ok=True)
        build_probe_initrd(img)
    _step(f"{img} ({img.stat().st_size / 2**20:.1f} MiB)", t)

    t = time.monotonic()
    from .iso.build import IsoOptions, build_iso
    flavour = "netinstall" if args.netinstall else "full"
    iso = outdir / f"xcp-ng-{layers.dist}-{flavour}-fixture.iso"
    print(f"3. {flavour} ISO from {args.spec}", flush=True)
    build_iso(IsoOptions(layers=layers, install_img=img, output=iso, repo_config=cfg, force=True,
                         volid=f"XCP-ng {layers.dist}", netinstall=args.netinstall))
    _step(f"{iso} ({iso.stat().st_size / 2**20:.1f} MiB)", t)

    print("4. boot in QEMU", flush=True)
    failed = 0
    for mode in modes:
        try:
            result = boot_in_mode(iso, mode, outdir / f"boot-{mode}", until)
        except BootError as exc:
            failed += 1
            print(f"  {mode:9} FAILED: {exc}", flush=True)
            continue
        stages = "  ".join(f"{s} {sec:.1f}s" for s, sec in result.reached.items())
        print(f"  {mode:9} ok [{result.accel}]  {stages}", flush=True)
        print(f"  {'':9} kernel command line: {result.cmdline}", flush=True)
        if result.installer:
            print(f"  {'':9} installer: Welcome to {result.installer[0]} - Version {result.installer[1]}", flush=True)
    target = "the installer's first screen" if build else "the installer's init (probe initrd)"
    print(f"{len(modes) - failed}/{len(modes)} boot modes reached {target}", flush=True)
    return 1 if failed else 0
