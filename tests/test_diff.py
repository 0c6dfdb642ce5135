"""`xcpimg diff`: the fixture's 8.3:base and 8.3:testing ISOs differ by the kernel-alt and branding
upgrades; exit codes 0 (equal), 1 (different), 2 (trouble); boot-argument and install.img changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from mediakit import assert_one_line_error, cli, diff_json, fixture_iso
from test_inspect import rpmdb_image

from xcpimg.fixture_repo import ensure_fixture_repo
from xcpimg.media.diff import diff_packages
from xcpimg.media.repodata import vercmp


@pytest.fixture(scope="module")
def base_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path) -> Path:
    return fixture_iso(tmp_path_factory, probe_initrd, "8.3:base")


@pytest.fixture(scope="module")
def testing_iso(tmp_path_factory: pytest.TempPathFactory, probe_initrd: Path) -> Path:
    return fixture_iso(tmp_path_factory, probe_initrd, "8.3:testing")


def test_base_vs_testing(base_iso: Path, testing_iso: Path, tmp_path: Path) -> None:
    fx = ensure_fixture_repo().manifest()["8.3"]
    code, d = diff_json(base_iso, testing_iso, tmp_path)
    assert code == 1
    pk = d["packages"]
    assert pk["upgraded"] == [[f"branding-xcp-ng-{fx['base']['branding-xcp-ng']}",
                               f"branding-xcp-ng-{fx['testing']['branding-xcp-ng']}"],
                              [f"kernel-alt-{fx['base']['kernel-alt']}", f"kernel-alt-{fx['testing']['kernel-alt']}"]]
    assert pk["added"] == pk["removed"] == pk["downgraded"] == []
    assert d["boot_args"] == [] and d["volume_id"] is None and d["layout"] is None
    changed = {f["path"] for f in d["files"]["changed"]}
    assert "repodata/repomd.xml" in changed and "install.img" not in changed
    # the other way round: downgrades, exit 1 again
    code, back = diff_json(testing_iso, base_iso, tmp_path)
    assert code == 1
    assert [o for o, _n in back["packages"]["downgraded"]] == [n for _o, n in pk["upgraded"]]
    text = cli("diff", [base_iso, testing_iso], tmp_path)
    assert text.returncode == 1
    assert f"^ package kernel-alt-{fx['base']['kernel-alt']} -> kernel-alt-{fx['testing']['kernel-alt']}" \
        in text.stdout.splitlines()


def test_layer_repos(base_iso: Path, testing_iso: Path, tmp_path: Path) -> None:
    fx_repo = ensure_fixture_repo()
    fx = fx_repo.manifest()["8.3"]
    code, d = diff_json(base_iso, testing_iso, tmp_path, "--layers", "8.3:testing", "--srcurl",
                        fx_repo.srcurl("8.3"), "--gpgkey", fx_repo.gpgkey_url)
    assert code == 1
    assert d["repos"] == {f"{name}-{fx[repo][name]}": f"xcpng-{repo}"
                          for name in ("branding-xcp-ng", "kernel-alt") for repo in ("base", "testing")}
    proc = cli("diff", [base_iso, testing_iso, "--layers", "8.3:testing", "--srcurl", fx_repo.srcurl("8.3")],
               tmp_path)
    assert f"^ package kernel-alt-{fx['base']['kernel-alt']} [xcpng-base] -> " \
           f"kernel-alt-{fx['testing']['kernel-alt']} [xcpng-testing]" in proc.stdout.splitlines()


def test_equal(base_iso: Path, tmp_path: Path) -> None:
    code, d = diff_json(base_iso, base_iso, tmp_path)
    assert code == 0 and d["bytes_identical"]
    proc = cli("diff", [base_iso, base_iso], tmp_path)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "no differences"


def test_boot_args_and_installimg(base_iso: Path, tmp_path: Path) -> None:
    img = rpmdb_image(tmp_path, ["bash"])
    out = tmp_path / "changed.iso"
    proc = cli("remaster", [base_iso, "-o", out, "--install-img", img, "--bootargs", "xcpimg.diff=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    img2 = rpmdb_image(tmp_path / "two", ["bash", "kernel"])
    out2 = tmp_path / "changed2.iso"
    proc = cli("remaster", [out, "-o", out2, "--install-img", img2], tmp_path)
    assert proc.returncode == 0, proc.stderr
    code, d = diff_json(base_iso, out, tmp_path)
    assert code == 1
    entries = {(c["menu"], c["entry"]) for c in d["boot_args"]}
    assert len(entries) == 18  # six installer entries in each of the three menus
    assert all(c["kernel"]["added"] == ["xcpimg.diff=1"] and c["kernel"]["removed"] == [] and c["xen"] is None
               for c in d["boot_args"])
    assert d["install_img"] == [{"compression": "gzip", "segments": None, "answerfile": None},
                                {"compression": "bzip2", "segments": None, "answerfile": None}]
    assert {f["path"] for f in d["files"]["changed"]} == {
        "install.img", "boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg", "boot/efiboot.img"}
    code, d = diff_json(out, out2, tmp_path, "--installimg")
    fx = ensure_fixture_repo().manifest()["8.3"]["base"]
    assert code == 1 and d["boot_args"] == []
    assert d["installimg_packages"]["added"] == [f"kernel-{fx['kernel']}"]
    assert d["installimg_packages"]["removed"] == d["installimg_packages"]["upgraded"] == []


def test_bad_input(base_iso: Path, tmp_path: Path) -> None:
    text = tmp_path / "x.txt"
    text.write_text("hello\n" * 10000)
    assert_one_line_error(cli("diff", [base_iso, text], tmp_path), "diff", 2, "not an ISO image")
    assert_one_line_error(cli("diff", [tmp_path / "nope.iso", base_iso], tmp_path), "diff", 2, "nope.iso")


def test_version_order() -> None:
    assert vercmp("4.19.322", "4.19.19") == 1 and vercmp("1.0", "1.0") == 0
    assert vercmp("1.0~rc1", "1.0") == -1 and vercmp("1.0^git1", "1.0") == 1 and vercmp("1.0^git1", "1.0.1") == -1
    assert vercmp("2a", "2") == 1 and vercmp("10", "9") == 1 and vercmp("a", "1") == -1
    d = diff_packages(["a-1:1.0-1.x86_64", "b-2-1.noarch"], ["a-0:2.0-1.x86_64", "c-1-1.noarch"])
    assert d == {"added": ["c-1-1.noarch"], "removed": ["b-2-1.noarch"], "upgraded": [],
                 "downgraded": [["a-1:1.0-1.x86_64", "a-2.0-1.x86_64"]]}
