"""ISO mastering: efiboot.img (mtools), pycdlib mastering, hybrid MBR/GPT, reproducibility.

Read-back goes through independent readers: pycdlib's reader, isoinfo, xorriso,
sgdisk and a parse of the MBR/GPT bytes here. The QEMU test (marker ``boot``)
boots the hybrid ISO from a USB stick under SeaBIOS.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pycdlib
import pytest
from hostkit import need_file, need_tool

from xcpimg.errors import BuildError, UsageError
from xcpimg.iso import efiboot, hybrid, master
from xcpimg.run import build_epoch, output, run

ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHDPFX = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
VOLID = "XCPIMG_TEST"
EPOCH = 1700000000  # 2023-11-14T22:13:20Z
LONG_NAME = "x" * 96 + ".rpm"  # 100 characters
TOO_LONG = "y" * 116 + ".rpm"  # 120 characters: Joliet keeps 103
ISOLINUX_CFG = "SERIAL 0 115200\nPROMPT 1\nTIMEOUT 0\n"



@pytest.fixture(autouse=True)
def syslinux_files() -> None:
    """The host's isolinux (isolinux) and ldlinux.c32 (syslinux-common, which isolinux only recommends)."""
    need_file(ISOLINUX, "isolinux")
    need_file(ISOHDPFX, "isolinux")
    need_file(LDLINUX, "syslinux-common")


def seeded_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_tree(root: Path) -> Path:
    """A small staging tree like the real one, plus the awkward cases."""
    tree = root / "tree"
    iso_dir = tree / "boot" / "isolinux"
    iso_dir.mkdir(parents=True)
    shutil.copyfile(ISOLINUX, iso_dir / "isolinux.bin")
    shutil.copyfile(LDLINUX, iso_dir / "ldlinux.c32")
    (iso_dir / "isolinux.cfg").write_text(ISOLINUX_CFG)
    (tree / "EFI" / "xenserver").mkdir(parents=True)
    (tree / "EFI" / "xenserver" / "grub.cfg").write_text("set timeout=5\n")
    (root / "BOOTX64.EFI").write_bytes(seeded_bytes(1, 40000))
    efiboot.make_efiboot(tree / "boot" / "efiboot.img", {
        "EFI/BOOT/BOOTX64.EFI": root / "BOOTX64.EFI",
        "EFI/xenserver/grub.cfg": tree / "EFI" / "xenserver" / "grub.cfg"})
    (tree / "install.img").write_bytes(seeded_bytes(2, 300_000))
    (tree / "boot" / "vmlinuz").write_bytes(seeded_bytes(3, 5000))
    (tree / "boot" / "vmlinuz-4.19-xen").symlink_to("vmlinuz")
    (tree / ".treeinfo").write_text("[general]\n")
    packages = tree / "Packages"
    packages.mkdir()
    (packages / LONG_NAME).write_bytes(b"long name\n")
    (packages / TOO_LONG).write_bytes(b"too long\n")
    (packages / "a-b.txt").write_text("dash\n")
    (packages / "a_b.txt").write_text("underscore\n")
    script = tree / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o700)
    (tree / "private").write_text("secret\n")
    (tree / "private").chmod(0o600)
    deep = tree.joinpath(*"abcdefghij")
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep\n")
    return tree


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tree, hybrid iso) shared by the read-back tests."""
    root = tmp_path_factory.mktemp("master")
    tree = make_tree(root)
    iso = root / "out.iso"
    master.master_iso(tree, iso, VOLID, isohdpfx=ISOHDPFX.read_bytes(), epoch=EPOCH)
    return tree, iso


def open_iso(path: Path) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def read(iso: pycdlib.PyCdlib, **path: str) -> bytes:
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, **path)
    return buf.getvalue()


# --- efiboot.img ---------------------------------------------------------------------------------

def test_mtools_argv_exact(tmp_path: Path) -> None:
    img = tmp_path / "e.img"
    argvs = efiboot.mtools_argvs(img, {"EFI/xenserver/grub.cfg": Path("/s/grub.cfg"),
                                       "/EFI/BOOT/BOOTX64.EFI": Path("/s/g.efi"),
                                       "EFI/xenserver/grubx64.efi": Path("/s/g.efi")}, 2880)
    assert argvs == [
        ["mformat", "-i", str(img), "-N", "0", "-C", "-f", "2880", "-L", "16", "::"],
        ["mmd", "-i", str(img), "::/EFI", "::/EFI/BOOT", "::/EFI/xenserver"],
        ["mcopy", "-i", str(img), "-D", "o", "/s/g.efi", "::/EFI/BOOT/BOOTX64.EFI"],
        ["mcopy", "-i", str(img), "-D", "o", "/s/grub.cfg", "::/EFI/xenserver/grub.cfg"],
        ["mcopy", "-i", str(img), "-D", "o", "/s/g.efi", "::/EFI/xenserver/grubx64.efi"],
    ]
    assert efiboot.mformat_argv(img, 8192) == ["mformat", "-i", str(img), "-N", "0", "-C", "-T", "16384",
                                               "-h", "64", "-s", "32", "::"]


def test_efiboot_rejects_bad_image_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid path"):
        efiboot.make_efiboot(tmp_path / "e.img", {"EFI/../x": ISOLINUX})


def test_efiboot_contents_and_determinism(tmp_path: Path) -> None:
    src = tmp_path / "BOOTX64.EFI"
    src.write_bytes(seeded_bytes(7, 50000))
    cfg = tmp_path / "grub.cfg"
    cfg.write_text("search --file --set /install.img\n")
    files = {"EFI/BOOT/BOOTX64.EFI": src, "EFI/xenserver/grub.cfg": cfg, "EFI/xenserver/grubx64.efi": src}
    efiboot.make_efiboot(tmp_path / "a.img", files)
    os.utime(src, (1, 1))  # source mtimes must not matter
    efiboot.make_efiboot(tmp_path / "b.img", files)
    a = (tmp_path / "a.img").read_bytes()
    assert a == (tmp_path / "b.img").read_bytes()
    assert len(a) == 2880 * 1024
    assert a[0x27:0x2B] == b"\0\0\0\0"  # volume serial pinned by -N 0
    got = run(["mtype", "-i", tmp_path / "a.img", "::/EFI/xenserver/grub.cfg"]).stdout
    assert got == cfg.read_bytes()
    copy = tmp_path / "copy.efi"
    run(["mcopy", "-i", tmp_path / "a.img", "::/EFI/BOOT/BOOTX64.EFI", copy])
    assert copy.read_bytes() == src.read_bytes()
    listing = output(["mdir", "-i", tmp_path / "a.img", "::/EFI/BOOT"])
    day = time.strftime("%Y-%m-%d", time.gmtime(build_epoch()))
    assert f"BOOTX64  EFI     50000 {day}   0:00" in listing  # SOURCE_DATE_EPOCH, never today


def test_efiboot_custom_size(tmp_path: Path) -> None:
    efiboot.make_efiboot(tmp_path / "e.img", {"EFI/BOOT/BOOTX64.EFI": ISOLINUX}, size_kib=8192)
    assert (tmp_path / "e.img").stat().st_size == 8192 * 1024


@pytest.mark.parametrize("size", [4000 * 1024, 2870 * 1024])  # caught early / caught by mcopy
def test_efiboot_too_big(tmp_path: Path, size: int) -> None:
    big = tmp_path / "big.efi"
    big.write_bytes(seeded_bytes(9, size))
    out = tmp_path / "e.img"
    with pytest.raises(BuildError, match="do not fit in a 2880 KiB image"):
        efiboot.make_efiboot(out, {"EFI/BOOT/BOOTX64.EFI": big})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.efi"]


# --- names ---------------------------------------------------------------------------------------

def test_iso9660_and_joliet_names_unique() -> None:
    names = master._Names()
    assert names.iso("", "isolinux.cfg", False) == "ISOLINUX.CFG;1"
    assert names.iso("", "vmlinuz", False) == "VMLINUZ.;1"
    assert names.iso("", "a-b.txt", False) == "A_B.TXT;1"
    assert names.iso("", "a_b.txt", False) == "A_B_1.TXT;1"
    assert names.iso("", "x86_64-efi", True) == "X86_64_EFI"
    long_file = names.iso("", "kernel-alt-4.19.322-1.xcpng8.3.x86_64.rpm", False)
    assert long_file.endswith(".RPM;1") and len(long_file.split(";")[0]) == 31  # 30 + the dot
    long_ext = [names.iso("", "f." + "e" * 40, False) for _ in range(3)]
    assert long_ext == ["F." + "E" * 12 + ";1", "F_1." + "E" * 12 + ";1", "F_2." + "E" * 12 + ";1"]
    assert names.iso("", ".treeinfo", False) == ".TREEINFO;1"
    assert names.joliet("", LONG_NAME) == LONG_NAME
    cut = names.joliet("", TOO_LONG)
    assert len(cut) == 103 and cut.endswith(".rpm")
    again = names.joliet("", TOO_LONG[:-5] + "z.rpm")
    assert len(again) == 103 and again.endswith("~1.rpm") and again != cut
    assert names.joliet("", "a:b?.txt") == "a_b_.txt"


@pytest.mark.parametrize("volid, err", [
    ("", "must not be empty"), ("X" * 33, "at most 32"), ("bad\u00e9", "invalid characters"),
    ("a|b", "invalid characters")])
def test_bad_volid(tmp_path: Path, volid: str, err: str) -> None:
    with pytest.raises(UsageError, match=err):
        master.master_iso(tmp_path, tmp_path / "x.iso", volid)


def test_volid_32_characters(built: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _iso = built
    volid = "XCP-ng 8.3.0 (testing) 2024.1_ab"
    master.master_iso(tree, tmp_path / "v.iso", volid, epoch=EPOCH)
    assert f"Volume id: {volid}\n" in output(["isoinfo", "-d", "-i", tmp_path / "v.iso"])
    iso = open_iso(tmp_path / "v.iso")
    try:
        assert iso.joliet_vd.volume_identifier.decode("utf-16_be") == volid[:16]
    finally:
        iso.close()


# --- read back -----------------------------------------------------------------------------------

def test_files_and_names_read_back(built: tuple[Path, Path]) -> None:
    tree, path = built
    iso = open_iso(path)
    try:
        rr_files = {}
        for dirpath, _dirs, files in iso.walk(rr_path="/"):
            for name in files:
                rr_files[f"{dirpath.rstrip('/')}/{name}"] = name
        expected = {"/" + str(p.relative_to(tree)) for p in tree.rglob("*")
                    if p.is_file() and not p.is_symlink()} | {"/boot/isolinux/boot.cat"}
        assert expected <= set(rr_files)
        assert read(iso, rr_path=f"/Packages/{LONG_NAME}") == b"long name\n"
        assert read(iso, joliet_path=f"/Packages/{LONG_NAME}") == b"long name\n"
        assert read(iso, rr_path="/install.img") == seeded_bytes(2, 300_000)
        assert read(iso, iso_path="/BOOT/ISOLINUX/ISOLINUX.CFG;1") == ISOLINUX_CFG.encode()
        assert read(iso, iso_path="/PACKAGES/A_B_1.TXT;1") == b"underscore\n"
        assert read(iso, rr_path="/a/b/c/d/e/f/g/h/i/j/leaf") == b"deep\n"
        joliet_pkgs = {c.file_identifier().decode("utf-16_be")
                       for c in iso.list_children(joliet_path="/Packages") if c.is_file()}
        assert LONG_NAME in joliet_pkgs
        assert TOO_LONG[:99] + ".rpm" in joliet_pkgs
        link = iso.get_record(rr_path="/boot/vmlinuz-4.19-xen")
        assert link.rock_ridge.is_symlink() and link.rock_ridge.symlink_path() == b"vmlinuz"
        modes = {name: iso.get_record(rr_path=name).rock_ridge.get_file_mode()
                 for name in ("/run.sh", "/private", "/Packages")}
        assert modes == {"/run.sh": 0o100555, "/private": 0o100444, "/Packages": 0o40555}
        efi_img = read(iso, rr_path="/boot/efiboot.img")
        assert efi_img == (tree / "boot" / "efiboot.img").read_bytes()
    finally:
        iso.close()


def test_isoinfo_and_dates(built: tuple[Path, Path]) -> None:
    _tree, path = built
    info = output(["isoinfo", "-d", "-i", path])
    assert f"Volume id: {VOLID}" in info
    assert "Joliet with UCS level 3 found" in info
    assert "Rock Ridge signatures version 1 found" in info
    assert "Bootid 88 (bootable)" in info and "Boot media 0 (No Emulation Boot)" in info
    assert "Nsect 4" in info
    pvd = path.read_bytes()[16 * 2048:17 * 2048]
    assert pvd[813:830] == b"2023111422132000\0"  # creation date: the epoch, in UTC
    assert pvd[830:847] == b"2023111422132000\0"  # modification date
    listing = output(["isoinfo", "-l", "-R", "-i", path])
    entries = [line for line in listing.splitlines() if line[:1] in ("d", "-", "l")]
    assert len(entries) > 30 and all("Nov 14 2023" in line for line in entries)


def test_el_torito_xorriso(built: tuple[Path, Path]) -> None:
    _tree, path = built
    report = output(["xorriso", "-indev", path, "-report_el_torito", "plain"])
    images = [line.split(":", 1)[1].split() for line in report.splitlines()
              if line.startswith("El Torito boot img :")]
    assert images == [["1", "BIOS", "y", "none", "0x0000", "0x00", "4", images[0][7]],
                      ["2", "UEFI", "y", "none", "0x0000", "0x00", "5760", images[1][7]]]
    assert "El Torito cat path : /boot/isolinux/boot.cat" in report
    assert "El Torito img path :   1  /boot/isolinux/isolinux.bin" in report
    assert "El Torito img opts :   1  boot-info-table isohybrid-suitable" in report
    assert "El Torito img path :   2  /boot/efiboot.img" in report


def test_system_area_xorriso_and_sgdisk(built: tuple[Path, Path]) -> None:
    _tree, path = built
    size = path.stat().st_size
    report = output(["xorriso", "-indev", path, "-report_system_area", "plain"])
    assert "System area summary: MBR isohybrid cyl-align-on GPT" in report
    mbr_lines = [line.split(":", 1)[1].split() for line in report.splitlines()
                 if line.startswith("MBR partition      :")]
    assert mbr_lines[0] == ["1", "0x80", "0x00", "0", str(size // 512)]
    assert mbr_lines[1][:3] == ["2", "0x00", "0xef"] and mbr_lines[1][4] == "5760"
    assert "MBR partition path :   2  /boot/efiboot.img" in report
    assert "GPT partition path :   2  /boot/efiboot.img" in report
    assert f"GPT lba range      :      34  {size // 512 - 34}  {size // 512 - 1}" in report
    lowered = report.lower()
    assert "crc" not in lowered and "backup" not in lowered and "damaged" not in lowered
    proc = run(["sgdisk", "-v", path], check=False)
    text = proc.stdout.decode()
    for word in ("CRC", "backup", "self-pointer", "Mismatched", "differ"):
        assert word not in text, text
    # What remains are the two overlaps inherent to the isohybrid layout (isohybrid's own
    # output gets exactly these): MBR partition 1 holds partition 2, GPT entry 1 starts at 0.
    problems = [line for line in text.splitlines() if line.startswith(("Problem", "Warning", "Caution"))]
    assert problems == ["Problem: MBR partitions 1 and 2 overlap!",
                        "Warning! Main partition table overlaps the first partition by 34 blocks!"]


def parse_gpt(data: bytes, lba: int) -> tuple[tuple, bytes]:
    header = data[lba * 512:lba * 512 + 92]
    fields = struct.unpack("<8sIIIIQQQQ16sQIII", header)
    assert zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:]) == fields[3]
    entries = data[fields[10] * 512:fields[10] * 512 + fields[11] * fields[12]]
    assert zlib.crc32(entries) == fields[13]
    return fields, entries


def test_mbr_and_gpt_own_parse(built: tuple[Path, Path]) -> None:
    _tree, path = built
    data = path.read_bytes()
    iso = open_iso(path)
    try:
        efi_rec = iso.get_record(rr_path="/boot/efiboot.img")
        efi_start, efi_len = efi_rec.extent_location() * 4, efi_rec.get_data_length()
        bios_lba = iso.get_record(rr_path="/boot/isolinux/isolinux.bin").extent_location()
        volume_sectors = iso.pvd.space_size * 4
    finally:
        iso.close()
    size = len(data)
    assert size % (1 << 20) == 0 and size - volume_sectors * 512 >= hybrid.GPT_SPACE
    assert data[:432] == ISOHDPFX.read_bytes()[:432]
    assert data[510:512] == b"\x55\xaa"
    assert struct.unpack_from("<I", data, 432)[0] == bios_lba * 4
    assert struct.unpack_from("<I", data, 440)[0] == hybrid.Ids.from_volid(VOLID).mbr_id
    parts = [struct.unpack_from("<B3sB3sII", data, 446 + 16 * i) for i in range(4)]
    assert parts[0] == (0x80, b"\0\x01\0", 0x00, bytes([63, 32, size // (1 << 20) - 1]), 0, size // 512)
    assert parts[1] == (0x00, b"\xfe\xff\xff", 0xEF, b"\xfe\xff\xff", efi_start, efi_len // 512)
    assert parts[2][2] == parts[3][2] == 0
    last = size // 512 - 1
    primary, p_entries = parse_gpt(data, 1)
    backup, b_entries = parse_gpt(data, last)
    assert primary[5:9] == (1, last, 34, last - 33) and primary[10] == 2
    assert backup[5:9] == (last, 1, 34, last - 33) and backup[10] == last - 32
    assert p_entries == b_entries and primary[9] == backup[9]
    e1 = struct.unpack_from("<16s16sQQQ72s", p_entries, 0)
    e2 = struct.unpack_from("<16s16sQQQ72s", p_entries, 128)
    assert (e1[2], e1[3]) == (0, volume_sectors - 1)
    assert (e2[2], e2[3]) == (efi_start, efi_start + efi_len // 512 - 1)
    assert uuid.UUID(bytes_le=e1[0]) == uuid.UUID(bytes_le=e2[0]) == hybrid.GPT_TYPE_BASIC_DATA
    assert e1[5].decode("utf-16-le").rstrip("\0") == "ISOHybrid ISO"
    assert p_entries[256:] == bytes(len(p_entries) - 256)


def test_hybrid_layout_equals_isohybrid(built: tuple[Path, Path], tmp_path: Path) -> None:
    """genisoimage's ISO made hybrid by isohybrid --uefi and by hybrid.make_hybrid: same layout."""
    tree, _iso = built
    plain = tmp_path / "g.iso"
    shutil.copytree(tree, tmp_path / "t", symlinks=True)
    run(["genisoimage", "-quiet", "-o", plain, "-r", "-J", "-joliet-long", "-V", VOLID,
         "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot", "-e", "boot/efiboot.img",
         "-no-emul-boot", tmp_path / "t"])
    theirs, ours = tmp_path / "theirs.iso", tmp_path / "ours.iso"
    shutil.copyfile(plain, theirs)
    shutil.copyfile(plain, ours)
    run(["isohybrid", "--uefi", "-i", str(hybrid.Ids.from_volid(VOLID).mbr_id), theirs])
    hybrid.make_hybrid(ours, ISOHDPFX.read_bytes(), VOLID)
    a, b = theirs.read_bytes(), ours.read_bytes()
    assert len(a) == len(b)
    assert a[:512] == b[:512]  # MBR: code, boot LBA, id, both partitions
    last = len(a) // 512 - 1
    for lba in (1, last):
        ha, ea = parse_gpt(a, lba)
        hb, eb = parse_gpt(b, lba)
        assert ha[:3] + ha[5:9] + ha[10:13] == hb[:3] + hb[5:9] + hb[10:13]
        for i in (0, 1):
            xa = struct.unpack_from("<16s16sQQQ72s", ea, 128 * i)
            xb = struct.unpack_from("<16s16sQQQ72s", eb, 128 * i)
            assert xa[0] == xb[0] and xa[2:] == xb[2:]  # same type, extents, flags, names; not GUIDs
        assert ea[256:] == eb[256:]
    gpt_a = a[512:512 + hybrid.GPT_SPACE]
    assert a[512 + hybrid.GPT_SPACE:-hybrid.GPT_SPACE] == b[512 + hybrid.GPT_SPACE:-hybrid.GPT_SPACE]
    assert gpt_a != b[512:512 + hybrid.GPT_SPACE]  # the ids differ: isohybrid's are random


def test_progress_on_a_tty(built: tuple[Path, Path], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    tree, _iso = built
    master.master_iso(tree, tmp_path / "p.iso", VOLID, epoch=EPOCH, progress=True)
    shown = err.getvalue()
    assert shown.startswith("\rmastering p.iso:") and shown.endswith("100% (3/3 MiB)\n"), shown[-80:]


def test_no_progress_without_tty(built: tuple[Path, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    tree, _iso = built
    master.master_iso(tree, tmp_path / "p.iso", VOLID, epoch=EPOCH, progress=True)
    assert capsys.readouterr().err == ""


def test_plain_iso_without_isohdpfx(built: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _iso = built
    out = tmp_path / "plain.iso"
    master.master_iso(tree, out, VOLID, epoch=EPOCH)
    data = out.read_bytes()
    assert data[:32768] == bytes(32768)
    iso = open_iso(out)
    try:
        assert len(data) == iso.pvd.space_size * 2048
    finally:
        iso.close()


def test_bios_only_hybrid(built: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _iso = built
    out = tmp_path / "bios.iso"
    master.master_iso(tree, out, VOLID, efi_image=None, isohdpfx=ISOHDPFX.read_bytes(), epoch=EPOCH)
    data = out.read_bytes()
    assert data[446 + 4] == 0x17 and data[446 + 16:510] == bytes(48)
    assert data[512:520] != b"EFI PART" and len(data) % (1 << 20) == 0
    report = output(["xorriso", "-indev", out, "-report_el_torito", "plain"])
    assert "UEFI" not in report


# --- reproducibility -----------------------------------------------------------------------------

BUILD_SCRIPT = """
import sys, time, os
offset = float(sys.argv[3])
real = time.time
time.time = lambda: real() + offset
time.tzset()
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_iso_master import make_tree, ISOHDPFX, VOLID
from xcpimg.iso import master
root = Path(sys.argv[1])
tree = make_tree(root)
master.master_iso(tree, Path(sys.argv[2]), VOLID, isohdpfx=ISOHDPFX.read_bytes())
"""


def test_reproducible_across_tz_and_clock(tmp_path: Path) -> None:
    script = BUILD_SCRIPT.format(tests=str(Path(__file__).parent))
    outs = []
    for n, (tz, offset) in enumerate([("UTC", 0), ("Pacific/Chatham", 86400 * 400 + 3671)]):
        (tmp_path / str(n)).mkdir()
        out = tmp_path / f"{n}.iso"
        env = dict(os.environ, TZ=tz, SOURCE_DATE_EPOCH=str(EPOCH), PYTHONHASHSEED=str(n + 1))
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(n)), str(out), str(offset)],
                       env=env, check=True, cwd=Path(__file__).parent.parent)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0][16 * 2048 + 813:16 * 2048 + 829] == b"2023111422132000"


def test_frozen_clock_is_contained() -> None:
    with master.frozen_clock(0):
        assert pycdlib.pycdlib.time.time() == 0.0
    assert pycdlib.pycdlib.time is time and pycdlib.dates.time is time


# --- failures ------------------------------------------------------------------------------------

def test_missing_boot_files(built: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _iso = built
    with pytest.raises(BuildError, match="BIOS boot image boot/isolinux/nope.bin not found"):
        master.master_iso(tree, tmp_path / "x.iso", VOLID, bios_boot="boot/isolinux/nope.bin")
    with pytest.raises(BuildError, match="EFI boot image boot/none.img not found"):
        master.master_iso(tree, tmp_path / "x.iso", VOLID, efi_image="boot/none.img")
    assert list(tmp_path.iterdir()) == []


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path)
    secret = tree / "Packages" / "secret.rpm"
    secret.write_bytes(b"x")
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(master.os, "access",
                            lambda p, m, **kw: False if Path(p) == secret else real_access(p, m, **kw))
    out = tmp_path / "x.iso"
    with pytest.raises(BuildError, match=r"cannot read .*secret\.rpm: permission denied"):
        master.master_iso(tree, out, VOLID, isohdpfx=ISOHDPFX.read_bytes())
    assert not out.exists() and not list(tmp_path.glob(".x.iso*"))


def test_special_file_refused(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    os.mkfifo(tree / "fifo")
    with pytest.raises(BuildError, match="not a regular file, directory or symlink"):
        master.master_iso(tree, tmp_path / "x.iso", VOLID)


def test_failure_leaves_existing_output_alone(built: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tree, _iso = built
    out = tmp_path / "x.iso"
    out.write_bytes(b"old")

    def boom(*_a: object, **_k: object) -> None:
        raise BuildError("hybrid failed")
    monkeypatch.setattr(hybrid, "make_hybrid", boom)
    with pytest.raises(BuildError, match="hybrid failed"):
        master.master_iso(tree, out, VOLID, isohdpfx=ISOHDPFX.read_bytes())
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.iso"]


def test_non_isolinux_boot_image_cannot_be_hybrid(built: tuple[Path, Path], tmp_path: Path) -> None:
    tree, _iso = built
    with pytest.raises(BuildError, match="no isohybrid signature"):
        master.master_iso(tree, tmp_path / "x.iso", VOLID, bios_boot="boot/vmlinuz",
                          isohdpfx=ISOHDPFX.read_bytes())
    assert list(tmp_path.iterdir()) == []


def test_many_files_few_descriptors(tmp_path: Path) -> None:
    """add_file opens files only while writing them: 1500 files under a 256-descriptor limit."""
    tree = make_tree(tmp_path)
    many = tree / "many"
    many.mkdir()
    for i in range(1500):
        (many / f"f{i:04d}").write_bytes(i.to_bytes(2, "little"))
    script = ("import resource, sys; from pathlib import Path; "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
              "from xcpimg.iso import master; "
              "master.master_iso(Path(sys.argv[1]), Path(sys.argv[2]), 'MANY')")
    subprocess.run([sys.executable, "-c", script, str(tree), str(tmp_path / "m.iso")], check=True,
                   cwd=Path(__file__).parent.parent)
    iso = open_iso(tmp_path / "m.iso")
    try:
        assert read(iso, rr_path="/many/f1499") == (1499).to_bytes(2, "little")
        assert len(list(iso.list_children(rr_path="/many"))) == 1502  # with . and ..
    finally:
        iso.close()


# --- boot ----------------------------------------------------------------------------------------

def boot_usb(image: Path, workdir: Path, timeout: float = 60) -> str:
    """Boot *image* as a USB stick under SeaBIOS; 'prompt' if isolinux's boot: shows, else 'failed'."""
    serial, debug = workdir / "serial.log", workdir / "seabios.log"
    argv = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
            "-machine", "pc,accel=tcg", "-smp", "1", "-m", "256", "-display", "none", "-nic", "none",
            "-serial", f"file:{serial}", "-chardev", f"file,id=dbg,path={debug}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
            "-drive", f"if=none,id=stick,format=raw,file={image},readonly=on",
            "-device", "qemu-xhci,id=xhci", "-device", "usb-storage,bus=xhci.0,drive=stick"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if serial.exists() and "boot:" in serial.read_text(errors="replace"):
                return "prompt"
            if debug.exists() and "No bootable device" in debug.read_text(errors="replace"):
                return "failed"
            time.sleep(0.3)
        return "timeout"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.boot
def test_hybrid_boots_from_usb_under_seabios(built: tuple[Path, Path], tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64")
    tree, iso = built
    (tmp_path / "hybrid").mkdir()
    assert boot_usb(iso, tmp_path / "hybrid") == "prompt"
    plain = tmp_path / "plain.iso"
    master.master_iso(tree, plain, VOLID, epoch=EPOCH)
    (tmp_path / "plain").mkdir()
    assert boot_usb(plain, tmp_path / "plain") == "failed"  # the control: a plain ISO does not
