"""``boot()`` and ``xcpimg boot`` before and at QEMU start: every bad argument is one line
and a non-zero exit before any VM runs; a QEMU that cannot start gives its reason and
leaves no process behind (QEMU runs briefly in one test).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from xcpimg import cli
from xcpimg.boot import boot, process
from xcpimg.boot import cli as boot_cli
from xcpimg.errors import BootError, UsageError


def _fake_iso(path: Path) -> Path:
    data = bytearray(2048 * 20)
    data[16 * 2048:16 * 2048 + 6] = b"\x01CD001"
    data[17 * 2048:17 * 2048 + 30] = b"\x00CD001\x01EL TORITO SPECIFICATION"
    data[18 * 2048:18 * 2048 + 6] = b"\xffCD001"
    path.write_bytes(bytes(data))
    return path


def _no_vm_left() -> None:
    out = subprocess.run(["pgrep", "-f", "xcpimg-vm-"], capture_output=True, text=True).stdout
    mine = [p for p in out.split() if p.isdigit() and int(p) in process.live()]
    assert not mine and not process.live()


def test_missing_iso_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(BootError) as err:
        boot(tmp_path / "nope.iso", "bios", "cd", logdir=tmp_path / "logs")
    assert str(err.value) == f"ISO not found: {tmp_path / 'nope.iso'}"
    with pytest.raises(BootError, match="ISO or PXE tree not found"):
        boot(tmp_path / "nope", "uefi", "pxe", logdir=tmp_path / "logs")
    assert not (tmp_path / "logs").exists()


def test_bad_firmware_path_is_one_clear_line(tmp_path: Path) -> None:
    iso = _fake_iso(tmp_path / "a.iso")
    with pytest.raises(BootError) as err:
        boot(iso, "uefi", "cd", logdir=tmp_path / "logs", firmware_file=tmp_path / "OVMF_NOPE.fd")
    assert str(err.value) == f"firmware file not found: {tmp_path / 'OVMF_NOPE.fd'}"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": -1.0}, "timeout must be a positive number of seconds, got -1.0"),
    ({"timeout": 0.0}, "timeout must be a positive number of seconds, got 0.0"),
    ({"timeout": float("nan")}, "timeout must be a positive number of seconds, got nan"),
    ({"timeout": float("inf")}, "timeout must be a positive number of seconds, got inf"),
    ({"memory": -5}, "memory must be at least 64 MiB, got -5"),
    ({"until": "desktop"}, "unknown boot stage 'desktop'"),
])
def test_bad_values_refused_before_qemu(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    iso = _fake_iso(tmp_path / "a.iso")
    with pytest.raises(UsageError) as err:
        boot(iso, "bios", "cd", logdir=tmp_path / "logs", accel="tcg", **kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(message) and not (tmp_path / "logs").exists()


def test_logdir_that_cannot_be_created(tmp_path: Path) -> None:
    iso = _fake_iso(tmp_path / "a.iso")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BootError) as err:
        boot(iso, "bios", "cd", logdir=tmp_path / "file" / "logs", accel="tcg")
    assert str(err.value) == f"cannot create log directory {tmp_path / 'file' / 'logs'}: Not a directory"
    with pytest.raises(BootError, match=r"cannot create log directory /proc/xcpimg-logs: "):
        boot(iso, "bios", "cd", logdir=Path("/proc/xcpimg-logs"), accel="tcg")
    _no_vm_left()


@pytest.mark.parametrize("argv", [
    ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "nan"], ["--memory", "-5"],
    ["--logdir", "/proc/xcpimg-logs"], ["--media", "pxe", "--no-eltorito"],
])
def test_cli_bad_values_are_one_line_and_nonzero(tmp_path: Path, argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    iso = _fake_iso(tmp_path / "a.iso")
    code = cli.main(["boot", str(iso), "--accel", "tcg", *argv])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and len(err.splitlines()) == 1 and err.startswith("xcpimg boot: error: "), err
    assert "Traceback" not in err
    _no_vm_left()


def test_qemu_that_cannot_start_gives_its_reason(tmp_path: Path) -> None:
    iso = _fake_iso(tmp_path / "a.iso")
    bad = tmp_path / "bios.bin"
    bad.write_bytes(b"not a bios")  # QEMU refuses a BIOS image whose size is not a multiple of 64 KiB
    with pytest.raises(BootError) as err:
        boot(iso, "bios", "cd", logdir=tmp_path / "logs", firmware_file=bad, accel="tcg")
    message = str(err.value)
    assert message.startswith("QEMU could not start: ") and "\n" not in message
    assert "bios" in message.lower()
    assert (tmp_path / "logs" / "qemu-argv.txt").read_text().startswith("/")
    _no_vm_left()


def test_cli_arguments_and_missing_iso(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    boot_cli.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "x.iso"), "--firmware", "uefi", "--media", "pxe",
                              "--until", "kernel", "--timeout", "30", "--accel", "tcg"])
    assert (args.firmware, args.media, args.until, args.timeout) == ("uefi", "pxe", "kernel", 30.0)
    with pytest.raises(BootError, match="ISO or PXE tree not found"):
        boot_cli.command(args)
