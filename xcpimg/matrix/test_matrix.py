"""The build-and-boot matrix: every configuration's ISO boots to the installer.

Cheap tier: the ISO carries the probe initrd as install.img and boots to its init.
Expensive tier: it carries a real install.img built from the same repositories and
boots through its init system to the installer's first screen on the serial console.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from xcpimg.pytest_plugin import MatrixConfig, RepoSource, boot_and_check, build_matrix_iso, need_root, shared_build


@pytest.mark.boot
def test_iso_boots_to_installer_init(xcp_config: MatrixConfig, boot_mode: str, xcp_iso: Path,
                                     boot_logdir: Path, record_property: Callable[[str, object], None]) -> None:
    boot_and_check(xcp_iso, boot_mode, xcp_config, boot_logdir, f"{xcp_config.slug}-probe",
                   record=record_property)


@pytest.fixture(scope="session")
def built_installimg(xcp_config: MatrixConfig, repo_source: RepoSource,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """install.img built from the matrix repositories (root only)."""
    need_root("building install.img")
    from xcpimg.installimg import build_installimg
    from xcpimg.layers import resolve

    def build(out: Path) -> None:
        build_installimg(resolve(xcp_config.layer_spec), repo_source.repo_config(xcp_config.layer_spec), out,
                         force=True)
    return shared_build(tmp_path_factory, f"{xcp_config.slug}-install.img", build)


@pytest.mark.expensive
@pytest.mark.boot
def test_built_installimg_iso_boots(xcp_config: MatrixConfig, boot_mode: str, built_installimg: Path,
                                    repo_source: RepoSource, tmp_path_factory: pytest.TempPathFactory,
                                    boot_logdir: Path, record_property: Callable[[str, object], None]) -> None:
    iso = build_matrix_iso(xcp_config, repo_source, built_installimg, tmp_path_factory, "installimg")
    result = boot_and_check(iso, boot_mode, xcp_config, boot_logdir, f"{xcp_config.slug}-installimg",
                            until="installer", record=record_property)
    assert result.installer is not None
    brand, version, _kernel = result.installer
    assert version.startswith(xcp_config.dist), f"the installer says version {version}, the ISO is {xcp_config.dist}"
    assert brand


def without_installer(img: Path, out: Path, work: Path) -> Path:
    """A copy of install.img *img* whose installer.service is no longer enabled (as root)."""
    from xcpimg import compress, cpio
    root = work / "root"
    root.mkdir()
    with compress.open_decompressed(img) as f:
        data = f.read()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=root, check=True)
    link = root / "etc/systemd/system/multi-user.target.wants/installer.service"
    assert link.is_symlink(), "the built install.img does not enable installer.service"
    link.unlink()
    with out.open("wb") as raw, compress.open_compressor(raw, "gzip") as stream:
        cpio.write_newc(root, stream, epoch=0, keep_owner=True)  # type: ignore[arg-type]
    return out


@pytest.mark.expensive
@pytest.mark.boot
@pytest.mark.parametrize("xcp_config", [MatrixConfig("8.3:testing")], ids=["8.3:testing"], scope="session")
def test_installimg_without_installer_fails_at_init(xcp_config: MatrixConfig, built_installimg: Path,
                                                     repo_source: RepoSource, tmp_path: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """An install.img whose init never starts the installer: the boot fails with `installer` not
    reached, `init` named as the last stage, within the installer stage's own time budget."""
    from xcpimg.boot import BootFailure, boot
    from xcpimg.boot.watch import stage_budgets
    img = without_installer(built_installimg, tmp_path / "install.img", tmp_path)
    iso = build_matrix_iso(xcp_config, repo_source, img, tmp_path_factory, "no-installer")
    with pytest.raises(BootFailure) as info:
        boot(iso, firmware="bios", media="cd", until="installer", logdir=tmp_path / "logs")
    result = info.value.result
    assert result.reason is not None and "installer" in result.reason, result.reason
    assert result.stalled == "installer"
    assert "init" in result.reached and "installer" not in result.reached
    assert "init" in str(info.value) and result.installer is None
    budget = stage_budgets(result.accel)["installer"]
    # it gave up once the installer stage's own budget after init ran out, not at a whole-boot deadline
    assert budget <= result.seconds - result.reached["init"] <= budget + 20, (result.seconds, result.reached)
