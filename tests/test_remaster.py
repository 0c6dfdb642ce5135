"""`xcpimg remaster`: the round trip changes only what was asked, keeps the hybrid layout, is
reproducible and boots (BIOS/CD, UEFI/USB through the hybrid EFI partition); bad input fails
in one line and leaves nothing behind."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from mediakit import ANSWERFILE, assert_one_line_error, cli, diff_json, fixture_iso, inspect_json

from xcpimg.boot import boot_in_mode
from xcpimg.run import run

BOOTARG = "xcpimg.remaster=1"


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path) -> Path:
    return fixture_iso(tmp_path_factory, probe_initrd, "8.3:base")


@pytest.fixture(scope="module")
def remastered(base_iso: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("remaster")
    extra = tmp / "hello.txt"
    extra.write_text("hello from remaster\n")
    out = tmp / "re.iso"
    proc = cli("remaster", [base_iso, "-o", out, "--bootargs", BOOTARG, "--add", f"{extra}:/extra/hello.txt",
                            "-V", "XCP-NG REMASTER"], tmp)
    assert proc.returncode == 0, proc.stderr
    return out


def test_identity_is_byte_identical(base_iso: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.iso"
    proc = cli("remaster", [base_iso, "-o", out], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == base_iso.read_bytes()


def test_only_requested_changes(base_iso: Path, remastered: Path, tmp_path: Path) -> None:
    code, d = diff_json(base_iso, remastered, tmp_path)
    assert code == 1
    assert d["volume_id"] == ["XCP-ng 8.3", "XCP-NG REMASTER"]
    assert d["files"]["added"] == [{"path": "extra/hello.txt", "size": 20}] and d["files"]["removed"] == []
    assert {f["path"] for f in d["files"]["changed"]} == {
        "boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg", "boot/efiboot.img"}
    assert d["packages"] == {"added": [], "removed": [], "upgraded": [], "downgraded": []}
    assert d["layout"] is None and d["treeinfo"] is None and d["signature"] is None
    assert len(d["boot_args"]) == 18
    for change in d["boot_args"]:
        assert change["kernel"]["added"] == [BOOTARG] and change["kernel"]["removed"] == [], change
        assert change["kernel"]["new"][:2] == [change["kernel"]["old"][0], BOOTARG]  # right after /vmlinuz
        assert change["xen"] is None and change["modules"] is None


def test_hybrid_layout_intact(base_iso: Path, remastered: Path, tmp_path: Path) -> None:
    before, after = (inspect_json(p, tmp_path)["layout"] for p in (base_iso, remastered))
    strip = ("lba", "start", "sectors")

    def shape(lay: dict) -> list:
        return [[{k: v for k, v in e.items() if k not in strip} for e in lay[key] or []]
                for key in ("entries", "mbr", "gpt")]
    assert shape(before) == shape(after)
    efi = next(e for e in after["entries"] if e["platform"] == "efi")
    assert after["mbr"][1]["start"] == efi["lba"] * 4 and after["mbr"][1]["sectors"] == efi["sectors"]
    # an independent reader agrees: xorriso sees the El Torito BIOS and UEFI entries and the MBR
    report = run(["xorriso", "-indev", remastered, "-report_el_torito", "plain",
                  "-report_system_area", "plain"]).stdout.decode()
    assert "El Torito boot img :   1  BIOS" in report and "El Torito boot img :   2  UEFI" in report
    assert re.search(r"(?m)^MBR partition +: +2 +0x00 +0xef ", report), report
    assert re.search(r"(?m)^MBR partition path : +2 +/boot/efiboot\.img$", report), report
    assert re.search(r"(?m)^GPT partition path : +2 +/boot/efiboot\.img$", report), report


def test_reproducible(base_iso: Path, remastered: Path, tmp_path: Path) -> None:
    extra = tmp_path / "hello.txt"
    extra.write_text("hello from remaster\n")
    out = tmp_path / "again.iso"
    proc = cli("remaster", [base_iso, "-o", out, "--bootargs", BOOTARG, "--add", f"{extra}:/extra/hello.txt",
                            "-V", "XCP-NG REMASTER"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == remastered.read_bytes()


@pytest.mark.boot
@pytest.mark.parametrize("mode", ["bios-cd", "uefi-usb"])
def test_remastered_boots(remastered: Path, mode: str, tmp_path: Path) -> None:
    result = boot_in_mode(remastered, mode, tmp_path / "logs")
    words = (result.cmdline or "").split()
    assert BOOTARG in words and "no-repo-gpgcheck" in words, result.cmdline


def plain_iso(tmp: Path) -> Path:
    """An ISO without isolinux: a data disc."""
    tree = tmp / "data"
    tree.mkdir()
    (tree / "README").write_text("just data\n")
    out = tmp / "data.iso"
    run(["xorriso", "-as", "mkisofs", "-o", out, "-R", "-J", "-V", "DATA", tree])
    return out


@pytest.mark.parametrize("case", ["not-an-iso", "no-isolinux", "answer-not-xml", "answer-wrong-root",
                                  "add-outside", "add-missing", "add-through-link", "existing-output",
                                  "bad-volid"])
def test_bad_input(case: str, base_iso: Path, tmp_path: Path) -> None:
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "x.iso"
    file = tmp_path / "file.txt"
    file.write_text("x\n")
    source, extra, code, word = base_iso, [], 2, ""
    if case == "not-an-iso":
        source, word = file, "not an ISO image"
    elif case == "no-isolinux":
        source, word = plain_iso(tmp_path), "no isolinux boot"
    elif case == "answer-not-xml":
        bad = tmp_path / "a.xml"
        bad.write_text("<installation><keymap>us</installation>")
        extra, word = ["--answerfile", bad], "is not XML"
    elif case == "answer-wrong-root":
        bad = tmp_path / "a.xml"
        bad.write_bytes(ANSWERFILE.replace(b"installation", b"install"))
        extra, word = ["--answerfile", bad], "has root <install>"
    elif case == "add-outside":
        extra, word = ["--add", f"{file}:../../etc/evil"], "outside the ISO tree"
    elif case == "add-missing":
        extra, word = ["--add", f"{tmp_path / 'nope'}:/x"], "is not a file"
    elif case == "add-through-link":
        extra, word = ["--add", f"{file}:/install.img/x"], "not a directory"
    elif case == "existing-output":
        out.write_bytes(b"keep me")
        word = "already exists"
    elif case == "bad-volid":
        extra, word = ["-V", "X" * 40], "at most 32"
    before = {p.name: p.read_bytes() for p in outdir.iterdir()}
    proc = cli("remaster", [source, "-o", out, *extra], tmpdir)
    assert_one_line_error(proc, "remaster", code, word)
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == before
    assert [p for p in tmpdir.iterdir() if stat.S_ISDIR(p.stat().st_mode)] == []


@pytest.fixture(scope="module")
def xorriso_remastered(base_iso: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ISO mastered by xorriso from an xcpimg tree, and its remaster with --bootargs."""
    from test_inspect import xorriso_master
    tmp = tmp_path_factory.mktemp("xorriso")
    source = xorriso_master(base_iso, tmp / "tree", tmp / "xorriso.iso")
    out = tmp / "re.iso"
    proc = cli("remaster", [source, "-o", out, "--bootargs", BOOTARG], tmp)
    assert proc.returncode == 0, proc.stderr
    return source, out


def test_remaster_foreign_iso(xorriso_remastered: tuple[Path, Path], tmp_path: Path) -> None:
    source, out = xorriso_remastered
    code, d = diff_json(source, out, tmp_path)
    assert code == 1 and d["layout"] is None and d["volume_id"] is None
    assert {f["path"] for f in d["files"]["changed"]} == {
        "boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg", "boot/efiboot.img"}
    assert len(d["boot_args"]) == 18 and all(c["kernel"]["added"] == [BOOTARG] for c in d["boot_args"])


@pytest.mark.boot
def test_remastered_foreign_iso_boots(xorriso_remastered: tuple[Path, Path], tmp_path: Path) -> None:
    result = boot_in_mode(xorriso_remastered[1], "uefi-usb", tmp_path / "logs")
    assert BOOTARG in (result.cmdline or "").split(), result.cmdline
