"""Options newer upstream build recipes pass (``--pkgtool dnf --arch x86_64``), accepted and checked."""

from __future__ import annotations

import argparse
import logging

from .errors import UsageError

log = logging.getLogger("xcpimg")

PKGTOOLS = ("dnf", "yum")
ARCHES = ("x86_64",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pkgtool", metavar="dnf|yum", default="dnf",
                        help="package tool (xcpimg always uses dnf; yum is accepted as a synonym)")
    parser.add_argument("--arch", metavar="x86_64", default="x86_64", help="target architecture (only x86_64)")


def check(args: argparse.Namespace) -> None:
    """One-line UsageError for a value xcpimg cannot honour; a note for ``--pkgtool yum``."""
    if args.pkgtool not in PKGTOOLS:
        raise UsageError(f"unknown --pkgtool {args.pkgtool!r} (dnf or yum)")
    if args.arch not in ARCHES:
        raise UsageError(f"unsupported --arch {args.arch!r} (only {', '.join(ARCHES)})")
    if args.pkgtool == "yum":
        log.info("note: --pkgtool yum: packages are resolved and fetched with dnf, from the same repositories")
