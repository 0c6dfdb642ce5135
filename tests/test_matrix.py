"""The build-and-boot matrix: every configuration's ISO boots to the installer's init.

Cheap tier: the ISO carries the probe initrd as install.img. Expensive tier: it
carries a real install.img built from the same repositories.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostkit import need_root

from xcpimg.pytest_plugin import MatrixConfig, RepoSource, boot_and_check, build_matrix_iso, shared_build


@pytest.mark.boot
def test_iso_boots_to_installer_init(xcp_config: MatrixConfig, boot_mode: str, xcp_iso: Path,
                                     boot_logdir: Path) -> None:
    boot_and_check(xcp_iso, boot_mode, xcp_config, boot_logdir, f"{xcp_config.slug}-probe")


@pytest.fixture(scope="session")
def built_installimg(xcp_config: MatrixConfig, repo_source: RepoSource,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """install.img built from the matrix repositories (root only)."""
    need_root("building install.img")
    from xcpimg.installimg import build_installimg
    from xcpimg.layers import resolve

    def build(out: Path) -> None:
        build_installimg(resolve(xcp_config.spec), repo_source.repo_config(xcp_config.spec), out, force=True)
    return shared_build(tmp_path_factory, f"{xcp_config.slug}-install.img", build)


@pytest.mark.expensive
@pytest.mark.boot
def test_built_installimg_iso_boots(xcp_config: MatrixConfig, boot_mode: str, built_installimg: Path,
                                    repo_source: RepoSource, tmp_path_factory: pytest.TempPathFactory,
                                    boot_logdir: Path) -> None:
    iso = build_matrix_iso(xcp_config, repo_source, built_installimg, tmp_path_factory, "installimg")
    boot_and_check(iso, boot_mode, xcp_config, boot_logdir, f"{xcp_config.slug}-installimg")
