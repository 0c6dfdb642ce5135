"""Signing hook, signature digest check and the sample signer, with real gpg and createrepo_c."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xcpimg import cli
from xcpimg import sign as S
from xcpimg.errors import BuildError, UsageError
from xcpimg.run import output, run

pytestmark = pytest.mark.timeout(180)

TREEINFO = """[system-v1]
platform_name = XCP
product_version = 8.3.0

[build]
number = cloud
[keys]
{keyline}

[general]
name = XCP-ng-8.3.0
arch = x86_64
"""


def gpg(home: Path, *args: str | Path, input: bytes | None = None) -> str:
    return output(["gpg", "--homedir", home, "--batch", "--yes", "--no-tty", *args], input=input)


def kill_agents(*homes: Path) -> None:
    for home in homes:
        run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)


def agents_under(path: Path) -> list[int]:
    """PIDs of live gpg-agent/dirmngr processes whose command line mentions *path*."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("gpg-agent" in cmdline or "dirmngr" in cmdline) and str(path) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No user keyring: HOME in tmp_path, a private short TMPDIR; afterwards nothing is left there.

    (Short, because gpg-agent's socket lives in GNUPGHOME and its path is limited to ~107 bytes.)
    """
    home = tmp_path / "home"
    home.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="xs-", dir="/tmp"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GNUPGHOME", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    try:
        yield tmp
        assert not (home / ".gnupg").exists()
        assert sorted(os.listdir(tmp)) == []                  # throwaway GNUPGHOMEs removed
        deadline = time.monotonic() + 5
        while agents_under(tmp) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agents_under(tmp) == []                        # their agents stopped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A keyring with two passphrase-less signing keys: signer@example.com and stranger@example.com."""
    home = tmp_path_factory.mktemp("keys") / "gnupg"
    home.mkdir(mode=0o700)
    for uid in ("signer@example.com", "stranger@example.com"):
        gpg(home, "--passphrase", "", "--quick-gen-key", uid, "rsa2048", "sign", "0")
    yield home
    kill_agents(home)


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    top = tmp_path_factory.mktemp("rpms")
    out: list[Path] = []
    for name in ("alpha", "beta"):
        spec = top / f"{name}.spec"
        spec.write_text(f"Name: {name}\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\nBuildArch: noarch\n"
                        f"%description\nd\n%install\nmkdir -p %{{buildroot}}/opt\n"
                        f"echo {name} > %{{buildroot}}/opt/{name}\n%files\n/opt/{name}\n")
        run(["rpmbuild", "-bb", "--quiet", f"--define=_topdir {top / name}", spec])
        out += (top / name / "RPMS").rglob("*.rpm")
    return out


@pytest.fixture
def iso(tmp_path: Path, rpms: list[Path]) -> Path:
    """A staging tree with Packages/, createrepo_c repodata and the 8.3 .treeinfo."""
    root = tmp_path / "iso"
    (root / "Packages").mkdir(parents=True)
    for rpm in rpms:
        (root / "Packages" / rpm.name).write_bytes(rpm.read_bytes())
    run(["createrepo_c", "--quiet", "--revision", "1", "--set-timestamp-to-revision", root])
    (root / ".treeinfo").write_text(TREEINFO.format(keyline="key1 = RPM-GPG-KEY-xcpng"))
    return root


def verify_fresh(iso: Path, tmp_path: Path) -> list[str]:
    """gpg --verify in a brand-new GNUPGHOME holding only the exported keys; the VALIDSIG fields."""
    home = tmp_path / "verify-home"
    home.mkdir(mode=0o700)
    try:
        for key in sorted(iso.glob("RPM-GPG-KEY-*")):
            gpg(home, "--import", key)
        status = gpg(home, "--status-fd", "1", "--verify", iso / "repodata/repomd.xml.asc",
                     iso / "repodata/repomd.xml")
    finally:
        kill_agents(home)
    return next(line.split()[2:] for line in status.splitlines() if line.startswith("[GNUPG:] VALIDSIG"))


def sign_with(keys: Path, uid: str, iso: Path, *, digest: str = "SHA256", data: Path | None = None,
              export: bool = True, armor: bool = True) -> None:
    """Hand-made signature of repomd.xml (or of *data*) with gpg, the key exported to the ISO root."""
    args: list[str | Path] = ["--local-user", uid, "--digest-algo", digest, "--allow-weak-digest-algos",
            "--output", iso / "repodata/repomd.xml.asc", "--detach-sign"]
    gpg(keys, *args, *(["--armor"] if armor else []), data or iso / "repodata/repomd.xml")
    if export:
        (iso / "RPM-GPG-KEY-test").write_text(gpg(keys, "--armor", "--export", "signer@example.com"))


# -- sample signer -------------------------------------------------------------------

def test_sample_sign_throwaway_key(iso: Path, tmp_path: Path) -> None:
    S.sample_sign(iso)
    asc = (iso / "repodata/repomd.xml.asc").read_text()
    assert asc.startswith("-----BEGIN PGP SIGNATURE-----")
    pub = (iso / "RPM-GPG-KEY-xcpimg-test").read_text()
    assert pub.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    validsig = verify_fresh(iso, tmp_path)
    assert validsig[7] == "10"                                   # hash algorithm: SHA512
    assert "key1 = RPM-GPG-KEY-xcpimg-test\n\n[general]" in (iso / ".treeinfo").read_text()
    assert "xcpng" not in (iso / ".treeinfo").read_text()
    info = S.check_repo_signature(iso)
    assert info.hash_names == ["SHA512"] and info.fingerprint == validsig[0]
    assert stat.S_IMODE((iso / "repodata/repomd.xml.asc").stat().st_mode) == 0o644
    assert sorted(p.name for p in iso.iterdir()) == [".treeinfo", "Packages", "RPM-GPG-KEY-xcpimg-test",
                                                       "repodata"]


@pytest.mark.parametrize("digest, hash_id", [("SHA256", "8"), ("sha384", "9")])
def test_sample_sign_existing_keyring(iso: Path, tmp_path: Path, keys: Path, digest: str,
                                      hash_id: str) -> None:
    S.sample_sign(iso, key_id="signer@example.com", nick="MY-ORG", gnupghome=keys, digest=digest)
    validsig = verify_fresh(iso, tmp_path)
    assert validsig[7] == hash_id
    fpr = [line.split(":")[9] for line in gpg(keys, "--with-colons", "--list-keys", "signer@example.com")
           .splitlines() if line.startswith("fpr:")][0]
    assert validsig[0] == fpr
    assert (iso / "RPM-GPG-KEY-MY-ORG").is_file()
    assert "key1 = RPM-GPG-KEY-MY-ORG" in (iso / ".treeinfo").read_text()


def test_sample_sign_uses_gnupghome_env(iso: Path, tmp_path: Path, keys: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNUPGHOME", str(keys))
    S.sample_sign(iso, key_id="stranger@example.com")
    assert "stranger@example.com" in gpg(keys, "--list-packets", iso / "RPM-GPG-KEY-xcpimg-test")
    with pytest.raises(BuildError, match="no secret key matching 'nobody@example.com' in GNUPGHOME"):
        S.sample_sign(iso, key_id="nobody@example.com")


def test_sample_sign_bad_input(tmp_path: Path, iso: Path) -> None:
    with pytest.raises(UsageError, match="does not contain a yum repository"):
        S.sample_sign(tmp_path)
    with pytest.raises(UsageError, match="digest SHA1 is not one of"):
        S.sample_sign(iso, digest="sha1")
    with pytest.raises(UsageError, match="nickname"):
        S.sample_sign(iso, nick="../evil")
    assert not (iso / "repodata/repomd.xml.asc").exists()


@pytest.mark.parametrize("keyline, expected_block", [
    ("key1 = RPM-GPG-KEY-xcpng", "[keys]\nkey1 = RPM-GPG-KEY-X\n\n[general]"),
    ("#key1 = RPM-GPG-KEY-xcpng", "[keys]\nkey1 = RPM-GPG-KEY-X\n\n[general]"),
    ("# key1 = RPM-GPG-KEY-xcpng\n#key2 = other", "[keys]\nkey1 = RPM-GPG-KEY-X\n#key2 = other\n\n[general]"),
    ("", "[keys]\nkey1 = RPM-GPG-KEY-X\n\n\n[general]"),
])
def test_set_treeinfo_key(tmp_path: Path, keyline: str, expected_block: str) -> None:
    treeinfo = tmp_path / ".treeinfo"
    treeinfo.write_text(TREEINFO.format(keyline=keyline))
    S.set_treeinfo_key(treeinfo, "RPM-GPG-KEY-X")
    text = treeinfo.read_text()
    assert expected_block in text and text.count("key1") == 1
    assert text.startswith("[system-v1]\nplatform_name = XCP\n")


def test_set_treeinfo_key_adds_section(tmp_path: Path) -> None:
    treeinfo = tmp_path / ".treeinfo"
    treeinfo.write_text("[general]\nname = x\n")
    S.set_treeinfo_key(treeinfo, "RPM-GPG-KEY-X")
    assert treeinfo.read_text() == "[general]\nname = x\n\n[keys]\nkey1 = RPM-GPG-KEY-X\n"


def test_cli_sample_sign(iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sample-sign", str(iso), "--nick", "CLI", "--digest", "sha384"]) == 0
    assert verify_fresh(iso, tmp_path)[7] == "9"
    assert cli.main(["sample-sign", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"xcpimg sample-sign: error: {tmp_path / 'nowhere'} is not a directory"


# -- check_repo_signature --------------------------------------------------------------

def test_check_accepts_binary_signature(iso: Path, keys: Path) -> None:
    sign_with(keys, "signer@example.com", iso, digest="SHA384", armor=False)
    assert S.check_repo_signature(iso).hash_names == ["SHA384"]


@pytest.mark.parametrize("digest", ["SHA1", "MD5", "RIPEMD160", "SHA224"])
def test_check_refuses_weak_digest(iso: Path, keys: Path, digest: str) -> None:
    sign_with(keys, "signer@example.com", iso, digest=digest)
    with pytest.raises(BuildError, match=f"uses digest {digest} .*SHA256 or stronger"):
        S.check_repo_signature(iso)


@pytest.mark.parametrize("digest, hash_id", [("SHA256", 8), ("SHA384", 9), ("SHA512", 10)])
def test_check_accepts_sha2_256_and_up(iso: Path, keys: Path, digest: str, hash_id: int) -> None:
    sign_with(keys, "signer@example.com", iso, digest=digest)
    info = S.check_repo_signature(iso)
    assert info.hash_ids == [hash_id] and info.hash_names == [digest]


def test_digest_judged_from_gpg_not_from_the_parse(iso: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser that claims SHA256 changes nothing: gpg's VALIDSIG says SHA224 (id 11), refused."""
    sign_with(keys, "signer@example.com", iso, digest="SHA224")
    real = S.signature_info
    monkeypatch.setattr(S, "signature_info", lambda asc: S.SignatureInfo([8], real(asc).key_ids))
    with pytest.raises(BuildError, match=r"uses digest SHA224 \(id 11\)"):
        S.check_repo_signature(iso)
    sign_with(keys, "signer@example.com", iso, digest="SHA512")
    monkeypatch.setattr(S, "signature_info", lambda asc: S.SignatureInfo([2], real(asc).key_ids))
    assert S.check_repo_signature(iso).hash_ids == [10]


def test_check_refuses_missing_signature(iso: Path) -> None:
    with pytest.raises(BuildError, match="left no signature: repodata/repomd.xml.asc is missing"):
        S.check_repo_signature(iso)


def test_check_refuses_non_signatures(iso: Path, keys: Path) -> None:
    asc = iso / "repodata/repomd.xml.asc"
    repomd = iso / "repodata/repomd.xml"
    cases = [
        ("hello, I am a signature\n", "not an ASCII-armoured OpenPGP signature"),
        (gpg(keys, "--armor", "--export", "signer@example.com"),
         "PGP PUBLIC KEY BLOCK block, not a detached"),
        (gpg(keys, "--local-user", "signer@example.com", "--clearsign", "--output", "-", repomd),
         "PGP SIGNED MESSAGE block"),
        (gpg(keys, "--local-user", "signer@example.com", "--sign", "--armor", "--output", "-", repomd),
         "PGP MESSAGE block"),
        ("-----BEGIN PGP SIGNATURE-----\n\n!!!notbase64\n-----END PGP SIGNATURE-----\n", "not valid base64"),
    ]
    for text, message in cases:
        asc.write_text(text)
        with pytest.raises(BuildError, match=message):
            S.check_repo_signature(iso)
    # binary inline-signed message: packets other than signatures
    gpg(keys, "--local-user", "signer@example.com", "--sign", "--output", asc, repomd)
    with pytest.raises(BuildError, match="holds a (compressed data|one-pass signature) packet"):
        S.check_repo_signature(iso)


def test_check_refuses_damaged_armour(iso: Path, keys: Path) -> None:
    sign_with(keys, "signer@example.com", iso)
    asc = iso / "repodata/repomd.xml.asc"
    lines = asc.read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if len(line) > 40)
    lines[body] = ("B" if lines[body][10] != "B" else "C").join([lines[body][:10], lines[body][11:]])
    asc.write_text("\n".join(lines) + "\n")
    with pytest.raises(BuildError, match="armour checksum mismatch"):
        S.check_repo_signature(iso)


def test_check_refuses_unknown_key_other_data_and_no_key(iso: Path, keys: Path, tmp_path: Path) -> None:
    sign_with(keys, "stranger@example.com", iso)               # key not shipped at the ISO root
    with pytest.raises(BuildError, match="does not verify: signed by key .*not among RPM-GPG-KEY-test"):
        S.check_repo_signature(iso)
    other = tmp_path / "other.xml"
    other.write_text("<repomd/>\n")
    sign_with(keys, "signer@example.com", iso, data=other)     # valid signature, but of other data
    with pytest.raises(BuildError, match="does not verify: signature bad"):
        S.check_repo_signature(iso)
    sign_with(keys, "signer@example.com", iso)
    S.check_repo_signature(iso)
    with open(iso / "repodata/repomd.xml", "a") as f:          # repomd changed after signing
        f.write("<!-- -->\n")
    with pytest.raises(BuildError, match="does not verify"):
        S.check_repo_signature(iso)
    (iso / "RPM-GPG-KEY-test").unlink()
    with pytest.raises(BuildError, match="no RPM-GPG-KEY-\\* file at the ISO root"):
        S.check_repo_signature(iso)
    (iso / "RPM-GPG-KEY-test").write_text("not a key\n")
    with pytest.raises(BuildError, match="RPM-GPG-KEY-test holds no OpenPGP public key"):
        S.check_repo_signature(iso)


# -- packet parser on crafted input --------------------------------------------------------

def test_parse_v3_and_new_format_lengths() -> None:
    v3 = bytes([3, 5, 0x00, 0, 0, 0, 1]) + bytes.fromhex("1122334455667788") + bytes([1, 1]) + b"\0\0" + b"x"
    old = bytes([0x88, len(v3)]) + v3                           # old format, 1-byte length, tag 2
    assert list(S.packets(old)) == [(2, v3)]
    assert S.parse_signature(v3) == (0x00, 1, ["1122334455667788"])
    # new format with partial body lengths: 2 bytes, then 1 byte, then the final 1-octet length
    v4 = bytes([4, 0x01, 1, 8, 0, 0, 0, 0]) + b"\0\0xy"
    partial = bytes([0xC2, 0xE1]) + v4[:2] + bytes([0xE0]) + v4[2:3] + bytes([len(v4) - 3]) + v4[3:]
    assert list(S.packets(partial)) == [(2, v4)]
    assert S.parse_signature(v4)[:2] == (0x01, 8)
    v6 = bytes([6, 0x00, 27, 10]) + (0).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\0\0"
    assert S.parse_signature(v6)[:2] == (0x00, 10)


def test_crafted_md5_v3_signature_refused(iso: Path, keys: Path) -> None:
    (iso / "RPM-GPG-KEY-test").write_text(gpg(keys, "--armor", "--export", "signer@example.com"))
    v3 = bytes([3, 5, 0x00, 0, 0, 0, 1]) + bytes(8) + bytes([1, 1]) + b"\0\0"
    body = base64.b64encode(bytes([0x88, len(v3)]) + v3).decode()
    (iso / "repodata/repomd.xml.asc").write_text(
        f"-----BEGIN PGP SIGNATURE-----\nVersion: crafted\n\n{body}\n-----END PGP SIGNATURE-----\n")
    with pytest.raises(BuildError, match=r"repomd.xml.asc (does not verify|uses digest MD5 \(id 1\))"):
        S.check_repo_signature(iso)
    v4_key_sig = bytes([4, 0x13, 1, 8, 0, 0, 0, 0, 0, 0])       # a certification, not a document signature
    body = base64.b64encode(bytes([0xC2, len(v4_key_sig)]) + v4_key_sig).decode()
    (iso / "repodata/repomd.xml.asc").write_text(
        f"-----BEGIN PGP SIGNATURE-----\n\n{body}\n-----END PGP SIGNATURE-----\n")
    with pytest.raises(BuildError, match="signature of type 0x13, not a document signature"):
        S.check_repo_signature(iso)


# -- the --sign-script hook -------------------------------------------------------------------

def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "sign.sh"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_sign_script_sample_wrapper(iso: Path, tmp_path: Path) -> None:
    import sys
    wrapper = script(tmp_path, f'exec {sys.executable} -m xcpimg.cli sample-sign --nick WRAP "$1"')
    info = S.run_sign_script(wrapper, iso)
    assert info.hash_names == ["SHA512"]
    assert (iso / "RPM-GPG-KEY-WRAP").is_file()


def test_sign_script_failure(iso: Path, tmp_path: Path) -> None:
    failing = script(tmp_path, 'echo "signing $1"; echo first >&2; echo "remote signer refused" >&2; exit 3')
    with pytest.raises(BuildError, match=r"sign script .*sign.sh failed \(exit 3\): remote signer refused$"):
        S.run_sign_script(failing, iso)


def test_sign_script_gets_iso_dir_and_must_sign(iso: Path, tmp_path: Path) -> None:
    lazy = script(tmp_path, f'[ "$1" = "{iso.resolve()}" ] && [ $# = 1 ] && touch "$1/seen"')
    with pytest.raises(BuildError, match="left no signature"):
        S.run_sign_script(lazy, iso)
    assert (iso / "seen").exists()


def test_sign_script_weak_digest(iso: Path, tmp_path: Path, keys: Path) -> None:
    g = f"gpg --homedir {keys} --batch --yes --local-user signer@example.com"
    weak = script(tmp_path, f'{g} --allow-weak-digest-algos --digest-algo SHA1 '
                            f'--armor --detach-sign "$1/repodata/repomd.xml" && '
                            f'{g} --armor --export signer@example.com > "$1/RPM-GPG-KEY-x"')
    with pytest.raises(BuildError, match="uses digest SHA1"):
        S.run_sign_script(weak, iso)


def test_sign_script_not_runnable(iso: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        S.run_sign_script(tmp_path / "missing.sh", iso)
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="is not executable"):
        S.run_sign_script(plain, iso)
