"""Unattended media: the answerfile is validated, lands in install.img for every compression
xcpimg writes (appended segment, or a rebuilt gzip image) and is seen by the installer's init
at boot; gpg-check words move from the boot line into the answerfile."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mediakit import ANSWERFILE, cli, fixture_iso, inspect_json, probe_with

from xcpimg import compress
from xcpimg.errors import UsageError
from xcpimg.media import answerfile, initrd
from xcpimg.media.reader import IsoReader
from xcpimg.stages import ANSWERFILE_PREFIX, CMDLINE_PREFIX, INIT_MARKER

ISOLINUX = """LABEL install
    KERNEL mboot.c32
    APPEND /boot/xen.gz no-gpgcheck com1=115200,8n1 --- /boot/vmlinuz no-repo-gpgcheck console=hvc0 --- /install.img
LABEL alt
    KERNEL mboot.c32
    APPEND /boot/xen.gz --- /boot/alt/vmlinuz no-gpgcheck kernel-alt --- /install.img
"""


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path) -> Path:
    return fixture_iso(tmp_path_factory, probe_initrd, "8.3:base")


@pytest.fixture(scope="module")
def answer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("answer") / "answerfile.xml"
    path.write_bytes(ANSWERFILE)
    return path


# ------------------------------------------------------------------------- pure parts

def test_validation() -> None:
    for root in answerfile.ROOTS:
        assert answerfile.parse(f"<{root}/>".encode()).root == root
    with pytest.raises(UsageError, match="is not XML"):
        answerfile.parse(b"<installation>")
    with pytest.raises(UsageError, match=r"has root <answers>, expected <installation>, <upgrade> or <restore>"):
        answerfile.parse(b"<answers/>")
    assert answerfile.parse(answerfile.SAMPLE).root == "installation"


def test_root_attributes() -> None:
    original = answerfile.parse(ANSWERFILE)
    moved = answerfile.with_root_attributes(original, {"repo-gpgcheck": "false", "gpgcheck": "false"})
    root = ET.fromstring(moved.data)
    assert root.attrib == {"mode": "fresh", "repo-gpgcheck": "false", "gpgcheck": "false"}
    assert b"<!-- test answerfile -->" in moved.data and moved.data.count(b"<keymap>us</keymap>") == 1
    again = answerfile.with_root_attributes(answerfile.parse(b"<installation repo-gpgcheck='true'/>"),
                                            {"repo-gpgcheck": "false"})
    assert ET.fromstring(again.data).attrib == {"repo-gpgcheck": "false"}


def test_unattended_menu() -> None:
    text, removed = answerfile.unattended_menu(ISOLINUX)
    assert removed == {"no-repo-gpgcheck", "no-gpgcheck"}
    lines = [ln.split() for ln in text.splitlines() if "APPEND" in ln]
    assert lines[0] == ["APPEND", "/boot/xen.gz", "no-gpgcheck", "com1=115200,8n1", "---", "/boot/vmlinuz",
                        "answerfile=file:///answerfile.xml", "install", "console=hvc0", "---", "/install.img"]
    assert lines[1][3:7] == ["/boot/alt/vmlinuz", "answerfile=file:///answerfile.xml", "install", "kernel-alt"]
    again, removed = answerfile.unattended_menu(text)  # idempotent
    assert again == text and removed == set()


def test_check_unattended() -> None:
    good = f"junk\n{ANSWERFILE_PREFIX}/answerfile.xml installation\n{INIT_MARKER}\n"
    cmdline = "answerfile=file:///answerfile.xml install console=hvc0"
    assert answerfile.check_unattended(good + CMDLINE_PREFIX + cmdline, cmdline, "installation") == []
    problems = answerfile.check_unattended(f"{INIT_MARKER}\n", cmdline + " no-repo-gpgcheck")
    assert problems == ["the installer reported no answerfile",
                        "gpg-check words on the command line: no-repo-gpgcheck"]
    url_form = good.replace(" /answerfile.xml ", " file:///answerfile.xml ")  # the fixture installer's form
    assert answerfile.check_unattended(url_form, cmdline, "installation") == []
    assert "expected /answerfile.xml <installation>" in answerfile.check_unattended(
        good.replace("installation", "restore"), cmdline, "installation")[0]


# ------------------------------------------------------------------------- install.img, each compression

@pytest.mark.parametrize("method", compress.METHODS)
def test_answerfile_in_installimg(method: str, tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path,
                                  tmp_path: Path) -> None:
    src = probe_with(tmp_path_factory, probe_initrd, method)
    out = tmp_path / "install.img"
    answerfile.embed(src, out, answerfile.parse(ANSWERFILE), tmp_path, 1704067200)
    segments = []
    for m, found in initrd.segments(out):
        assert list(found), m  # every segment holds members
        segments.append(m)
    expected = [method, None] if method in answerfile.APPEND_OK else [method]
    assert segments == expected
    assert initrd.compression(out) == method
    assert initrd.file_data(out, "answerfile.xml") == ANSWERFILE
    assert initrd.file_data(out, "init").startswith(b"#!/bin/sh")  # the original image is all there
    if method in answerfile.APPEND_OK:
        assert out.read_bytes().startswith(src.read_bytes())


@pytest.mark.boot
@pytest.mark.parametrize("method", compress.METHODS)
def test_answerfile_boots_for_each_compression(method: str, base_iso: Path, answer_file: Path,
                                               tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path,
                                               tmp_path: Path) -> None:
    src = probe_with(tmp_path_factory, probe_initrd, method)
    iso = tmp_path / f"unattended-{method}.iso"
    proc = cli("remaster", [base_iso, "-o", iso, "--install-img", src, "--answerfile", answer_file], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert answerfile.boot_unattended(iso, "bios-cd", tmp_path / "logs", root="installation") == []


# ------------------------------------------------------------------------- xcpimg iso --answerfile

@pytest.fixture(scope="module")
def unattended_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path, answer_file: Path) -> Path:
    from xcpimg.fixture_repo import ensure_fixture_repo
    fx = ensure_fixture_repo()
    tmp = tmp_path_factory.mktemp("unattended")
    out = tmp / "unattended.iso"
    proc = cli("iso", ["-o", out, "-V", "XCP-ng 8.3", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
                       "--answerfile", answer_file, "--pkgtool", "dnf", "--arch", "x86_64", "8.3:testing",
                       probe_initrd], tmp)
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and 'no-repo-gpgcheck -> repo-gpgcheck="false"' in notes[0], proc.stderr
    return out


def test_iso_answerfile(unattended_iso: Path, tmp_path: Path) -> None:
    report = inspect_json(unattended_iso, tmp_path, "--installimg")
    assert len(report["menus"]) == 3
    for menu, entries in report["menus"].items():
        installers = [e for e in entries if e["kernel"] and e["kernel"]["path"].endswith("/vmlinuz")]
        assert len(installers) == 6
        for e in installers:
            args = e["kernel"]["args"]
            assert args[:2] == ["answerfile=file:///answerfile.xml", "install"], (menu, e)
            assert "no-repo-gpgcheck" not in args and "no-gpgcheck" not in args, (menu, e)
    assert report["install_img"]["answerfile"] == "installation"
    assert report["install_img"]["segments"] == ["gzip"]  # the probe is gzip: rebuilt, one stream
    with IsoReader(unattended_iso) as iso:
        with (tmp_path / "img").open("wb") as f:
            iso.copy_to("install.img", f)
    data = initrd.file_data(tmp_path / "img", "answerfile.xml")
    assert data is not None and ET.fromstring(data).get("repo-gpgcheck") == "false"
    assert ET.fromstring(data).get("gpgcheck") is None


def test_remaster_moves_both_words(base_iso: Path, answer_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "both.iso"
    proc = cli("remaster", [base_iso, "-o", out, "--bootargs", "no-gpgcheck", "--answerfile", answer_file],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'note: .*no-gpgcheck -> gpgcheck="false", no-repo-gpgcheck -> repo-gpgcheck="false"',
                     proc.stderr), proc.stderr
    with IsoReader(out) as iso:
        with (tmp_path / "img").open("wb") as f:
            iso.copy_to("install.img", f)
        cfgs = [iso.read(p).decode() for p in ("boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg")]
    data = initrd.file_data(tmp_path / "img", "answerfile.xml")
    assert data is not None
    assert {k: v for k, v in ET.fromstring(data).attrib.items() if "gpgcheck" in k} == {
        "repo-gpgcheck": "false", "gpgcheck": "false"}
    assert all("gpgcheck" not in cfg for cfg in cfgs)


@pytest.mark.boot
@pytest.mark.parametrize("mode", ["bios-cd", "uefi-usb"])
def test_unattended_iso_boots(unattended_iso: Path, mode: str, tmp_path: Path) -> None:
    assert answerfile.boot_unattended(unattended_iso, mode, tmp_path / "logs", root="installation") == []


@pytest.mark.parametrize("content,word", [(b"<installation><keymap>", "is not XML"),
                                          (b"<?xml version='1.0'?><answers/>", "has root <answers>")])
def test_iso_refuses_bad_answerfile(content: bytes, word: str, probe_initrd: Path, tmp_path: Path) -> None:
    from mediakit import assert_one_line_error
    bad = tmp_path / "bad.xml"
    bad.write_bytes(content)
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    out = tmp_path / "out.iso"
    proc = cli("iso", ["-o", out, "-V", "X", "--answerfile", bad, "8.3:testing", probe_initrd], tmpdir)
    assert_one_line_error(proc, "iso", 2, word)
    assert not out.exists() and list(tmpdir.iterdir()) == []


def test_signed_iso_keeps_answerfile(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path,
                                     answer_file: Path, tmp_path: Path) -> None:
    """A signed ISO has no gpg-check words to move: the answerfile goes in unchanged, no note."""
    import sys
    signer = Path(sys.executable).parent / "xcpimg-sample-sign"
    iso = fixture_iso(tmp_path_factory, probe_initrd, "8.3:testing", sign_script=signer, answerfile=answer_file)
    report = inspect_json(iso, tmp_path, "--installimg")
    assert report["repository"]["signature"]["valid"]
    assert report["install_img"]["answerfile"] == "installation"
    with IsoReader(iso) as reader:
        with (tmp_path / "img").open("wb") as f:
            reader.copy_to("install.img", f)
        menu = reader.read("boot/isolinux/isolinux.cfg").decode()
    assert initrd.file_data(tmp_path / "img", "answerfile.xml") == ANSWERFILE
    assert "gpgcheck" not in menu and menu.count("answerfile=file:///answerfile.xml install") == 6
