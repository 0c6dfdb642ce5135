"""`xcpimg inspect` on fixture ISOs: one built by xcpimg, one mastered by xorriso from the same
tree, a signed one, and one whose install.img carries an rpm database. Facts are checked
against independent readers (the file itself, Packages/ file names, xorriso)."""

from __future__ import annotations

import hashlib
import re
import stat
import sys
from pathlib import Path

import pytest
from mediakit import assert_one_line_error, cli, fixture_iso, inspect_json

from xcpimg import cpio
from xcpimg.fixture_repo import ensure_fixture_repo
from xcpimg.media.reader import IsoReader
from xcpimg.run import run


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path) -> Path:
    return fixture_iso(tmp_path_factory, probe_initrd, "8.3:base")


def packages_dir_names(iso: Path) -> set[str]:
    """File names in Packages/, as xorriso lists them."""
    listing = run(["xorriso", "-indev", iso, "-find", "/Packages", "-type", "f"]).stdout.decode()
    return {line.strip().strip("'").rsplit("/", 1)[1] for line in listing.splitlines() if line.startswith("'/")}


def test_inspect_xcpimg_iso(base_iso: Path, probe_initrd: Path, tmp_path: Path) -> None:
    report = inspect_json(base_iso, tmp_path)
    assert report["sha256"] == hashlib.sha256(base_iso.read_bytes()).hexdigest()
    assert report["size"] == base_iso.stat().st_size
    assert report["volume_id"] == "XCP-ng 8.3"
    lay = report["layout"]
    assert lay["catalog"] == "boot/isolinux/boot.cat"
    entries = {e["platform"]: e for e in lay["entries"]}
    assert entries["bios"]["image"] == "boot/isolinux/isolinux.bin" and entries["bios"]["sectors"] == 4
    assert entries["efi"]["image"] == "boot/efiboot.img"
    assert entries["efi"]["sectors"] * 512 == 2880 * 1024
    # hybrid: partition 1 over the image, partition 2 (0xEF) exactly on the EFI image; GPT mirrors it
    mbr = lay["mbr"]
    assert [p["type"] for p in mbr] == ["0x00", "0xef"] and mbr[0]["active"]
    assert mbr[1]["start"] == entries["efi"]["lba"] * 4 and mbr[1]["sectors"] == entries["efi"]["sectors"]
    assert mbr[0]["sectors"] * 512 == base_iso.stat().st_size
    assert [p["name"] for p in lay["gpt"]] == ["ISOHybrid ISO", "ISOHybrid"]
    # menus: isolinux, the ISO's GRUB, the GRUB inside efiboot.img; installer entries carry the gpg word
    assert set(report["menus"]) == {"boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg",
                                    "boot/efiboot.img:EFI/xenserver/grub.cfg"}
    for menu, items in report["menus"].items():
        installers = [e for e in items if e["kernel"] and e["kernel"]["path"].endswith("/vmlinuz")]
        assert len(installers) == 6, menu
        for e in installers:
            assert e["hypervisor"]["path"] == "/boot/xen.gz", (menu, e)
            assert "no-repo-gpgcheck" in e["kernel"]["args"], (menu, e)
            assert [m["path"] for m in e["modules"]] == ["/install.img"], (menu, e)
    assert report["treeinfo"]["system-v1"]["product_version"] == "8.3.0"
    assert report["install_img"] == {"size": probe_initrd.stat().st_size, "compression": "gzip"}
    repo = report["repository"]
    assert {f"{n}.rpm" for n in repo["nevras"]} == packages_dir_names(base_iso)
    assert repo["count"] == len(repo["nevras"]) and repo["missing"] == []
    fx = ensure_fixture_repo().manifest()["8.3"]["base"]
    assert f"kernel-alt-{fx['kernel-alt']}" in repo["nevras"]
    assert repo["signature"] == {"signed": False}
    assert "Packages/" not in "".join(report["files"]) and "boot/isolinux/boot.cat" not in report["files"]
    assert report["files"]["install.img"]["sha256"] == hashlib.sha256(probe_initrd.read_bytes()).hexdigest()


def test_inspect_text(base_iso: Path, tmp_path: Path) -> None:
    proc = cli("inspect", [base_iso], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"(?m)^El Torito +efi .* boot/efiboot\.img$", proc.stdout)
    assert re.search(r"(?m)^Packages/ +\d+ packages, \d+ bytes; repomd\.xml unsigned$", proc.stdout)
    assert re.search(r"(?m)^ +kernel +/boot/vmlinuz no-repo-gpgcheck console=hvc0", proc.stdout)


def xorriso_master(source: Path, tree: Path, out: Path) -> Path:
    """The tree of *source* mastered again by xorriso -as mkisofs, hybrid BIOS/UEFI."""
    run(["xorriso", "-osirrox", "on", "-indev", source, "-extract", "/", tree])
    run(["chmod", "-R", "u+w", tree])
    (tree / "boot/isolinux/boot.cat").unlink()
    mbr = tree.parent / "isohdpfx.bin"
    mbr.write_bytes(source.read_bytes()[:432])
    run(["xorriso", "-as", "mkisofs", "-o", out, "-R", "-J", "-V", "XORRISO 8.3",
         "-b", "boot/isolinux/isolinux.bin", "-c", "boot/isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot", "-e", "boot/efiboot.img",
         "-no-emul-boot", "-isohybrid-mbr", mbr, "-isohybrid-gpt-basdat", tree])
    return out


def test_inspect_xorriso_iso(base_iso: Path, tmp_path: Path) -> None:
    iso = xorriso_master(base_iso, tmp_path / "tree", tmp_path / "xorriso.iso")
    report = inspect_json(iso, tmp_path)
    original = inspect_json(base_iso, tmp_path)
    assert report["volume_id"] == "XORRISO 8.3"
    images = {e["platform"]: e["image"] for e in report["layout"]["entries"]}
    assert images == {"bios": "boot/isolinux/isolinux.bin", "efi": "boot/efiboot.img"}
    assert report["layout"]["catalog"] == "boot/isolinux/boot.cat"
    assert "0xef" in [p["type"] for p in report["layout"]["mbr"]]
    assert report["menus"] == original["menus"]
    assert report["repository"]["nevras"] == original["repository"]["nevras"]
    assert report["treeinfo"] == original["treeinfo"]
    # same files, same bytes (isolinux.bin compared without its boot info table)
    assert report["files"] == original["files"]


def test_inspect_signed(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path, tmp_path: Path) -> None:
    signer = Path(sys.executable).parent / "xcpimg-sample-sign"
    iso = fixture_iso(tmp_path_factory, probe_initrd, "8.3:testing", sign_script=signer)
    sig = inspect_json(iso, tmp_path)["repository"]["signature"]
    assert sig["signed"] and sig["valid"], sig
    assert sig["digest"] == ["SHA512"]
    assert sig["key_ids"] and sig["fingerprint"].upper().endswith(sig["key_ids"][0].upper())
    with IsoReader(iso) as reader:  # the key that verifies is the one shipped on the ISO
        keys = [p for p in reader.files() if p.startswith("RPM-GPG-KEY-")]
    assert keys


def rpmdb_image(tmp: Path, names: list[str]) -> Path:
    """A bzip2 newc install.img whose /var/lib/rpm holds the fixture packages *names* (--justdb)."""
    fx = ensure_fixture_repo()
    root = tmp / "root"
    db = "/var/lib/rpm"
    run(["rpm", "--root", root, "--dbpath", db, "--initdb"])
    rpms = [fx.repo_dir("8.3", "base") / "Packages" / f"{n}-{fx.manifest()['8.3']['base'][n]}.rpm" for n in names]
    run(["rpm", "--root", root, "--dbpath", db, "-i", "--justdb", "--nodeps", "--nosignature", *rpms])
    (root / "init").write_text("#!/bin/sh\n")
    img = tmp / "install.img"
    from xcpimg import compress
    with open(img, "wb") as f, compress.open_compressor(f, "bzip2") as stream:
        cpio.write_newc(root, stream, epoch=1704067200)  # type: ignore[arg-type]
    return img


def test_inspect_installimg_packages(base_iso: Path, tmp_path: Path) -> None:
    img = rpmdb_image(tmp_path, ["bash", "kernel"])
    out = tmp_path / "with-db.iso"
    proc = cli("remaster", [base_iso, "-o", out, "--install-img", img], tmp_path)
    assert proc.returncode == 0, proc.stderr
    fx = ensure_fixture_repo().manifest()["8.3"]["base"]
    info = inspect_json(out, tmp_path, "--installimg")["install_img"]
    assert info["packages"] == [f"bash-{fx['bash']}", f"kernel-{fx['kernel']}"]
    assert info["compression"] == "bzip2" and info["segments"] == ["bzip2"] and info["answerfile"] is None
    # the probe initrd has no rpm database: said, not a failure
    plain = inspect_json(base_iso, tmp_path, "--installimg")["install_img"]
    assert plain["packages"] is None and "no rpm database" in plain["packages_error"]


def test_inspect_bad_input(tmp_path: Path, base_iso: Path) -> None:
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not an ISO\n" * 5000)
    assert_one_line_error(cli("inspect", [text], tmpdir), "inspect", 2, "not an ISO image")
    assert_one_line_error(cli("inspect", [tmp_path / "missing.iso"], tmpdir), "inspect", 2, "missing.iso")
    truncated = tmp_path / "truncated.iso"
    truncated.write_bytes(base_iso.read_bytes()[:40 * 2048])
    proc = cli("inspect", [truncated], tmpdir)
    assert_one_line_error(proc, "inspect", proc.returncode, "truncated.iso")
    assert proc.returncode != 0
    assert [p for p in tmpdir.iterdir() if stat.S_ISDIR(p.stat().st_mode)] == []


def test_inspect_data_disc(tmp_path: Path) -> None:
    from test_remaster import plain_iso
    report = inspect_json(plain_iso(tmp_path), tmp_path)
    assert report["volume_id"] == "DATA" and report["files"].keys() == {"README"}
    assert report["layout"]["entries"] == [] and report["layout"]["mbr"] == [] and report["layout"]["gpt"] is None
    assert report["menus"] == {} and report["repository"] is None and report["install_img"] is None


def test_installimg_reader_stays_in_its_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile member names (``..``, absolute, a database link out of the root) are never followed."""
    from xcpimg.media import initrd
    from xcpimg.probe import Entry, newc_archive
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    img = tmp_path / "hostile.img"
    img.write_bytes(newc_archive([
        Entry("../../var/lib/rpm/rpmdb.sqlite", stat.S_IFREG | 0o644, b"x"),
        Entry("var/lib/rpm", stat.S_IFLNK | 0o777, str(tmp_path / "outside").encode()),
        Entry("var/lib/rpm/../../../escape", stat.S_IFREG | 0o644, b"x")], 0))
    with pytest.raises(initrd.BuildError, match="holds no rpm database"):
        initrd.packages(img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.img", "scratch"]
    assert list(scratch.iterdir()) == []
