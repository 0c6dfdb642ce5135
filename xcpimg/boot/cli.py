"""`xcpimg boot`: boot an ISO (or a PXE tree) in QEMU and report the boot stages reached."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..stages import STAGES
from .accel import TCG_CPU, choose_accel
from .firmware import FIRMWARES
from .machine import DEFAULT_MEMORY
from .media import MEDIA, medium_kind
from .session import boot, check_memory, check_timeout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("iso", type=Path, metavar="ISO", help="ISO image to boot (for --media pxe: or a PXE tree)")
    parser.add_argument("--firmware", choices=FIRMWARES, default="bios")
    parser.add_argument("--media", choices=MEDIA, default="cd",
                        help="cd, usb, or pxe (network boot from a PXE tree made from the ISO)")
    parser.add_argument("--until", choices=STAGES, default="init", help="deepest stage to reach")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="cap on the whole boot (default: none; each stage has its own budget)")
    parser.add_argument("--logdir", type=Path, help="where to keep serial log, QEMU stderr/argv, screendump")
    parser.add_argument("--no-eltorito", action="store_true",
                        help="with --media usb: boot a copy with El Torito disabled (the hybrid MBR/GPT path)")
    parser.add_argument("--memory", type=int, default=DEFAULT_MEMORY, metavar="MIB")
    parser.add_argument("--accel", choices=("kvm", "tcg"), help="default: kvm only if a probe guest runs")
    parser.add_argument("--cpu", help=f"QEMU CPU model (default: host under KVM, {TCG_CPU} under TCG)")
    parser.add_argument("--firmware-file", type=Path, help="OVMF code (uefi) or SeaBIOS image (bios)")
    parser.add_argument("--firmware-vars", type=Path, help="OVMF VARS template (uefi)")


def command(args: argparse.Namespace) -> int:
    def show(stage: str, seconds: float) -> None:
        print(f"{stage:<10} {seconds:7.1f} s", flush=True)

    kind = medium_kind(args.media, args.no_eltorito)  # refuse bad values before the accel probe
    check_timeout(args.timeout)
    check_memory(args.memory)
    accel = args.accel or choose_accel()
    print(f"booting {args.iso} ({args.firmware}/{kind}, {accel}) until {args.until}", flush=True)
    result = boot(args.iso, args.firmware, args.media, until=args.until, timeout=args.timeout,
                  logdir=args.logdir, no_eltorito=args.no_eltorito, memory=args.memory, accel=accel,
                  cpu=args.cpu, firmware_file=args.firmware_file, vars_template=args.firmware_vars,
                  on_stage=show)
    if result.cmdline is not None:
        print(f"cmdline    {result.cmdline}")
    if result.installer is not None:
        print(f"installer  {result.installer[0]} {result.installer[1]} (kernel {result.installer[2]})")
    for warning in result.warnings:
        print(f"warning    {warning}")
    print(f"logs       {result.logdir}", file=sys.stderr)
    return 0
