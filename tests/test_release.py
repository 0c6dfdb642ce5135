"""`xcpimg release`: the output directory's layout, SHA256SUMS checked by ``sha256sum -c``, the
manifest against independent readers, reproducibility, atomic publishing that never clobbers,
boots recorded in the manifest; and the ``--pkgtool``/``--arch`` compatibility flags."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from mediakit import assert_one_line_error, cli

from xcpimg.fixture_repo import FixtureRepo, ensure_fixture_repo
from xcpimg.run import run

SDE = "1712345678"  # 2024-04-05
DAY = "20240405"
NAMES = {"install.img": f"install-8.3-{DAY}.testing.img", "full": f"xcp-ng-8.3-{DAY}.testing.iso",
         "netinstall": f"xcp-ng-8.3-{DAY}-netinstall.testing.iso",
         "linstor": f"xcp-ng-8.3-{DAY}-linstor-upgradeonly.testing.iso"}


@pytest.fixture(scope="module")
def fx() -> FixtureRepo:
    return ensure_fixture_repo()


def release(fx: FixtureRepo, out: Path, tmp: Path, *extra: str | Path) -> Any:
    return cli("release", ["8.3:testing", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url, "-o", out,
                           *extra], tmp, env={"SOURCE_DATE_EPOCH": SDE})


@pytest.fixture(scope="module")
def released(fx: FixtureRepo, probe_initrd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("release")
    out = tmp / "pub" / "rel"
    out.parent.mkdir()
    signer = Path(sys.executable).parent / "xcpimg-sample-sign"
    proc = release(fx, out, tmp, "--install-img", probe_initrd, "--sign-script", signer,
                   "--linstor", fx.linstor_srcurl("8.3"))  # default extra package: xcp-ng-release-linstor
    assert proc.returncode == 0, proc.stderr
    return out


def pvd_volume_id(iso: Path) -> str:
    text = run(["xorriso", "-indev", iso, "-pvd_info"]).stdout.decode()
    m = re.search(r"(?m)^Volume Id\s*:\s*(.*?)\s*$", text)
    assert m, text
    return m.group(1)


def test_layout_and_sums(released: Path) -> None:
    assert sorted(p.name for p in released.iterdir()) == sorted([*NAMES.values(), "SHA256SUMS", "manifest.json"])
    assert sorted(p.name for p in released.parent.iterdir()) == ["rel"]  # nothing left beside it
    check = run(["sha256sum", "-c", "SHA256SUMS"], cwd=released).stdout.decode().splitlines()
    assert sorted(check) == sorted(f"{name}: OK" for name in NAMES.values())


def test_manifest(released: Path, fx: FixtureRepo) -> None:
    manifest = json.loads((released / "manifest.json").read_text())
    assert manifest["date"] == DAY and manifest["version"] == "8.3" and manifest["epoch"] == int(SDE)
    media = {m["kind"]: m for m in manifest["media"]}
    assert {k: m["file"] for k, m in media.items()} == NAMES
    for kind, m in media.items():
        path = released / m["file"]
        assert m["size"] == path.stat().st_size
        if kind != "install.img":
            assert m["volume_id"] == pvd_volume_id(path)
    assert media["full"]["volume_id"] == media["netinstall"]["volume_id"] == f"XCP-NG 8.3 {DAY}"
    assert media["linstor"]["volume_id"] == f"XCP-NG 8.3 {DAY} LINSTOR"
    linstor = {f"{n}-{evra}" for n, evra in fx.manifest()["8.3"]["linstor"].items()}
    assert linstor <= set(media["linstor"]["packages"])
    assert not linstor & set(media["full"]["packages"])
    assert set(media["full"]["packages"]) < set(media["linstor"]["packages"])
    assert f"kernel-alt-{fx.manifest()['8.3']['testing']['kernel-alt']}" in media["full"]["packages"]
    assert media["netinstall"]["packages"] == [] and media["install.img"]["packages"] == []
    assert media["full"]["signed"] and media["linstor"]["signed"] and not media["netinstall"]["signed"]
    sums = dict(reversed(line.split("  ")) for line in (released / "SHA256SUMS").read_text().splitlines())
    assert {m["file"]: m["sha256"] for m in media.values()} == sums


def test_reproducible(fx: FixtureRepo, probe_initrd: Path, tmp_path: Path) -> None:
    outs = []
    for n in (1, 2):
        out = tmp_path / f"r{n}"
        proc = release(fx, out, tmp_path, "--install-img", probe_initrd)
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    assert [p.name for p in sorted(outs[0].iterdir())] == [p.name for p in sorted(outs[1].iterdir())]
    for p in outs[0].iterdir():
        assert p.read_bytes() == (outs[1] / p.name).read_bytes(), p.name


def test_never_clobbers(fx: FixtureRepo, probe_initrd: Path, tmp_path: Path) -> None:
    out = tmp_path / "rel"
    out.mkdir()
    (out / "keep").write_text("mine\n")
    assert_one_line_error(release(fx, out, tmp_path, "--install-img", probe_initrd), "release", 2,
                          "already exists")
    assert [p.name for p in out.iterdir()] == ["keep"] and (out / "keep").read_text() == "mine\n"


def test_failed_build_leaves_nothing(fx: FixtureRepo, probe_initrd: Path, tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    pub.mkdir()
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    # a LINSTOR package the repository does not have: a hard failure, not a silent skip
    proc = cli("release", ["8.3:testing", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
                           "-o", pub / "rel", "--install-img", probe_initrd, "--linstor", fx.linstor_srcurl("8.3"),
                           "--linstor-packages", "xcp-ng-release-linstor-nonexistent"], tmpdir)
    assert_one_line_error(proc, "release", 1, "xcp-ng-release-linstor-nonexistent")
    assert list(pub.iterdir()) == [] and list(tmpdir.iterdir()) == []


@pytest.mark.boot
def test_boot_results_recorded(fx: FixtureRepo, probe_initrd: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from xcpimg import boot
    from xcpimg.media import release as rel
    from xcpimg.repos import RepoConfig
    monkeypatch.setattr(boot, "BOOT_MODES", ("bios-cd",))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", SDE)
    out = tmp_path / "booted"
    manifest = rel.build_release(rel.ReleaseOptions(
        spec="8.3:testing", output=out, repo_config=RepoConfig(srcurl=fx.srcurl("8.3"), gpgkey=fx.gpgkey_url),
        install_img=probe_initrd, boot=True))
    results = {m["kind"]: m.get("boot") for m in manifest["media"]}
    assert results["install.img"] is None
    for kind in ("full", "netinstall"):
        assert list(results[kind]) == ["bios-cd"] and results[kind]["bios-cd"]["ok"], results
    words = {kind: results[kind]["bios-cd"]["cmdline"].split() for kind in ("full", "netinstall")}
    assert "no-repo-gpgcheck" in words["full"] and "netinstall" in words["netinstall"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.expensive
def test_release_builds_installimg(fx: FixtureRepo, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the expensive tier runs as root")
    out = tmp_path / "rel"
    proc = release(fx, out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    img = next(m for m in manifest["media"] if m["kind"] == "install.img")
    assert any(n.startswith("kernel-") for n in img["packages"]), img


# ------------------------------------------------------------------------- --pkgtool / --arch

@pytest.mark.parametrize("command", ["iso", "installimg"])
@pytest.mark.parametrize("flag,value,word", [("--pkgtool", "pacman", "unknown --pkgtool 'pacman'"),
                                             ("--arch", "aarch64", "unsupported --arch 'aarch64'")])
def test_compat_flags_refused(command: str, flag: str, value: str, word: str, tmp_path: Path) -> None:
    args = ["-o", tmp_path / "out", flag, value, "8.3:testing"] + (["/nonexistent.img"] if command == "iso" else [])
    if command == "iso":
        args[2:2] = ["-V", "X"]
    proc = cli(command, args, tmp_path)
    assert_one_line_error(proc, command, 2, word)
    assert not (tmp_path / "out").exists()


def test_pkgtool_yum_accepted(fx: FixtureRepo, probe_initrd: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.iso"
    proc = cli("iso", ["-o", out, "-V", "X", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
                       "--netinstall", "--pkgtool", "yum", "--arch", "x86_64", "8.3:testing", probe_initrd], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: --pkgtool yum" in proc.stderr and out.is_file()
