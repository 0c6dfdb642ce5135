"""`xcpimg test`: run the build-and-boot matrix (pytest --pyargs xcpimg.matrix) and print its results.

The cheap tier by default (the probe initrd as install.img, boots to its init),
``--expensive`` for the install.img tier (root; boots to the installer's first
screen). Every other argument goes to pytest: the plugin's ``--xcp-config``,
``--boot-modes``, ``--xcp-layer``, ``--repo-root``, ``--repo-gpgkey`` ... Runs with
``-n auto`` unless ``-n`` is given; ends with a table per configuration and boot
mode (outcome, seconds to each stage, where the logs are).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..run import run
from ..stages import STAGES

#: extra arguments are pytest's: the CLI passes what it does not know
ACCEPTS_UNKNOWN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expensive", action="store_true",
                        help="run the install.img tier (root): real install.img builds, boots to the installer")


def layer_paths(argv: list[str]) -> list[str]:
    """The --xcp-layer values among pytest's arguments (``--xcp-layer P`` or ``--xcp-layer=P``)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--xcp-layer" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--xcp-layer="):
            found.append(arg.split("=", 1)[1])
    return found


def pytest_argv(expensive: bool, extra: list[str], report: Path) -> list[str]:
    """The pytest command line of the matrix run."""
    argv = [sys.executable, "-m", "pytest", "--pyargs", "xcpimg.matrix", "-p", "no:cacheprovider",
            "-m", "expensive" if expensive else "not expensive", f"--xcp-report={report}", "-rfE"]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in extra):
        argv += ["-n", "auto"]
    return argv + extra


def table(results: list[dict[str, object]]) -> str:
    """The result table: one row per configuration and boot mode."""
    if not results:
        return "no boot test ran"
    head = ["configuration", "mode", "result", *STAGES, "logs"]
    rows = [head]
    for r in results:
        stages = r.get("stages") or {}
        assert isinstance(stages, dict)
        rows.append([str(r.get("xcp_config", "?")), str(r.get("boot_mode", "?")), str(r.get("outcome", "?")),
                     *(f"{stages[s]:.1f}" if s in stages else "-" for s in STAGES),
                     str(r.get("logdir", ""))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def command(args: argparse.Namespace) -> int:
    extra: list[str] = list(getattr(args, "unknown", []))
    for path in layer_paths(extra) + [p for p in os.environ.get("XCPTEST_LAYERS", "").split(os.pathsep) if p]:
        if not Path(path).is_dir():
            raise UsageError(f"--xcp-layer {path}: no such layer directory")
    with tempfile.TemporaryDirectory(prefix="xcpimg-test-") as tmp:
        report = Path(tmp) / "report.json"
        proc = run(pytest_argv(args.expensive, extra, report), stdout=None, check=False,
                   what="run the matrix")
        results = json.loads(report.read_text()) if report.is_file() else []
    print(table(results), flush=True)
    stages_note = "seconds to each stage after the VM starts"
    print(f"({stages_note}; logs are kept for every boot, with a screenshot on failure)", flush=True)
    return proc.returncode
