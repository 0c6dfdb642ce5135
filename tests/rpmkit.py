"""Test helper: build small real RPMs with rpmbuild and a repository with createrepo_c."""

from __future__ import annotations

from pathlib import Path

from xcpimg.run import run


def build_rpm(workdir: Path, name: str, version: str = "1.0", release: str = "1",
              files: dict[str, bytes] | None = None, requires: tuple[str, ...] = (),
              payload: str = "w2.xzdio", arch: str = "x86_64") -> Path:
    """Build NAME-VERSION-RELEASE.ARCH.rpm holding *files* (absolute path -> bytes); return its path."""
    top = workdir / f"rpmbuild-{name}-{version}-{release}"
    stage = top / "stage"
    for path, data in (files or {}).items():
        dest = stage / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    listing = "\n".join(sorted(files or {}))
    spec = top / f"{name}.spec"
    spec.write_text(f"""Name: {name}
Version: {version}
Release: {release}
Summary: test package {name}
License: GPL
BuildArch: {arch}
{''.join(f'Requires: {r}' + chr(10) for r in requires)}
%description
test package

%install
mkdir -p %{{buildroot}}
cp -a {stage}/. %{{buildroot}}/ 2>/dev/null || true

%files
{listing}
""")
    run(["rpmbuild", "-bb", "--quiet", f"--define=_topdir {top}", f"--define=_binary_payload {payload}",
         "--define=_build_id_links none", "--define=debug_package %{nil}",
         "--define=__os_install_post %{nil}", spec])
    return next((top / "RPMS").rglob("*.rpm"))


def make_repo(repodir: Path, rpms: list[Path]) -> Path:
    """Copy *rpms* into repodir/Packages and run createrepo_c; return repodir."""
    pkgs = repodir / "Packages"
    pkgs.mkdir(parents=True, exist_ok=True)
    for rpm in rpms:
        (pkgs / rpm.name).write_bytes(rpm.read_bytes())
    run(["createrepo_c", "--quiet", repodir])
    return repodir
