"""The pytest plugin's pieces: matrix configs, repository layouts, shared builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from xcpimg.pytest_plugin import (
    MatrixConfig,
    RepoSource,
    detect_layout,
    expected_cmdline_words,
    failure_details,
    file_sha256,
    matrix_modes,
    shared_build,
)


def test_matrix_config_parsing() -> None:
    cfg = MatrixConfig.parse("8.3:testing@netinstall")
    assert (cfg.spec, cfg.netinstall, cfg.dist, cfg.label) == ("8.3:testing", True, "8.3", "8.3:testing@netinstall")
    assert MatrixConfig.parse("8.2:updates") == MatrixConfig("8.2:updates", False)
    with pytest.raises(pytest.UsageError, match="unknown flavour"):
        MatrixConfig.parse("8.3@full")
    unattended = MatrixConfig.parse("8.3:testing@unattended", ("/srv/layers/mylayer",))
    assert (unattended.flavour, unattended.netinstall) == ("unattended", False)
    assert unattended.layer_spec == "8.3:/srv/layers/mylayer:testing"  # right after the dist: its files win
    assert unattended.label == "8.3:testing@unattended+mylayer"
    assert "/" not in unattended.slug and ":" not in unattended.slug
    assert MatrixConfig.parse("8.3", ("/l",)).layer_spec == "8.3:/l"


def _repomd(root: Path) -> None:
    path = root / "base/x86_64/repodata/repomd.xml"
    path.parent.mkdir(parents=True)
    path.write_text("<repomd/>")


def test_detect_layout(tmp_path: Path) -> None:
    _repomd(tmp_path / "major/8/8.3")
    _repomd(tmp_path / "flat/8.3")
    assert detect_layout((tmp_path / "major").as_uri()) == "major"
    assert detect_layout((tmp_path / "flat").as_uri()) == "flat"
    with pytest.raises(pytest.UsageError, match="neither"):
        detect_layout((tmp_path / "nothing").as_uri())


def test_repo_source_urls() -> None:
    major = RepoSource("file:///m", "major", None, linstor_root="file:///l")
    assert major.srcurl("8.3") == "file:///m/8/8.3"
    assert RepoSource("http://h/x", "flat", None).srcurl("8.2") == "http://h/x/8.2"
    assert major.repo_config("8.3:testing").layer_srcurls == {}
    assert major.repo_config("8.3:linstor:testing").layer_srcurls == {"linstor": "file:///l/8/8.3"}


def test_matrix_modes_add_pxe_for_83_full_and_netinstall_only() -> None:
    disk = ["bios-cd", "bios-usb", "uefi-cd", "uefi-usb"]
    assert matrix_modes(MatrixConfig("8.3:testing"), None) == [*disk, "bios-pxe", "uefi-pxe"]
    assert matrix_modes(MatrixConfig("8.3:testing", True), None) == [*disk, "bios-pxe", "uefi-pxe"]
    assert matrix_modes(MatrixConfig("8.2:updates"), None) == disk
    assert matrix_modes(MatrixConfig("8.3:base"), None) == disk
    assert matrix_modes(MatrixConfig("8.2:updates"), ["uefi-pxe"]) == ["uefi-pxe"]  # given: for every config


def test_file_sha256(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


INNER = """
def test_source(repo_source):
    cfg = repo_source.repo_config("8.3")
    print("SOURCE", repo_source.gpgkey, repo_source.gpgcheck, cfg.gpgkey, cfg.gpgcheck)
"""


@pytest.mark.parametrize("args, env, want", [
    ([], {}, "SOURCE None True None True"),
    (["--repo-gpgkey", "/k/KEY"], {}, "SOURCE file:///k/KEY True file:///k/KEY True"),
    ([], {"XCPTEST_GPGKEY": "https://h/KEY"}, "SOURCE https://h/KEY True https://h/KEY True"),
    (["--repo-nogpgcheck"], {}, "SOURCE None False None False"),
    ([], {"XCPTEST_NOGPGCHECK": "1"}, "SOURCE None False None False"),
    ([], {"XCPTEST_NOGPGCHECK": "0"}, "SOURCE None True None True"),
])
def test_repo_gpgkey_and_nogpgcheck_options(tmp_path: Path, args: list[str], env: dict[str, str],
                                            want: str) -> None:
    """A real repository's packages are checked with --repo-gpgkey (or the layers' key), or not at all."""
    import os
    import subprocess
    import sys
    _repomd(tmp_path / "mirror/8/8.3")
    (tmp_path / "test_inner.py").write_text(INNER)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XCPTEST_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={tmp_path / 'bt'}", "--repo-root", (tmp_path / "mirror").as_uri(), *args,
                           str(tmp_path / "test_inner.py")], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert want in proc.stdout.splitlines(), proc.stdout


def test_expected_cmdline_words() -> None:
    assert expected_cmdline_words(MatrixConfig("8.3:testing")) == ["no-repo-gpgcheck"]
    assert expected_cmdline_words(MatrixConfig("8.3:testing", True)) == ["netinstall"]


class _Factory:
    def __init__(self, base: Path) -> None:
        self.base = base

    def getbasetemp(self) -> Path:
        return self.base


def test_shared_build_builds_once_and_retries_after_failure(tmp_path: Path) -> None:
    factory = _Factory(tmp_path)
    calls: list[Path] = []

    def fail(out: Path) -> None:
        out.write_text("half")
        raise RuntimeError("boom")

    def build(out: Path) -> None:
        calls.append(out)
        out.write_text("done")

    with pytest.raises(RuntimeError):
        shared_build(factory, "thing", fail)  # type: ignore[arg-type]
    assert not (tmp_path / "xcpimg-shared/thing").exists()
    first = shared_build(factory, "thing", build)  # type: ignore[arg-type]
    second = shared_build(factory, "thing", build)  # type: ignore[arg-type]
    assert first == second and first.read_text() == "done" and len(calls) == 1


def test_failure_details_names_logs(tmp_path: Path) -> None:
    (tmp_path / "qemu-argv.txt").write_text("qemu-system-x86_64 -m 2048\n")
    (tmp_path / "qemu-stderr.log").write_text("oops\n")
    (tmp_path / "screen.png").write_bytes(b"png")
    text = failure_details(tmp_path)
    assert "qemu-system-x86_64 -m 2048" in text and "oops" in text and str(tmp_path / "screen.png") in text


@pytest.mark.boot
def test_matrix_runs_against_a_mirror_repo_layout(tmp_path: Path) -> None:
    """--repo-root with the layout mirror-repos.sh makes (<root>/<dist>/<repo>/x86_64): build and boot."""
    import subprocess
    import sys

    from xcpimg.fixture_repo import ensure_fixture_repo

    fixture = ensure_fixture_repo()
    flat = tmp_path / "mirror"
    flat.mkdir()
    (flat / "8.3").symlink_to(fixture.root / "8/8.3")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "xcpimg.matrix", "-m", "not expensive",
         "-p", "no:cacheprovider", "-q", f"--basetemp={tmp_path / 'inner'}", "--repo-root", flat.as_uri(),
         "--repo-gpgkey", str(fixture.gpgkey_path), "--xcp-config", "8.3:base", "--boot-modes", "bios-cd"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
