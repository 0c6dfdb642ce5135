"""Repository definitions and the isolated dnf wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostkit import need_root
from rpmkit import build_rpm, make_repo

from xcpimg.dnf import Dnf
from xcpimg.errors import BuildError, UsageError
from xcpimg.layers import configs_dir, resolve
from xcpimg.repos import RepoConfig, default_srcurl, parse_define_repo, parse_layer_srcurl, write_repo_files


@pytest.mark.parametrize("dist, url", [
    ("8.3", "https://updates.xcp-ng.org/8/8.3"),
    ("8.2", "https://updates.xcp-ng.org/8/8.2"),
    ("8.2.1", "https://updates.xcp-ng.org/8/8.2"),
])
def test_default_srcurl(dist: str, url: str) -> None:
    assert default_srcurl(dist) == url


def test_define_repo_parsing(tmp_path: Path) -> None:
    assert parse_define_repo("extra!http://h/x") == ("extra", "http://h/x")
    assert parse_define_repo(f"loc!{tmp_path}") == ("loc", tmp_path.as_uri())
    for bad in ("noseparator", "!http://x", "nick!"):
        with pytest.raises(UsageError, match="NICK!URL"):
            parse_define_repo(bad)
    with pytest.raises(UsageError, match="names no layer"):
        parse_layer_srcurl("=http://x")


def test_repo_files_for_testing_chain(tmp_path: Path) -> None:
    layers = resolve("8.3:testing")
    cfg = RepoConfig(srcurl="http://mirror/8/8.3", layer_srcurls={"testing": "http://other/t"},
                     custom=(("extra", "http://e/r"),))
    ids = write_repo_files(layers, cfg, tmp_path)
    assert ids == ["xcpng-testing", "xcpng-candidates", "xcpng-updates", "xcpng-base", "extra"]
    base = (tmp_path / "base.repo").read_text()
    assert "baseurl=http://mirror/8/8.3/base/x86_64/" in base
    assert f"gpgkey={(configs_dir() / 'base/RPM-GPG-KEY-xcpng').as_uri()}" in base
    assert "gpgcheck=1" in base
    assert "baseurl=http://other/t/testing/x86_64/" in (tmp_path / "testing.repo").read_text()
    custom = (tmp_path / "custom-extra.repo").read_text()
    assert "[extra]" in custom and "baseurl=http://e/r/x86_64/" in custom
    # custom repositories are checked with the same keys as the layers' (--nogpgcheck for unsigned ones)
    assert "gpgcheck=1" in custom and f"gpgkey={(configs_dir() / 'base/RPM-GPG-KEY-xcpng').as_uri()}" in custom


def test_gpgkey_override_and_nogpgcheck(tmp_path: Path) -> None:
    write_repo_files(resolve("8.3"), RepoConfig(srcurl="http://m", gpgkey="file:///k", gpgcheck=False), tmp_path)
    text = (tmp_path / "base.repo").read_text()
    assert "gpgkey=file:///k" in text and "gpgcheck=0" in text
    write_repo_files(resolve("8.3"), RepoConfig(srcurl="http://m", gpgkey="file:///k", custom=(("c", "http://c"),)),
                     tmp_path)
    custom = (tmp_path / "custom-c.repo").read_text()
    assert "gpgkey=file:///k" in custom and "gpgcheck=1" in custom


def test_srcurl_layer_must_be_in_chain(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--srcurl:linstor names no repo layer"):
        write_repo_files(resolve("8.3:testing"), RepoConfig(layer_srcurls={"linstor": "http://x"}), tmp_path)


def test_legacy_layer_template_still_works(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "yum-repos.conf.tmpl").write_text(
        "[old]\nbaseurl=@@SRCURL@@/old/@@RPMARCH@@/\ngpgcheck=0\n")
    out = tmp_path / "out"
    ids = write_repo_files(resolve(f"8.3:{legacy}"), RepoConfig(srcurl="http://m/8/8.3"), out)
    assert ids[0] == "old"
    assert "baseurl=http://m/8/8.3/old/x86_64/" in (out / "legacy.repo").read_text()


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A srcurl tree with a base repo: app requires lib; lib 1.0-1 and 1.0-2."""
    work = tmp_path_factory.mktemp("tinyrepo")
    rpms = [build_rpm(work, "app", files={"/usr/bin/app": b"app"}, requires=("lib",)),
            build_rpm(work, "lib", files={"/usr/lib/lib.so": b"v1"}),
            build_rpm(work, "lib", release="2", files={"/usr/lib/lib.so": b"v2"})]
    make_repo(work / "root/base/x86_64", rpms)
    return work / "root"


def _host_dnf_state() -> dict[str, float]:
    paths = [p for d in ("/var/cache/dnf", "/var/lib/dnf", "/var/log") for p in Path(d).glob("*dnf*")]
    paths += list(Path("/var/cache/dnf").glob("*"))
    return {str(p): p.stat().st_mtime for p in paths if p.exists()}


def test_dnf_download_with_and_without_deps(tiny_repo: Path, tmp_path: Path) -> None:
    host_before = _host_dnf_state()
    dnf = Dnf(resolve("8.3"), RepoConfig(srcurl=tiny_repo.as_uri(), gpgcheck=False), tmp_path / "w")
    got = dnf.download(["app"], tmp_path / "nodeps")
    assert [p.name for p in got] == ["app-1.0-1.x86_64.rpm"]
    got = dnf.download(["app"], tmp_path / "deps", resolve=True)
    assert sorted(p.name for p in got) == ["app-1.0-1.x86_64.rpm", "lib-1.0-2.x86_64.rpm"]
    assert _host_dnf_state() == host_before, "dnf touched the host's dnf state"


def test_dnf_missing_package_is_named(tiny_repo: Path, tmp_path: Path) -> None:
    dnf = Dnf(resolve("8.3"), RepoConfig(srcurl=tiny_repo.as_uri(), gpgcheck=False), tmp_path / "w")
    with pytest.raises(BuildError, match="nosuchpkg"):
        dnf.download(["app", "nosuchpkg"], tmp_path / "d")


def test_dnf_unreachable_repo_names_its_url(tmp_path: Path) -> None:
    missing = (tmp_path / "nothing").as_uri()
    dnf = Dnf(resolve("8.3"), RepoConfig(srcurl=missing, gpgcheck=False), tmp_path / "w")
    with pytest.raises(BuildError, match=f"cannot read repository xcpng-base at {missing}/base/x86_64/"):
        dnf.download(["app"], tmp_path / "d")


def test_dnf_install_into_root(tiny_repo: Path, tmp_path: Path) -> None:
    need_root("dnf --installroot")
    dnf = Dnf(resolve("8.3"), RepoConfig(srcurl=tiny_repo.as_uri(), gpgcheck=False), tmp_path / "w")
    root = tmp_path / "root"
    host_before = _host_dnf_state()
    dnf.install(root, ["app"])
    assert _host_dnf_state() == host_before, "dnf touched the host's dnf state"
    assert (root / "usr/bin/app").read_bytes() == b"app"
    assert (root / "usr/lib/lib.so").read_bytes() == b"v2"
    assert any((root / "var/lib/rpm").iterdir()), "rpm database not at /var/lib/rpm"
    assert not (root / "root/.rpmdb").exists()
    assert (root / "var/cache/dnf").is_dir() and not (root / "tmp").exists()
