"""`xcpimg pxe-tree`: write a network boot tree (a TFTP/HTTP root) made from an ISO."""

from __future__ import annotations

import argparse
from pathlib import Path

from .plan import BOOTFILES, DEFAULT_PREFIX, PxeOptions
from .tree import make_pxe_tree


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
