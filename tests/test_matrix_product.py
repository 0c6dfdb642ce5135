"""The matrix as a product: collected and run from outside the checkout, on downstream layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xcpimg.matrix import cli as matrix_cli
from xcpimg.pytest_plugin import DEFAULT_CONFIGS
from xcpimg.stages import kernel_cmdline

XCPIMG = [sys.executable, "-m", "xcpimg.cli"]
#: the environment of a new pytest session (this test may run in an xdist worker, whose variables say so)
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def outside(tmp_path: Path) -> Path:
    """A working directory with no xcpimg checkout above it (no conftest, no pyproject)."""
    where = tmp_path / "downstream"
    where.mkdir()
    assert not any((p / "pyproject.toml").exists() for p in where.parents if p != Path("/"))
    return where


def test_matrix_collects_from_anywhere(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "xcpimg.matrix", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=outside(tmp_path), capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    for cfg in DEFAULT_CONFIGS:
        assert any(f"[{cfg}-bios-cd]" in i for i in ids), cfg
    assert any("test_built_installimg_iso_boots[8.3:testing-uefi-usb]" in i for i in ids)
    assert any("[8.3:testing-bios-pxe]" in i for i in ids) and any("[8.3:testing@unattended-uefi-usb]" in i
                                                                   for i in ids)


@pytest.mark.boot
def test_xcpimg_test_with_a_downstream_layer(tmp_path: Path) -> None:
    """`xcpimg test` from a downstream repository: its layer's boot argument reaches the booted
    installer's command line (the boot test checks every layer's installer-bootargs.lst words),
    and the result table names the configuration, the mode and the logs."""
    where = outside(tmp_path)
    layer = where / "mylayer"
    layer.mkdir()
    (layer / "installer-bootargs.lst").write_text("downstream-test=1\n")
    proc = subprocess.run([*XCPIMG, "test", "--xcp-config", "8.3:testing", "--boot-modes", "bios-cd",
                           "--xcp-layer", "./mylayer", f"--basetemp={tmp_path / 'pt'}", "-n", "1"],
                          cwd=where, capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("8.3:testing+mylayer"))
    cells = row.split()
    assert cells[1:3] == ["bios-cd", "passed"] and cells[6] != "-"  # seconds to init
    serial = (Path(cells[-1]) / "serial.log").read_text(errors="replace")
    # the dom0 kernel's own report (the VM stops at the init marker: the probe's line may be cut)
    cmdline = next(c for c in map(kernel_cmdline, serial.splitlines()) if c is not None)
    assert "downstream-test=1" in cmdline.split()


@pytest.mark.parametrize("args", [["--xcp-layer", "/nonexistent/layer"], ["--xcp-layer=./missing"]])
def test_a_missing_layer_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    proc = subprocess.run([*XCPIMG, "test", *args], cwd=outside(tmp_path), capture_output=True, text=True,
                          timeout=60, env=ENV)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"xcpimg test: error: --xcp-layer {args[-1].split('=')[-1]}: "
                                                "no such layer directory"]
    assert proc.stdout == ""


def test_pytest_refuses_a_missing_layer_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "xcpimg.matrix", "--collect-only", "-q",
                           "-p", "no:cacheprovider", "--xcp-layer", "/nonexistent"], cwd=outside(tmp_path),
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 4  # pytest's usage error
    assert "--xcp-layer /nonexistent: no such layer directory" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_argv_and_table() -> None:
    argv = matrix_cli.pytest_argv(False, ["--xcp-config", "8.3:base"], Path("/r.json"))
    assert argv[1:] == ["-m", "pytest", "--pyargs", "xcpimg.matrix", "-p", "no:cacheprovider", "-m", "not expensive",
                        "--xcp-report=/r.json", "-rfE", "-n", "auto", "--xcp-config", "8.3:base"]
    assert "-n" not in matrix_cli.pytest_argv(True, ["-n4"], Path("/r"))[:-1]
    assert matrix_cli.pytest_argv(True, [], Path("/r"))[8] == "expensive"
    text = matrix_cli.table([{"xcp_config": "8.3:base", "boot_mode": "uefi-cd", "outcome": "failed",
                              "stages": {"bootloader": 3.25, "hypervisor": 5.0}, "logdir": "/logs/x"}])
    header, row = text.splitlines()
    assert header.split() == ["configuration", "mode", "result", "bootloader", "hypervisor", "kernel", "init",
                              "installer", "logs"]
    assert row.split() == ["8.3:base", "uefi-cd", "failed", "3.2", "5.0", "-", "-", "-", "/logs/x"]
    assert matrix_cli.layer_paths(["--xcp-layer", "a", "-x", "--xcp-layer=b"]) == ["a", "b"]


def test_report_written_by_the_plugin(tmp_path: Path) -> None:
    """--xcp-report: the plugin's JSON results, here for a run that selects no boot test."""
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "xcpimg.matrix", "-p", "no:cacheprovider",
                           "-q", "-k", "nothing-matches-this", f"--xcp-report={report}"], cwd=outside(tmp_path),
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 5, proc.stdout  # no test selected
    assert json.loads(report.read_text()) == []
