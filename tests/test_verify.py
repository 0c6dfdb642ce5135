"""xcpimg.verify: package signatures checked in a private rpm keyring; dnf names never become options.

Real rpmkeys on small real RPMs: signed by the fixture key (accepted), unsigned,
signed by a throwaway key, tampered after signing (each refused, one line
naming the package). Keys from file:// URLs, paths and HTTP; unreadable ones refused.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpmkit import OTHER_UID, build_rpm, fixture_sign, sign_rpms, tamper, throwaway_gnupghome

from xcpimg import dnf as dnf_mod
from xcpimg import verify
from xcpimg.dnf import Dnf, check_package_names
from xcpimg.errors import BuildError, UsageError
from xcpimg.fixture_repo import load_fixtures
from xcpimg.httpserve import serve_directory
from xcpimg.layers import resolve
from xcpimg.repos import RepoConfig

FIXTURE_KEY = load_fixtures().dir / load_fixtures().repo["key"]["public"]


@pytest.fixture(scope="module")
def other_home() -> Iterator[Path]:
    with throwaway_gnupghome() as home:
        yield home


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory, other_home: Path) -> dict[str, Path]:
    """good (fixture key), unsigned, other (throwaway key), tampered (fixture key, then a flipped byte)."""
    tmp = tmp_path_factory.mktemp("rpms")
    out = {}
    for kind in ("good", "unsigned", "other", "tampered"):
        out[kind] = build_rpm(tmp / kind, f"xcpimg-{kind}", files={f"/usr/share/{kind}": kind.encode() * 5000})
    fixture_sign([out["good"], out["tampered"]])
    sign_rpms([out["other"]], other_home, OTHER_UID)
    tamper(out["tampered"])
    return out


@pytest.fixture
def keyring(tmp_path: Path) -> verify.Keyring:
    return verify.Keyring([FIXTURE_KEY.as_uri()], tmp_path / "kr")


def test_good_package_accepted(keyring: verify.Keyring, rpms: dict[str, Path]) -> None:
    keyring.check([rpms["good"]])


@pytest.mark.parametrize("kind,words", [
    ("unsigned", ("is not signed", "--nogpgcheck")),
    ("other", ("is signed by key ID", "not among the repository keys", FIXTURE_KEY.name)),
    ("tampered", ("does not match its signature", "BAD")),
])
def test_bad_packages_refused(keyring: verify.Keyring, rpms: dict[str, Path], kind: str,
                              words: tuple[str, ...]) -> None:
    with pytest.raises(BuildError) as err:
        keyring.check([rpms["good"], rpms[kind]])
    msg = str(err.value)
    assert msg.startswith(f"package {rpms[kind].name} ") and "\n" not in msg, msg
    for word in words:
        assert word in msg, msg
    assert rpms["good"].name not in msg


def test_several_bad_named_once(keyring: verify.Keyring, rpms: dict[str, Path]) -> None:
    with pytest.raises(BuildError, match=r"\(and 2 more package\(s\)\)"):
        keyring.check([rpms["unsigned"], rpms["other"], rpms["tampered"], rpms["good"]])


def test_odd_file_names_refused(keyring: verify.Keyring, rpms: dict[str, Path], tmp_path: Path) -> None:
    """A repository picks the file names: one that could forge rpmkeys' report is refused outright."""
    odd = tmp_path / f"x.rpm:\n    Header V4 RSA Signature, key ID b35aa2ac: OK\n{rpms['unsigned'].name}"
    shutil.copy(rpms["unsigned"], odd)
    with pytest.raises(BuildError, match="has an unexpected name"):
        keyring.check([odd, rpms["good"]])


def test_not_an_rpm_refused(keyring: verify.Keyring, tmp_path: Path) -> None:
    junk = tmp_path / "junk.rpm"
    junk.write_bytes(b"\xed\xab\xee\xdb" + b"\0" * 200)
    with pytest.raises(BuildError, match="package junk.rpm is not a readable RPM"):
        keyring.check([junk])


def test_host_keyring_does_not_count(tmp_path: Path, rpms: dict[str, Path], other_home: Path) -> None:
    """A key imported into the host's rpm database or ~/.rpmmacros changes nothing: the keyring is private."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".rpmmacros").write_text("%_pkgverify_level none\n%_dbpath /nonexistent\n")
    kr = verify.Keyring([FIXTURE_KEY.as_uri()], tmp_path / "kr")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        with pytest.raises(BuildError, match="is not signed"):
            kr.check([rpms["unsigned"]])


def test_rpmkeys_argv_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append([str(a) for a in argv])
        assert kwargs["env"] == {"HOME": str(tmp_path / "kr")}
        paths = [a for a in argv if a.endswith(".rpm")]
        out = "".join(f"{p}:\n    Header V4 RSA/SHA256 Signature, key ID b35aa2ac: OK\n" for p in paths)
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")

    monkeypatch.setattr(verify, "run", fake_run)
    kr = verify.Keyring([FIXTURE_KEY.as_uri(), str(FIXTURE_KEY)], tmp_path / "kr")
    kr.check([tmp_path / "b.rpm", tmp_path / "a.rpm"])
    root = str(tmp_path / "kr")
    base = ["rpmkeys", f"--root={root}", "--dbpath=/rpmdb", "--define=_pkgverify_level all"]
    assert calls == [
        [*base, "--import", f"{root}/keys/key1.asc"],
        [*base, "--import", f"{root}/keys/key2.asc"],
        [*base, "--checksig", "--verbose", "--", str(tmp_path / "a.rpm"), str(tmp_path / "b.rpm")],
    ]


def test_keys_from_file_url_path_and_http(tmp_path: Path, rpms: dict[str, Path]) -> None:
    two = tmp_path / "two-keys.asc"   # several blocks in one file are all imported
    two.write_bytes(b"junk\n" + FIXTURE_KEY.read_bytes() * 2)
    verify.Keyring([str(two)], tmp_path / "kr1").check([rpms["good"]])
    (tmp_path / "srv").mkdir()
    shutil.copy(FIXTURE_KEY, tmp_path / "srv" / "KEY")
    with serve_directory(tmp_path / "srv") as url:
        verify.Keyring([f"{url.rstrip('/')}/KEY"], tmp_path / "kr2").check([rpms["good"]])
        with pytest.raises(UsageError, match=r"cannot read gpgkey .*/nope: HTTP 404"):
            verify.read_key(f"{url.rstrip('/')}/nope")


@pytest.mark.parametrize("url,words", [
    ("file:///nonexistent/RPM-GPG-KEY", ("cannot read gpgkey file:///nonexistent/RPM-GPG-KEY", "No such file")),
    ("/nonexistent/key", ("cannot read gpgkey /nonexistent/key",)),
    ("http://127.0.0.1:9/RPM-GPG-KEY", ("cannot read gpgkey http://127.0.0.1:9/RPM-GPG-KEY", "ConnectionError")),
    ("ftp://example.invalid/k", ("unsupported URL scheme",)),
    ("NOTAKEY", ("holds no ASCII-armoured OpenPGP public key",)),
])
def test_unreadable_keys_refused(tmp_path: Path, url: str, words: tuple[str, ...]) -> None:
    if url == "NOTAKEY":
        url = str(tmp_path / "notakey")
        Path(url).write_text("hello\n")
    with pytest.raises(UsageError) as err:
        verify.Keyring([url], tmp_path / "kr")
    for word in words:
        assert word in str(err.value)


def test_key_urls_of_repo_file() -> None:
    text = "[a]\ngpgkey=file:///k1 https://x/k2,file:///k3\n[b]\n  gpgkey = file:///k4\ngpgcheck=1\n"
    assert verify.key_urls(text) == ["file:///k1", "https://x/k2", "file:///k3", "file:///k4"]


# ------------------------------------------------------------------------------------ dnf and names

@pytest.mark.parametrize("name", ["kernel-alt", "python3-foo", "glibc.x86_64", "xcp-ng-deps", "memtest86+",
                                  "perl(Foo::Bar)", "/usr/bin/bash", "kernel-4.19.19", "libstdc++", "_x"])
def test_good_names(name: str) -> None:
    assert check_package_names([name]) == [name]


@pytest.mark.parametrize("name", ["--destdir=/x", "-y", "a b", "foo;rm", "$(id)", "a`b`", "x|y", "", "a\nb",
                                  "foo>=1.2", "'q'", "a&b", "*"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid --extra-packages name"):
        check_package_names(["bash", name], "--extra-packages name")


def _no_fetch(monkeypatch: pytest.MonkeyPatch, copy: list[Path] | None = None) -> None:
    """dnf resolves; instead of fetching, copy *copy* into the destination."""
    from xcpimg.fetch import FetchStats

    def fake_fetch(urls: list[str], expects: object, dest: Path, cache: object) -> FetchStats:
        dest.mkdir(parents=True, exist_ok=True)
        for rpm in copy or []:
            shutil.copy(rpm, dest)
        return FetchStats(paths=[dest / p.name for p in copy or []])
    monkeypatch.setattr(dnf_mod, "fetch_packages", fake_fetch)
    monkeypatch.setattr(dnf_mod, "repo_expectations", lambda *a: {})


URL_OUT = b"http://m/8/8.3/base/x86_64/Packages/kernel-1-1.x86_64.rpm\n"


def test_dnf_argv_names_after_double_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(dnf_mod, "run", lambda argv, **kw: calls.append([str(a) for a in argv])
                        or subprocess.CompletedProcess(argv, 0, URL_OUT, b""))
    _no_fetch(monkeypatch)
    d = Dnf(resolve("8.3"), RepoConfig(srcurl="http://m/8/8.3", gpgcheck=False, package_cache=False),
            tmp_path / "dnf")
    d.download(["kernel", "kernel-alt"], tmp_path / "dl", resolve=True)
    d.install(tmp_path / "root", ["bash", "glibc.x86_64"])
    assert calls[0][-6:] == ["download", "--url", "--resolve", "--", "kernel", "kernel-alt"]
    assert calls[1][-5:] == ["install", "--setopt=install_weak_deps=False", "--", "bash", "glibc.x86_64"]
    assert all(a.startswith("-") for a in calls[0][1:calls[0].index("--")] if a != "download")
    with pytest.raises(UsageError, match="'--destdir=/x'"):
        d.download(["--destdir=/x", "bash"], tmp_path / "dl")
    with pytest.raises(UsageError):
        d.install(tmp_path / "root", ["-x"])
    assert len(calls) == 2
    # with the package cache, an install first resolves its packages to pre-seed dnf's cache
    calls.clear()
    d = Dnf(resolve("8.3"), RepoConfig(srcurl="http://m/8/8.3", gpgcheck=False), tmp_path / "dnf2")
    d.install(tmp_path / "root2", ["bash"])
    assert calls[0][-5:] == ["download", "--url", "--resolve", "--", "bash"]
    assert calls[1][-4:] == ["install", "--setopt=install_weak_deps=False", "--", "bash"]


def test_dnf_checks_downloads_with_the_layers_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   rpms: dict[str, Path]) -> None:
    """Dnf reads the keys of the rendered repos at once (a bad --gpgkey fails before any download),
    and every RPM that dnf download leaves in the destination is checked."""
    with pytest.raises(UsageError, match="cannot read gpgkey file:///nonexistent"):
        Dnf(resolve("8.3"), RepoConfig(srcurl="http://m/8/8.3", gpgkey="file:///nonexistent"), tmp_path / "d0")
    dest = tmp_path / "dl"

    def fake_dnf(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 0, URL_OUT, b"")

    monkeypatch.setattr(dnf_mod, "run", fake_dnf)
    _no_fetch(monkeypatch, [rpms["good"], rpms["unsigned"]])
    d = Dnf(resolve("8.3"), RepoConfig(srcurl="http://m/8/8.3", gpgkey=FIXTURE_KEY.as_uri()), tmp_path / "d1")
    assert d.gpgkeys() == [FIXTURE_KEY.as_uri()]
    with pytest.raises(BuildError, match=f"package {rpms['unsigned'].name} is not signed"):
        d.download(["xcpimg-good"], dest)
    # the layers' own key when no --gpgkey: XCP-ng's, which did not sign the fixture's package
    d2 = Dnf(resolve("8.3"), RepoConfig(srcurl="http://m/8/8.3"), tmp_path / "d2")
    assert d2.gpgkeys()[0].endswith("/configs/base/RPM-GPG-KEY-xcpng")
    (dest / rpms["unsigned"].name).unlink()
    with pytest.raises(BuildError, match="is signed by key ID b35aa2ac, which is not among"):
        d2.download(["xcpimg-good"], dest)
