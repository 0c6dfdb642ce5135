"""Test helper: build small real RPMs with rpmbuild and a repository with createrepo_c."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xcpimg.run import run


def build_rpm(workdir: Path, name: str, version: str = "1.0", release: str = "1",
              files: dict[str, bytes] | None = None, requires: tuple[str, ...] = (),
              payload: str = "w2.xzdio", arch: str = "x86_64", links: dict[str, str] | None = None) -> Path:
    """Build NAME-VERSION-RELEASE.ARCH.rpm holding *files* (absolute path -> bytes) and symlinks
    *links* (absolute path -> target); return its path."""
    top = workdir / f"rpmbuild-{name}-{version}-{release}"
    stage = top / "stage"
    for path, data in (files or {}).items():
        dest = stage / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    for path, target in (links or {}).items():
        dest = stage / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, dest)
    listing = "\n".join(sorted({**(files or {}), **(links or {})}))
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


def sign_rpms(rpms: list[Path], gnupghome: Path, uid: str) -> None:
    """Sign *rpms* in place with rpmsign and the key *uid* of *gnupghome* (SHA256)."""
    run(["rpmsign", "--addsign", "--define", f"_gpg_name {uid}", "--define", f"_gpg_path {gnupghome}",
         "--define", "__gpg /usr/bin/gpg", "--define", "_gpg_digest_algo sha256",
         "--define", f"_gpg_sign_cmd_extra_args --batch --no-tty --homedir {gnupghome}", *rpms],
        env={"GNUPGHOME": str(gnupghome)})


def fixture_sign(rpms: list[Path]) -> None:
    """Sign *rpms* in place with the fixture repository's key."""
    from xcpimg.fixture_repo import load_fixtures, sign
    sign(load_fixtures(), rpms)


OTHER_UID = "other signer <other@xcpimg.invalid>"


@contextlib.contextmanager
def throwaway_gnupghome(uid: str = OTHER_UID) -> Iterator[Path]:
    """A short-path GNUPGHOME (gpg-agent's socket path must stay short) holding a fresh passphrase-less
    RSA signing key *uid*; its agent is stopped and the directory removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="xk", dir="/tmp"))
    os.chmod(home, 0o700)
    try:
        run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key", uid, "rsa2048",
             "sign", "never"])
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def tamper(rpm: Path, offset: int = -100) -> None:
    """Flip one bit of *rpm* (by default in its payload, near the end)."""
    data = bytearray(rpm.read_bytes())
    data[offset] ^= 1
    rpm.write_bytes(bytes(data))
