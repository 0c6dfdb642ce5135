"""Command line: `xcpimg <command> ...`.

Each subcommand lives in the module that owns its concern; that module exposes
``add_arguments(parser)`` and ``command(args) -> int``. This file only wires
them together, sets up logging and turns errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from . import __version__
from .errors import XcpimgError, describe_os_error
from .fsutil import sweep_leftovers

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "layers": ("xcpimg.layers", "print the resolved layer search path"),
    "iso": ("xcpimg.iso.build", "build an installation ISO (create-iso.sh)"),
    "installimg": ("xcpimg.installimg", "build install.img (create-installimg.sh)"),
    "cache": ("xcpimg.cache", "show or prune the shared package cache"),
    "mirror": ("xcpimg.mirror", "mirror XCP-ng yum repositories (mirror-repos.sh)"),
    "boot": ("xcpimg.boot.cli", "boot an ISO in QEMU and report the stages reached"),
    "pxe-tree": ("xcpimg.pxe.cli", "write a PXE (TFTP/HTTP) network boot tree from an ISO"),
    "probe-initrd": ("xcpimg.probe", "write the probe initrd used as a stand-in install.img"),
    "fixture-repo": ("xcpimg.fixture_repo", "build the embedded fixture repository"),
    "sample-sign": ("xcpimg.sign", "sample sign script: sign an ISO tree's repodata with gpg"),
    "demo": ("xcpimg.demo", "build the fixture repository, an ISO from it, and boot it"),
    "inspect": ("xcpimg.media.inspect", "report what an installation ISO holds"),
    "diff": ("xcpimg.media.diff", "compare two installation ISOs (exit 0 equal, 1 different)"),
    "remaster": ("xcpimg.media.remaster", "rebuild an ISO with changes, keeping its boot layout"),
    "release": ("xcpimg.media.release", "build a release's install.img and ISOs, with SHA256SUMS and manifest"),
    "test": ("xcpimg.matrix.cli", "run the build-and-boot matrix (pytest) and print its result table"),
}

log = logging.getLogger("xcpimg")


def _normalize_argv(argv: list[str]) -> list[str]:
    """Turn the original's ``--srcurl:LAYER URL`` into ``--srcurl-layer LAYER=URL``."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--srcurl:"):
            layer, eq, url = arg[len("--srcurl:"):].partition("=")
            if not eq:
                url = next(it, "")
            out += ["--srcurl-layer", f"{layer}={url}"]
        else:
            out.append(arg)
    return out


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """The parser; with *only*, just that command's module is imported (faster start-up).

    A module with ``ACCEPTS_UNKNOWN = True`` gets the arguments it does not define in
    ``args.unknown`` (``xcpimg test`` hands them to pytest); for the others they are errors.
    """
    parser = argparse.ArgumentParser(prog="xcpimg", description="Build and verify XCP-ng installation media.")
    parser.add_argument("--version", action="version", version=f"xcpimg {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    handlers: dict[str, object] = {}
    for name, (modname, help_) in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # command not implemented in this checkout
            raise
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip().splitlines()[0])
        p.add_argument("-v", "--verbose", action="store_true", help="show every external command run")
        mod.add_arguments(p)
        p.set_defaults(accepts_unknown=bool(getattr(mod, "ACCEPTS_UNKNOWN", False)))
        handlers[name] = mod.command
    return parser, handlers


def _sigterm(_signo: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if not verbose else "%(name)s: %(message)s",
                        stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)  # first: a SIGTERM from now on is an interrupt, cleaned up
    args_in = _normalize_argv(list(sys.argv[1:] if argv is None else argv))
    first = args_in[0] if args_in else None
    parser, handlers = build_parser(first if first in COMMANDS else None)
    args, unknown = parser.parse_known_args(args_in)
    if unknown and not getattr(args, "accepts_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown = unknown
    if not args.cmd:
        parser.print_help(sys.stderr)
        return 2
    debug = bool(getattr(args, "verbose", False) or os.environ.get("XCPIMG_DEBUG"))
    setup_logging(debug)
    try:
        sweep_leftovers()  # what killed runs left (their owner is gone)
        return int(handlers[args.cmd](args) or 0)  # type: ignore[operator]
    except XcpimgError as exc:
        if debug:
            log.exception("xcpimg %s failed", args.cmd)
        print(f"xcpimg {args.cmd}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a fault of the system (disk full, /proc, permissions): one line naming the path
        if debug:
            log.exception("xcpimg %s failed", args.cmd)
        print(f"xcpimg {args.cmd}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"xcpimg {args.cmd}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``xcpimg`` program: main(), then exit with its status. A signal that arrives once the
    command is done (while Python shuts down) no longer changes that status."""
    code = main()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
