"""`xcpimg iso` end to end against the embedded fixture repository.

Each ISO is built once (module-scoped fixtures) with a small dummy install.img and
read back with readers independent of the writer: xorriso (file list, El Torito,
system area), isoinfo, sgdisk, mtools (efiboot.img), gpg (signature), the ISO's
own repodata (package closure). Bad input goes through the CLI in a subprocess,
with TMPDIR pointed at a fresh directory that must stay empty.

About 2 minutes on a 2-core machine (~15 ISO builds).
"""

from __future__ import annotations

import configparser
import gzip
import hashlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import pytest
from hostkit import without_dac_override
from rpmkit import OTHER_UID, build_rpm, fixture_sign, make_repo, sign_rpms, tamper, throwaway_gnupghome

from xcpimg.fixture_repo import FixtureRepo, ensure_fixture_repo
from xcpimg.iso.build import IsoOptions, build_iso
from xcpimg.layers import resolve
from xcpimg.repos import RepoConfig
from xcpimg.rpm import RpmPackage
from xcpimg.run import DEFAULT_EPOCH, build_epoch, output, run

FULL_CONFIGS = ("8.2:updates", "8.2:testing", "8.3:base", "8.3:testing")
INSTALL_IMG = b"xcpimg test install.img\n" * 4096
SYSLINUX_LOADERS = ("isolinux.bin", "mboot.c32", "menu.c32", "ldlinux.c32", "libcom32.c32", "libutil.c32")
PXELINUX_LOADERS = ("pxelinux.0", "mboot.c32", "menu.c32", "ldlinux.c32", "libcom32.c32", "libutil.c32")
SEARCH_LINE = "search --file --set /install.img"
OVERLAY_WORDS = ("xcpimg-overlay-word", "overlay.arg=1")
SIGN_NICK = "xcpimg-tests"
EFIBOOT_SIZE = 2880 * 1024
SDE = 1712345678  # 2024-04-05T19:34:38Z


# ----------------------------------------------------------------------------------- reading back


class Iso:
    """A built ISO, read back: file list from xorriso, file contents from pycdlib's reader."""

    def __init__(self, path: Path):
        self.path = path
        listing = output(["xorriso", "-indev", path, "-find", "/", "-type", "f"])
        self.files = {line.strip().strip("'") for line in listing.splitlines() if line.startswith("'/")}
        assert self.files, listing

    def read(self, rel: str) -> bytes:
        iso = pycdlib.PyCdlib()
        iso.open(str(self.path))
        try:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=rel)
            return buf.getvalue()
        finally:
            iso.close()

    def text(self, rel: str) -> str:
        return self.read(rel).decode()

    def under(self, prefix: str) -> set[str]:
        """Names of the files directly in directory *prefix* (e.g. ``/boot``)."""
        prefix = prefix.rstrip("/") + "/"
        return {f[len(prefix):] for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix):]}

    def rpms(self) -> dict[str, str]:
        """Packages/ of the ISO: package name -> file name (names parsed by dropping -VERSION-RELEASE.ARCH)."""
        return {re.sub(r"-[^-]+-[^-]+\.[^.]+\.rpm$", "", name): name for name in self.under("/Packages")}

    def efiboot(self, tmp: Path) -> Path:
        img = tmp / "efiboot.img"
        if not img.exists():
            img.write_bytes(self.read("/boot/efiboot.img"))
        return img

    def efiboot_grub_cfg(self, tmp: Path) -> str:
        """The grub.cfg inside efiboot.img."""
        return mtools(["mtype", "-i", self.efiboot(tmp), "::/EFI/xenserver/grub.cfg"]).decode()

    def boot_menus(self, tmp: Path) -> list[str]:
        """isolinux.cfg, the ISO's grub.cfg and efiboot.img's grub.cfg."""
        return [self.text("/boot/isolinux/isolinux.cfg"), self.text("/EFI/xenserver/grub.cfg"),
                self.efiboot_grub_cfg(tmp)]


def mtools(argv: list[str | Path]) -> bytes:
    return run(argv, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def efiboot_files(img: Path) -> set[str]:
    """Regular files in a FAT image, as ``/EFI/BOOT/BOOTX64.EFI`` paths (mdir, recursive, bare)."""
    listing = mtools(["mdir", "-/", "-b", "-i", img, "::/"]).decode()
    lines = [line.strip() for line in listing.splitlines() if line.strip()]
    assert all(line.startswith("::/") for line in lines), listing
    return {line[2:] for line in lines if not line.endswith("/")}  # directories end with a slash


def vmlinuz_entries(cfg: str) -> list[list[str]]:
    """For every line naming a dom0 kernel (``.../vmlinuz``), the words that follow it."""
    entries = []
    for line in cfg.splitlines():
        words = line.split()
        for i, word in enumerate(words):
            if word.endswith("/vmlinuz"):
                entries.append(words[i + 1:])
                break
    return entries


def primary_packages(iso: Iso) -> list[dict[str, object]]:
    """Packages of the ISO's repodata (primary.xml): name, evr, href, requires, provides."""
    ns = {"repo": "http://linux.duke.edu/metadata/repo", "c": "http://linux.duke.edu/metadata/common",
          "rpm": "http://linux.duke.edu/metadata/rpm"}
    repomd = ET.fromstring(iso.read("/repodata/repomd.xml"))
    href = repomd.find("repo:data[@type='primary']/repo:location", ns).get("href")  # type: ignore[union-attr]
    primary = ET.fromstring(gzip.decompress(iso.read(f"/{href}")))
    out = []
    for pkg in primary.findall("c:package", ns):
        ver = pkg.find("c:version", ns)
        fmt = pkg.find("c:format", ns)
        assert ver is not None and fmt is not None
        out.append({
            "name": pkg.findtext("c:name", namespaces=ns),
            "evr": f"{ver.get('ver')}-{ver.get('rel')}",
            "href": pkg.find("c:location", ns).get("href"),  # type: ignore[union-attr]
            "requires": [e.get("name") for e in fmt.findall("rpm:requires/rpm:entry", ns)],
            "provides": [e.get("name") for e in fmt.findall("rpm:provides/rpm:entry", ns)]
            + [f.text for f in fmt.findall("c:file", ns)],
        })
    return out


# ----------------------------------------------------------------------------------- the fixture repo


@pytest.fixture(scope="module")
def fx() -> FixtureRepo:
    return ensure_fixture_repo()


def fixture_rpm(fx: FixtureRepo, ver: str, repo: str, name: str) -> RpmPackage:
    """Package *name* as the fixture's repo *repo* of version *ver* holds it."""
    evra = fx.manifest()[ver][repo][name]
    assert evra, f"fixture {ver}/{repo} has no {name}"
    return RpmPackage(fx.repo_dir(ver, repo) / "Packages" / f"{name}-{evra}.rpm")


def rpm_file(pkg: RpmPackage, pattern: str) -> bytes:
    """The one regular file of *pkg* matching *pattern*."""
    links = {f.path for f in pkg.files() if f.linkto}
    matches = [p for p in pkg.glob(pattern) if p not in links]
    assert len(matches) == 1, (pkg.nevra, pattern, matches)
    return pkg.extract_file(matches[0])


def newest_repo(spec: str) -> str:
    """The repo of the fixture holding the newest kernel-alt / branding for *spec*."""
    return spec.split(":")[1] if ":" in spec else "base"


@pytest.fixture(scope="module")
def install_img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "install.img"
    path.write_bytes(INSTALL_IMG)
    return path


def build(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path, spec: str,
          name: str, **kwargs: object) -> Path:
    """Build one ISO in-process against the fixture repository."""
    dist = spec.split(":")[0]
    out = tmp_path_factory.mktemp(name) / f"{name}.iso"
    build_iso(IsoOptions(layers=resolve(spec), install_img=install_img, output=out, volid=f"XCP-ng {dist}",
                         repo_config=RepoConfig(srcurl=fx.srcurl(dist), gpgkey=fx.gpgkey_url),
                         **kwargs))  # type: ignore[arg-type]
    return out


def cli_env(tmpdir: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOURCE_DATE_EPOCH", "XCPIMG_DEBUG", "GNUPGHOME", "TZ")}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return {**env, **(extra or {})}


def cli(args: list[str | Path], env: dict[str, str], cwd: Path,
        wrap: Callable[[list[str]], list[str]] = list) -> subprocess.CompletedProcess[str]:
    return subprocess.run(wrap([sys.executable, "-m", "xcpimg.cli", "iso", *map(str, args)]), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


def cli_build(tmp: Path, args: list[str | Path]) -> Path:
    """Build through the CLI (the venv's bin first on PATH); -o names the output."""
    env = cli_env(extra={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    proc = cli(args, env, tmp)
    assert proc.returncode == 0, proc.stderr
    return Path(str(args[args.index("-o") + 1]))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp (gpg-agent's socket path must stay under ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xi", dir="/tmp"))
    try:
        yield path
    finally:
        for home in path.glob("gnupg*"):
            subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------- full ISOs


@dataclass
class Built:
    spec: str
    iso: Iso
    tmp: Path

    @property
    def ver(self) -> str:
        return self.spec.split(":")[0]


@pytest.fixture(scope="module", params=FULL_CONFIGS)
def full(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo,
         install_img: Path) -> Iterator[Built]:
    spec = request.param
    path = build(tmp_path_factory, fx, install_img, spec, spec.replace(":", "_") + "-full")
    yield Built(spec, Iso(path), path.parent)
    path.unlink()


def test_full_file_list(full: Built) -> None:
    iso = full.iso
    required = {"/install.img", "/boot/vmlinuz", "/boot/alt/vmlinuz", "/boot/xen.gz", "/boot/memtest.bin",
                "/EULA", "/LICENSES", "/boot/efiboot.img", "/EFI/xenserver/grub.cfg",
                "/EFI/xenserver/grubx64.efi", "/.treeinfo", "/repodata/repomd.xml",
                *(f"/boot/isolinux/{f}" for f in SYSLINUX_LOADERS),
                *(f"/boot/pxelinux/{f}" for f in PXELINUX_LOADERS)}
    templates = {"/" + rel for rel in resolve(full.spec).merged_tree("iso")}
    assert templates >= {"/.treeinfo", "/boot/isolinux/isolinux.cfg", "/EFI/xenserver/grub.cfg"}
    assert required | templates <= iso.files, sorted(required | templates - iso.files)
    memtest = {"memtest.bin", "memtest.efi"} if full.ver == "8.3" else {"memtest.bin"}
    # only the renamed boot files: no vmlinuz-4.19..., no xen-*.gz/.map/.config, no elf-memtest
    assert iso.under("/boot") == {"vmlinuz", "xen.gz", "efiboot.img", *memtest}
    assert iso.under("/boot/alt") == {"vmlinuz"}
    assert iso.under("/boot/pxelinux") == set(PXELINUX_LOADERS)
    isolinux_templates = {t.rsplit("/", 1)[1] for t in templates if t.startswith("/boot/isolinux/")}
    assert iso.under("/boot/isolinux") == set(SYSLINUX_LOADERS) | isolinux_templates
    assert not any(f.startswith("/boot/grub/") for f in iso.files)  # rpm EFI mode: no module dir
    keys = {f for f in iso.under("/") if f.startswith("RPM-GPG-KEY")}
    if full.ver == "8.2":
        assert keys == {"RPM-GPG-KEY-CH-8", "RPM-GPG-KEY-CH-8-LCM", "RPM-GPG-KEY-Platform-V1"}
    else:
        assert keys == set()
    assert len(iso.under("/Packages")) > 20
    assert iso.under("/repodata") >= {"repomd.xml"} and "repomd.xml.asc" not in iso.under("/repodata")


def test_full_readers_agree(full: Built) -> None:
    """isoinfo's Rock Ridge and Joliet listings hold every file xorriso lists; volume id as given."""
    rr = set(output(["isoinfo", "-f", "-R", "-i", full.iso.path]).split())
    assert full.iso.files <= rr, sorted(full.iso.files - rr)
    joliet = set(output(["isoinfo", "-f", "-J", "-i", full.iso.path]).split())
    assert {f for f in full.iso.files if not f.startswith("/.")} <= joliet
    assert f"Volume id: XCP-ng {full.ver}\n" in output(["isoinfo", "-d", "-i", full.iso.path])


def test_full_boot_file_bytes(full: Built, fx: FixtureRepo) -> None:
    iso, ver, newest = full.iso, full.ver, newest_repo(full.spec)
    assert iso.read("/install.img") == INSTALL_IMG
    assert iso.read("/boot/vmlinuz") == rpm_file(fixture_rpm(fx, ver, "base", "kernel"), "/boot/vmlinuz-*")
    # kernel-alt from the newest repo of the spec (8.3:base and 8.3:testing differ)
    alt = fixture_rpm(fx, ver, newest, "kernel-alt")
    assert iso.read("/boot/alt/vmlinuz") == rpm_file(alt, "/boot/vmlinuz-*")
    xen = fixture_rpm(fx, ver, "base", "xen-hypervisor")
    assert iso.read("/boot/xen.gz") == rpm_file(xen, "/boot/xen-*-d.gz")
    assert iso.read("/boot/xen.gz") != rpm_file(xen, "/boot/xen-*[0-9].gz"), "the release build was taken"
    memtest = fixture_rpm(fx, ver, "base", "memtest86+")
    if ver == "8.3":
        assert iso.read("/boot/memtest.bin") == rpm_file(memtest, "/boot/memtest.bin")
        assert iso.read("/boot/memtest.efi") == rpm_file(memtest, "/boot/memtest.efi")
    else:  # 5.x packaging: memtest86+-5.01 becomes memtest.bin, its elf- twin is dropped
        assert iso.read("/boot/memtest.bin") == rpm_file(memtest, "/boot/memtest86+-*")
    branding = fixture_rpm(fx, ver, newest, "branding-xcp-ng")
    for doc in ("EULA", "LICENSES"):
        assert iso.read(f"/{doc}") == rpm_file(branding, f"/usr/src/branding/{doc}")
    syslinux = fixture_rpm(fx, ver, "base", "syslinux")
    for name in SYSLINUX_LOADERS:
        got, want = iso.read(f"/boot/isolinux/{name}"), rpm_file(syslinux, f"/usr/share/syslinux/{name}")
        if name == "isolinux.bin":  # bytes 8-63 hold the El Torito boot info table
            assert got[8:12] == (16).to_bytes(4, "little") and got[64:] == want[64:]
            got, want = got[:8], want[:8]
        assert got == want, name
    for name in PXELINUX_LOADERS:
        assert iso.read(f"/boot/pxelinux/{name}") == rpm_file(syslinux, f"/usr/share/syslinux/{name}")
    grub = rpm_file(fixture_rpm(fx, ver, "base", "grub-efi"), "/boot/efi/EFI/xenserver/grubx64.efi")
    assert iso.read("/EFI/xenserver/grubx64.efi") == grub


def test_full_treeinfo(full: Built, fx: FixtureRepo) -> None:
    """Rendered from the newest branding package; key lines commented out (unsigned)."""
    branding_rpm = fixture_rpm(fx, full.ver, newest_repo(full.spec), "branding-xcp-ng")
    values: dict[str, str] = {}
    for line in rpm_file(branding_rpm, "/usr/src/branding/branding").decode().splitlines():
        key, eq, value = line.partition("=")
        if eq:
            values[key.strip()] = " ".join(shlex.split(value))
    values["timestamp"] = f"{build_epoch()}.00"  # date +%s.00, as upstream
    template = resolve(full.spec).find("iso/.treeinfo").read_text()
    expected = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], template)
    expected = re.sub(r"(?m)^key", "#key", expected)
    text = full.iso.text("/.treeinfo")
    assert text == expected
    assert "{{" not in text and "@@" not in text
    assert not re.search(r"(?m)^\s*key\d*\s*=", text)
    assert re.search(r"(?m)^#key1 = RPM-GPG-KEY-", text)
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["general"]["version"] == values["PRODUCT_VERSION"]
    assert parsed["general"]["family"] == values["PRODUCT_BRAND"] == "XCP-ng"
    assert parsed["general"]["timestamp"] == f"{build_epoch()}.00"
    assert values["PRODUCT_VERSION"].startswith(full.ver)


def test_full_packages_and_repodata(full: Built, fx: FixtureRepo) -> None:
    iso, ver = full.iso, full.ver
    rpms = iso.rpms()
    packages = primary_packages(iso)
    assert {p["href"] for p in packages} == {f"Packages/{n}" for n in iso.under("/Packages")}
    by_name = {str(p["name"]): p for p in packages}
    assert len(by_name) == len(packages)  # one version of each
    for name in ("xcp-ng-deps", "kernel-alt", "kernel", "xen-hypervisor", "branding-xcp-ng"):
        assert name in rpms, name
    manifest = fx.manifest()[ver]
    newest = newest_repo(full.spec)
    for name in ("kernel-alt", "branding-xcp-ng"):
        want = manifest[newest][name]
        assert rpms[name] == f"{name}-{want}.rpm"
        if newest != "base":
            assert want != manifest["base"][name]  # the fixture really differs per repo
    # dependencies are there: every requirement of every package is provided inside Packages/
    provided = {str(p["name"]) for p in packages} | {str(x) for p in packages for x in p["provides"]}  # type: ignore[attr-defined]
    deps = by_name["xcp-ng-deps"]["requires"]
    assert len(deps) > 20  # type: ignore[arg-type]
    unmet = {(p["name"], r) for p in packages for r in p["requires"]  # type: ignore[attr-defined]
             if not r.startswith("rpmlib(") and r not in provided}
    assert not unmet
    # and nothing else than the closure of xcp-ng-deps kernel-alt: no extra packages like wget
    assert "wget" not in rpms and "vim-minimal" not in rpms
    # each RPM on the ISO is byte-identical to the fixture's
    deps_rpm = iso.read(f"/Packages/{rpms['xcp-ng-deps']}")
    assert deps_rpm == (fx.repo_dir(ver, "base") / "Packages" / rpms["xcp-ng-deps"]).read_bytes()


def test_full_boot_args(full: Built) -> None:
    """Every dom0 kernel line of both menus carries no-repo-gpgcheck right after /vmlinuz."""
    layers = resolve(full.spec)
    for rel in ("boot/isolinux/isolinux.cfg", "EFI/xenserver/grub.cfg"):
        template = layers.merged_tree("iso")[rel].read_text()
        cfg = full.iso.text(f"/{rel}")
        entries = vmlinuz_entries(cfg)
        assert len(entries) == len(vmlinuz_entries(template)) >= 5
        assert all(words[:1] == ["no-repo-gpgcheck"] for words in entries), entries
        assert "netinstall" not in cfg
        # nothing else changed
        assert cfg.replace(" no-repo-gpgcheck", "") == template


def test_full_efiboot(full: Built) -> None:
    img = full.iso.efiboot(full.tmp)
    assert img.stat().st_size == EFIBOOT_SIZE
    assert efiboot_files(img) == {"/EFI/BOOT/BOOTX64.EFI", "/EFI/xenserver/grub.cfg"}
    cfg = full.iso.efiboot_grub_cfg(full.tmp)
    lines = cfg.splitlines()
    at = lines.index("set timeout=5")
    assert lines[at + 1] == SEARCH_LINE
    iso_cfg = full.iso.text("/EFI/xenserver/grub.cfg")
    assert cfg.replace(SEARCH_LINE + "\n", "", 1) == iso_cfg  # boot args included
    loader = full.tmp / "BOOTX64.EFI"
    mtools(["mcopy", "-o", "-i", img, "::/EFI/BOOT/BOOTX64.EFI", loader])
    assert loader.read_bytes() == full.iso.read("/EFI/xenserver/grubx64.efi")


def check_el_torito_and_system_area(path: Path) -> None:
    """El Torito and hybrid tables as xorriso and sgdisk read them."""
    report = output(["xorriso", "-indev", path, "-report_el_torito", "plain"])
    images = [line.split(":", 1)[1].split() for line in report.splitlines()
              if line.startswith("El Torito boot img :")]
    assert [i[:7] for i in images] == [["1", "BIOS", "y", "none", "0x0000", "0x00", "4"],
                                       ["2", "UEFI", "y", "none", "0x0000", "0x00", "5760"]], report
    assert "El Torito cat path : /boot/isolinux/boot.cat" in report
    assert re.search(r"El Torito img path :\s+1\s+/boot/isolinux/isolinux.bin\n", report)
    assert re.search(r"El Torito img opts :\s+1\s+boot-info-table", report)
    assert re.search(r"El Torito img path :\s+2\s+/boot/efiboot.img\n", report)
    efi_lba = int(images[1][7])
    size = path.stat().st_size
    area = output(["xorriso", "-indev", path, "-report_system_area", "plain"])
    assert "System area summary: MBR isohybrid cyl-align-on GPT" in area
    mbr = [line.split(":", 1)[1].split() for line in area.splitlines() if line.startswith("MBR partition      :")]
    assert mbr[0][:4] == ["1", "0x80", "0x00", "0"]
    assert mbr[1] == ["2", "0x00", "0xef", str(efi_lba * 4), "5760"]  # 2048-byte LBA -> 512-byte sectors
    assert re.search(r"MBR partition path :\s+2\s+/boot/efiboot.img\n", area)
    assert re.search(r"GPT partition path :\s+2\s+/boot/efiboot.img\n", area)
    assert f"GPT lba range      :      34  {size // 512 - 34}  {size // 512 - 1}" in area
    assert not re.search(r"crc|damaged|backup", area, re.I)
    text = run(["sgdisk", "-v", path], check=False).stdout.decode()
    assert not re.search(r"CRC|backup|Mismatched|differ", text), text


def test_full_el_torito_and_partitions(full: Built) -> None:
    check_el_torito_and_system_area(full.iso.path)


# ----------------------------------------------------------------------------------- netinstall


@pytest.fixture(scope="module")
def netinstall(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path) -> Iterator[Built]:
    path = build(tmp_path_factory, fx, install_img, "8.3:testing", "netinstall", netinstall=True)
    yield Built("8.3:testing", Iso(path), path.parent)
    path.unlink()


def test_netinstall_has_no_repository(netinstall: Built) -> None:
    files = netinstall.iso.files
    assert not any(f.startswith(("/Packages/", "/repodata/")) for f in files)
    assert "/.treeinfo" not in files
    assert {"/install.img", "/boot/vmlinuz", "/boot/alt/vmlinuz", "/boot/xen.gz", "/boot/efiboot.img",
            "/EULA", "/LICENSES", "/boot/isolinux/isolinux.bin", "/boot/isolinux/ldlinux.c32",
            "/EFI/xenserver/grubx64.efi"} <= files


def test_netinstall_boot_args(netinstall: Built) -> None:
    cfgs = netinstall.iso.boot_menus(netinstall.tmp)
    for cfg in cfgs:
        entries = vmlinuz_entries(cfg)
        assert len(entries) >= 5 and all(words[:1] == ["netinstall"] for words in entries), entries
        assert "no-repo-gpgcheck" not in cfg


# ----------------------------------------------------------------------------------- signed


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path) -> Iterator[Built]:
    tmp = tmp_path_factory.mktemp("signer")
    script = tmp / "sign.sh"
    script.write_text(f"#!/bin/sh\nunset GNUPGHOME\nexec {shlex.quote(sys.executable)} -m xcpimg.cli "
                      f"sample-sign --nick {SIGN_NICK} \"$1\"\n")
    script.chmod(0o755)
    path = build(tmp_path_factory, fx, install_img, "8.3:testing", "signed", sign_script=script)
    yield Built("8.3:testing", Iso(path), path.parent)
    path.unlink()


def test_signed_signature_verifies_with_exported_key(signed: Built, short_tmp: Path) -> None:
    iso = signed.iso
    key = f"/RPM-GPG-KEY-{SIGN_NICK}"
    assert {key, "/repodata/repomd.xml", "/repodata/repomd.xml.asc"} <= iso.files
    for rel in (key, "/repodata/repomd.xml", "/repodata/repomd.xml.asc"):
        (short_tmp / rel.rsplit("/", 1)[1]).write_bytes(iso.read(rel))
    home = short_tmp / "gnupg"
    home.mkdir(mode=0o700)
    gpg: list[str | Path] = ["gpg", "--homedir", home, "--batch", "--no-tty"]
    run([*gpg, "--import", short_tmp / key[1:]])
    status = run([*gpg, "--status-fd", "1", "--verify", short_tmp / "repomd.xml.asc", short_tmp / "repomd.xml"],
                 check=False)
    out = status.stdout.decode()
    assert status.returncode == 0 and "[GNUPG:] GOODSIG" in out and "[GNUPG:] VALIDSIG" in out, out
    # a tampered repomd.xml does not verify
    (short_tmp / "repomd.xml").write_bytes(iso.read("/repodata/repomd.xml") + b"\n")
    bad = run([*gpg, "--verify", short_tmp / "repomd.xml.asc", short_tmp / "repomd.xml"], check=False)
    assert bad.returncode != 0


def test_signed_treeinfo_and_boot_args(signed: Built) -> None:
    treeinfo = signed.iso.text("/.treeinfo")
    assert re.search(rf"(?m)^key1 = RPM-GPG-KEY-{SIGN_NICK}$", treeinfo)
    assert not re.search(r"(?m)^\s*[#;]\s*key1", treeinfo)
    cfgs = signed.iso.boot_menus(signed.tmp)
    for cfg in cfgs:
        assert len(vmlinuz_entries(cfg)) >= 5
        assert "no-repo-gpgcheck" not in cfg and "netinstall" not in cfg


# ----------------------------------------------------------------------------------- mkimage + overlay


@pytest.fixture(scope="module")
def mkimage(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path) -> Iterator[Built]:
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "installer-bootargs.lst").write_text(f"{OVERLAY_WORDS[0]}\n{OVERLAY_WORDS[1]}\n")
    spec = f"8.3:testing:{overlay}"
    path = build(tmp_path_factory, fx, install_img, spec, "mkimage", efi_installer="mkimage")
    yield Built(spec, Iso(path), path.parent)
    path.unlink()


def test_mkimage_grub_modules_and_image(mkimage: Built, fx: FixtureRepo) -> None:
    iso = mkimage.iso
    grub = fixture_rpm(fx, "8.3", "base", "grub-efi")
    moddir = "/usr/lib/grub/x86_64-efi"
    rpm_modules = {p.rsplit("/", 1)[1] for p in grub.glob(f"{moddir}/*")}
    assert {"normal.mod", "iso9660.mod", "multiboot2.mod", "moddep.lst"} <= rpm_modules
    assert iso.under("/boot/grub/x86_64-efi") == rpm_modules
    assert iso.read("/boot/grub/x86_64-efi/normal.mod") == grub.extract_file(f"{moddir}/normal.mod")
    img = iso.efiboot(mkimage.tmp)
    assert efiboot_files(img) == {"/EFI/BOOT/BOOTX64.EFI", "/EFI/xenserver/grub.cfg"}
    loader = mkimage.tmp / "BOOTX64.EFI"
    mtools(["mcopy", "-o", "-i", img, "::/EFI/BOOT/BOOTX64.EFI", loader])
    made = loader.read_bytes()
    assert made[:2] == b"MZ"
    assert made == iso.read("/EFI/xenserver/grubx64.efi")
    assert made != rpm_file(grub, "/boot/efi/EFI/xenserver/grubx64.efi")
    check_el_torito_and_system_area(iso.path)


def test_overlay_layer_bootargs_in_every_entry(mkimage: Built) -> None:
    cfgs = mkimage.iso.boot_menus(mkimage.tmp)
    for cfg in cfgs:
        entries = vmlinuz_entries(cfg)
        assert len(entries) >= 5
        for words in entries:
            assert {*OVERLAY_WORDS, "no-repo-gpgcheck"} <= set(words), words
    # only after /vmlinuz: the Xen command lines do not get them
    xen_lines = [line for line in cfgs[1].splitlines() if "multiboot2 /boot/xen.gz" in line]
    assert xen_lines and not any(OVERLAY_WORDS[0] in line for line in xen_lines)


def test_layer_grub_efiboot_patch_changes_efiboot_grub_cfg(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                          fx: FixtureRepo, install_img: Path) -> None:
    """A downstream layer written for the bash tools: its grub-efiboot-cfg.patch (applied with
    patch to a copy of EFI/xenserver/grub.cfg) makes efiboot.img's grub.cfg; the ISO's is unchanged."""
    layer = tmp_path / "layer"
    layer.mkdir()
    grub_cfg = resolve("8.3:testing").find("iso/EFI/xenserver/grub.cfg").read_text()
    assert "set timeout=5\n" in grub_cfg
    changed = grub_cfg.replace("set timeout=5\n", "set timeout=5\nsearch --file --set /install.img\n"
                                                   "echo xcpimg-downstream-patch\n")
    assert changed != grub_cfg
    (tmp_path / "a").write_text(grub_cfg)
    (tmp_path / "b").write_text(changed)
    diff = subprocess.run(["diff", "-u", "--label", "a/EFI/xenserver/grub.cfg", "--label", "b/EFI/xenserver/grub.cfg",
                           tmp_path / "a", tmp_path / "b"], capture_output=True, text=True).stdout
    assert diff.startswith("--- a/EFI/xenserver/grub.cfg")
    (layer / "grub-efiboot-cfg.patch").write_text(diff)
    path = build(tmp_path_factory, fx, install_img, f"8.3:testing:{layer}", "efiboot-patch")
    iso = Iso(path)
    iso_cfg = iso.text("/EFI/xenserver/grub.cfg")  # the template with the boot arguments inserted
    assert "xcpimg-downstream-patch" not in iso_cfg
    assert iso.efiboot_grub_cfg(tmp_path) == iso_cfg.replace(
        "set timeout=5\n", "set timeout=5\nsearch --file --set /install.img\necho xcpimg-downstream-patch\n")


# ----------------------------------------------------------------------------------- repos (CLI)


@pytest.fixture(scope="module")
def extras(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path) -> Iterator[Built]:
    """-D custom repo + --extra-packages (a fixture package and the custom one), over an existing output,
    signed by the sample signer named as a command on PATH."""
    tmp = tmp_path_factory.mktemp("extras")
    rpm = build_rpm(tmp / "rpmbuild", "xcpimg-extra-tool", "2.5", "7",
                    files={"/usr/share/xcpimg-extra/hello": b"hello\n"}, requires=("vim-minimal",))
    fixture_sign([rpm])  # a -D repository is checked with the same keys as the layers'
    make_repo(tmp / "custom" / "x86_64", [rpm])
    out = tmp / "extras.iso"
    out.write_bytes(b"an older ISO\n")
    cli_build(tmp, ["-o", out, "-V", "XCP-ng 8.3", "--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url,
                    "-D", f"xtra!{tmp / 'custom'}", "--extra-packages", "wget xcpimg-extra-tool",
                    "--sign-script", "xcpimg-sample-sign", "--force-overwrite", "8.3:testing", install_img])
    yield Built("8.3:testing", Iso(out), tmp)
    out.unlink()


def test_extra_packages_and_custom_repo(extras: Built, fx: FixtureRepo) -> None:
    rpms = extras.iso.rpms()
    manifest = fx.manifest()["8.3"]
    assert rpms["wget"] == f"wget-{manifest['candidates']['wget']}.rpm"  # newest, from candidates
    assert rpms["xcpimg-extra-tool"] == "xcpimg-extra-tool-2.5-7.x86_64.rpm"  # from the -D repo
    assert rpms["vim-minimal"] == f"vim-minimal-{manifest['testing']['vim-minimal']}.rpm"  # its dependency
    assert {"xcp-ng-deps", "kernel-alt"} <= set(rpms)
    names = {p["name"] for p in primary_packages(extras.iso)}
    assert {"wget", "xcpimg-extra-tool", "vim-minimal"} <= names
    assert extras.iso.path.stat().st_size > 10 << 20  # --force-overwrite replaced the old file
    assert {"/repodata/repomd.xml.asc", "/RPM-GPG-KEY-xcpimg-test"} <= extras.iso.files
    assert re.search(r"(?m)^key1 = RPM-GPG-KEY-xcpimg-test$", extras.iso.text("/.treeinfo"))


@pytest.fixture(scope="module")
def layer_srcurl(tmp_path_factory: pytest.TempPathFactory, fx: FixtureRepo, install_img: Path) -> Iterator[Built]:
    """--srcurl lacks testing; --srcurl:testing and --srcurl:linstor point elsewhere."""
    tmp = tmp_path_factory.mktemp("layersrc")
    mirror = tmp / "mirror"
    mirror.mkdir()
    for repo in ("base", "updates", "candidates"):
        (mirror / repo).symlink_to(fx.repo_dir("8.3", repo).parent)
    out = tmp / "layer.iso"
    cli_build(tmp, ["-o", out, "-V", "XCP-ng 8.3", "--srcurl", mirror, "--gpgkey", fx.gpgkey_url,
                    "--srcurl:testing", fx.srcurl("8.3"), "--srcurl:linstor", fx.linstor_srcurl("8.3"),
                    "--extra-packages", "xcp-ng-linstor", "8.3:linstor:testing", install_img])
    yield Built("8.3:linstor:testing", Iso(out), tmp)
    out.unlink()


def test_srcurl_per_layer(layer_srcurl: Built, fx: FixtureRepo) -> None:
    rpms = layer_srcurl.iso.rpms()
    manifest = fx.manifest()["8.3"]
    assert rpms["kernel-alt"] == f"kernel-alt-{manifest['testing']['kernel-alt']}.rpm"
    assert {"xcp-ng-linstor", "linstor-client", "drbd"} <= set(rpms)
    alt = fixture_rpm(fx, "8.3", "testing", "kernel-alt")
    assert layer_srcurl.iso.read("/boot/alt/vmlinuz") == rpm_file(alt, "/boot/vmlinuz-*")


# ----------------------------------------------------------------------------------- reproducibility


def test_reproducible_across_tz_and_default_epoch(tmp_path: Path, fx: FixtureRepo, install_img: Path) -> None:
    """Same inputs give the same bytes whatever TZ; no SOURCE_DATE_EPOCH means the fixed default."""
    runs = {"a": {"SOURCE_DATE_EPOCH": str(SDE), "TZ": "UTC"},
            "b": {"SOURCE_DATE_EPOCH": str(SDE), "TZ": "Asia/Kolkata"},
            "c": {"TZ": "Asia/Kolkata"},
            "d": {"TZ": "America/Los_Angeles"}}
    procs = {}
    for name, extra in runs.items():
        argv = ["-o", tmp_path / f"{name}.iso", "-V", "XCP-ng 8.3", "--srcurl", fx.srcurl("8.3"),
                "--gpgkey", fx.gpgkey_url, "8.3:testing", install_img]
        procs[name] = subprocess.Popen([sys.executable, "-m", "xcpimg.cli", "iso", *map(str, argv)],
                                       env=cli_env(extra=extra), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err)
    digest = {name: hashlib.sha256((tmp_path / f"{name}.iso").read_bytes()).hexdigest() for name in runs}
    assert digest["a"] == digest["b"]
    assert digest["c"] == digest["d"]
    assert digest["a"] != digest["c"]  # the epoch is used

    def created(name: str) -> str:
        info = output(["xorriso", "-indev", tmp_path / f"{name}.iso", "-pvd_info"])
        return re.search(r"Creation Time: (\d+)", info).group(1)  # type: ignore[union-attr]

    assert created("a") == time.strftime("%Y%m%d%H%M%S00", time.gmtime(SDE))
    assert created("c") == time.strftime("%Y%m%d%H%M%S00", time.gmtime(DEFAULT_EPOCH))


# ----------------------------------------------------------------------------------- bad input


@dataclass
class Case:
    """One bad command line: args (OUT and IMG placeholders), exit code, words of the error line."""

    args: list[str | Path]
    code: int
    words: tuple[str, ...]
    existing: bytes | None = None  # bytes of a pre-existing output file
    absent: tuple[Path, ...] = ()  # paths that must not exist afterwards
    wrap: Callable[[list[str]], list[str]] = list  # how the CLI's argv is run (hostkit)


@pytest.fixture(scope="module")
def sha1_keyring() -> Iterator[Path]:
    """A short-path GNUPGHOME with an RSA key for the SHA1 signer."""
    home = Path(tempfile.mkdtemp(prefix="xg", dir="/tmp"))
    os.chmod(home, 0o700)
    try:
        run(["gpg", "--homedir", home, "--batch", "--passphrase", "", "--quick-gen-key",
             "sha1 signer <sha1@xcpimg.invalid>", "rsa2048", "sign", "never"])
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def other_home() -> Iterator[Path]:
    """A GNUPGHOME holding a throwaway key that is not the fixture's."""
    with throwaway_gnupghome() as home:
        yield home


def fixture_copy(tmp: Path, fx: FixtureRepo, name: str, how: str, home: Path | None = None) -> Path:
    """A copy of the fixture's 8.3 base package *name*: "unsigned", signed by "other" key, or "tampered"."""
    src = fixture_rpm(fx, "8.3", "base", name).path
    copy = tmp / "bad-rpms" / how / src.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, copy)
    if how in ("unsigned", "other"):
        run(["rpmsign", "--delsign", copy])
        if how == "other":
            assert home is not None
            sign_rpms([copy], home, OTHER_UID)
    else:
        tamper(copy)  # a payload byte, after signing
    return copy


def crafted_grub(tmp: Path, fx: FixtureRepo, links: dict[str, str]) -> Path:
    """The fixture's grub-efi with *links* added to its module directory, signed with the fixture key."""
    grub = fixture_rpm(fx, "8.3", "base", "grub-efi")
    root = tmp / "grub-root"
    grub.extract(root)
    files = {"/" + p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()}
    rpm = build_rpm(tmp / "rpmbuild", "grub-efi", grub.version, f"{grub.release}.crafted", files=files,
                    links={f"/usr/lib/grub/x86_64-efi/{k}": v for k, v in links.items()})
    fixture_sign([rpm])
    return rpm


def script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def repo_with(tmp: Path, fx: FixtureRepo, replace: dict[str, Path]) -> Path:
    """A srcurl whose base repo holds the 8.3 boot packages, some replaced by *replace* (name -> rpm)."""
    names = ("kernel", "kernel-alt", "xen-hypervisor", "memtest86+", "branding-xcp-ng", "syslinux", "grub-efi")
    rpms = [replace.get(n) or fixture_rpm(fx, "8.3", "base", n).path for n in names]
    make_repo(tmp / "srcurl" / "base" / "x86_64", rpms)
    return tmp / "srcurl"


def bad_cases() -> dict[str, Callable[[Path, FixtureRepo, pytest.FixtureRequest], Case]]:
    def std(fx: FixtureRepo) -> list[str | Path]:
        return ["--srcurl", fx.srcurl("8.3"), "--gpgkey", fx.gpgkey_url]

    def missing_img(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", *std(fx), "8.3:testing", t / "nope.img"], 2,
                    ("install.img", "nope.img"))

    def img_is_dir(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        (t / "imgdir").mkdir()
        return Case(["-o", "OUT", "-V", "X", *std(fx), "8.3:testing", t / "imgdir"], 2, ("install.img", "imgdir"))

    def img_unreadable(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        img = t / "locked.img"
        img.write_bytes(b"x")
        img.chmod(0)
        # root reads mode-000 files: run the CLI without the capabilities that allow it
        return Case(["-o", "OUT", "-V", "X", *std(fx), "8.3:testing", img], 2, ("install.img", "locked.img"),
                    wrap=without_dac_override)

    def existing(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", *std(fx), "8.3:testing", "IMG"], 2,
                    ("already exists", "--force-overwrite"), existing=b"keep me\n")

    def out_is_dir(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        (t / "out" / "isodir").mkdir(parents=True)
        return Case(["-o", t / "out" / "isodir", "-V", "X", *std(fx), "8.3:testing", "IMG"], 2,
                    ("isodir", "is a directory"))

    def no_volid(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", *std(fx), "8.3:testing", "IMG"], 2, ("required", "-V"))

    def no_output(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-V", "X", *std(fx), "8.3:testing", "IMG"], 2, ("required", "-o"))

    def define_no_bang(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "-D", "custom", *std(fx), "8.3:testing", "IMG"], 2,
                    ("-D", "NICK!URL", "custom"))

    def srcurl_no_layer(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl:", fx.srcurl("8.3"), *std(fx), "8.3:testing", "IMG"], 2,
                    ("--srcurl:", "no layer"))

    def srcurl_unknown_layer(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl:nosuchlayer", fx.srcurl("8.3"), *std(fx), "8.3:testing",
                     "IMG"], 2, ("nosuchlayer",))

    def sign_netinstall(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        s = script(t, "s.sh", "exit 0\n")
        return Case(["-o", "OUT", "-V", "X", "--netinstall", "--sign-script", s, *std(fx), "8.3:testing", "IMG"],
                    2, ("--sign-script", "--netinstall"))

    def sign_not_found(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--sign-script", "xcpimg-no-such-signer", *std(fx), "8.3:testing",
                     "IMG"], 2, ("xcpimg-no-such-signer",))

    def absent_package(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--extra-packages", "nosuchpkg", *std(fx), "8.3:testing", "IMG"], 1,
                    ("nosuchpkg",))

    def xen_without_debug(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        stub = build_rpm(t / "rpmbuild", "xen-hypervisor", "4.17.5", "99",
                         files={"/boot/xen-4.17.5-99.gz": b"not a debug build\n"})
        srcurl = repo_with(t, fx, {"xen-hypervisor": stub})
        return Case(["-o", "OUT", "-V", "X", "--srcurl", srcurl, "--nogpgcheck", "8.3:base", "IMG"], 1,
                    ("xen-hypervisor", "-d.gz"))

    def empty_repo(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        make_repo(t / "empty" / "base" / "x86_64", [])
        return Case(["-o", "OUT", "-V", "X", "--srcurl", t / "empty", "--gpgkey", fx.gpgkey_url, "8.3:base", "IMG"],
                    1, ("kernel",))

    def unreachable_file(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl", "file:///nonexistent", "--gpgkey", fx.gpgkey_url,
                     "8.3:base", "IMG"], 1, ("xcpng-base", "repomd.xml"))

    def unreachable_http(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl", "http://127.0.0.1:9/", "--gpgkey", fx.gpgkey_url,
                     "8.3:base", "IMG"], 1, ("xcpng-base", "repomd.xml"))

    def sign_fails(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        script(t, "fail.sh", "echo 'signer exploded' >&2\nexit 3\n")  # given relative to the cwd
        return Case(["-o", "OUT", "-V", "X", "--sign-script", "./fail.sh", *std(fx), "8.3:testing", "IMG"], 1,
                    ("sign script", str(t / "fail.sh"), "exit 3", "signer exploded"))

    def sign_nothing(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        s = script(t, "nothing.sh", 'test -f "$1/repodata/repomd.xml" || exit 9\nexit 0\n')
        return Case(["-o", "OUT", "-V", "X", "--sign-script", s, *std(fx), "8.3:testing", "IMG"], 1,
                    ("no signature", "repomd.xml.asc"))

    def sign_sha1(t: Path, fx: FixtureRepo, request: pytest.FixtureRequest) -> Case:
        home = request.getfixturevalue("sha1_keyring")
        s = script(t, "sha1.sh", f"set -e\nexport GNUPGHOME={home}\n"
                   'gpg --batch --yes --digest-algo SHA1 --detach-sign --armor '
                   '-o "$1/repodata/repomd.xml.asc" "$1/repodata/repomd.xml"\n'
                   'gpg --batch --export --armor > "$1/RPM-GPG-KEY-sha1"\n')
        return Case(["-o", "OUT", "-V", "X", "--sign-script", s, *std(fx), "8.3:testing", "IMG"], 1,
                    ("SHA1", "repomd.xml.asc"))

    def efiboot_patch_fails(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        layer = t / "layer"
        layer.mkdir()
        (layer / "grub-efiboot-cfg.patch").write_text(
            "--- a/EFI/xenserver/grub.cfg\n+++ b/EFI/xenserver/grub.cfg\n@@ -10,6 +10,7 @@\n"
            " set timeout=50\n insmod nothing\n set default=9\n+echo never\n"
            " menuentry \"elsewhere\" {\n  chainloader /nope\n }\n")
        return Case(["-o", "OUT", "-V", "X", *std(fx), f"8.3:testing:{layer}", "IMG"], 1,
                    ("grub-efiboot-cfg.patch", str(layer), "does not apply"))
    def boot_rpm_case(t: Path, fx: FixtureRepo, replace: dict[str, Path], *words: str,
                      extra: tuple[str, ...] = ()) -> Case:
        srcurl = repo_with(t, fx, replace)
        return Case(["-o", "OUT", "-V", "X", "--srcurl", srcurl, "--gpgkey", fx.gpgkey_url, "--netinstall",
                     *extra, "8.3:base", "IMG"], 1, words)

    def sig_unsigned(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        bad = fixture_copy(t, fx, "grub-efi", "unsigned")
        return boot_rpm_case(t, fx, {"grub-efi": bad}, f"package {bad.name} is not signed", "--nogpgcheck")

    def sig_other_key(t: Path, fx: FixtureRepo, request: pytest.FixtureRequest) -> Case:
        bad = fixture_copy(t, fx, "syslinux", "other", request.getfixturevalue("other_home"))
        return boot_rpm_case(t, fx, {"syslinux": bad}, f"package {bad.name} is signed by key ID",
                             "not among the repository keys", fx.gpgkey_url)

    def sig_tampered(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        bad = fixture_copy(t, fx, "kernel", "tampered")
        return boot_rpm_case(t, fx, {"kernel": bad}, f"package {bad.name} does not match its signature")

    def sig_packages_dir(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        """An unsigned package for Packages/ from a -D repository (not a boot package)."""
        rpm = build_rpm(t / "rpmbuild", "xcpimg-evil", files={"/usr/share/xcpimg-evil": b"evil\n"})
        make_repo(t / "evil" / "x86_64", [rpm])
        return Case(["-o", "OUT", "-V", "X", *std(fx), "-D", f"evil!{t / 'evil'}", "--extra-packages",
                     "xcpimg-evil", "8.3:testing", "IMG"], 1, ("package xcpimg-evil-1.0-1.x86_64.rpm is not signed",))

    def gpgkey_missing(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl", fx.srcurl("8.3"), "--gpgkey", t / "no-such-key",
                     "8.3:testing", "IMG"], 2, ("cannot read gpgkey", "no-such-key"))

    def gpgkey_unreachable(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        return Case(["-o", "OUT", "-V", "X", "--srcurl", fx.srcurl("8.3"), "--gpgkey",
                     "http://127.0.0.1:9/RPM-GPG-KEY", "8.3:testing", "IMG"], 2,
                    ("cannot read gpgkey http://127.0.0.1:9/RPM-GPG-KEY",))

    def names_option(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        absent = () if Path("/x").exists() else (Path("/x"),)
        return Case(["-o", "OUT", "-V", "X", *std(fx), "--extra-packages", "--destdir=/x bash", "8.3:testing",
                     "IMG"], 2, ("invalid --extra-packages name '--destdir=/x'",), absent=absent)

    def link_leak(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        grub = crafted_grub(t, fx, {"zz-leak": "/etc/shadow"})
        return boot_rpm_case(t, fx, {"grub-efi": grub}, "symlink zz-leak -> /etc/shadow is absolute",
                             "grub-efi-", extra=("--efi-installer", "mkimage"))

    def link_etc(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        grub = crafted_grub(t, fx, {"zz-etc": "/etc"})
        return boot_rpm_case(t, fx, {"grub-efi": grub}, "symlink zz-etc -> /etc is absolute",
                             extra=("--efi-installer", "mkimage"))

    def link_up(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        grub = crafted_grub(t, fx, {"zz-up": "../../../../../../../../etc"})
        return boot_rpm_case(t, fx, {"grub-efi": grub}, "symlink zz-up -> ../../../../../../../../etc points "
                             "outside its tree", extra=("--efi-installer", "mkimage"))

    def layer_link(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        (t / "evil-layer" / "iso").mkdir(parents=True)
        (t / "evil-layer" / "iso" / "shadow").symlink_to("/etc/shadow")
        return Case(["-o", "OUT", "-V", "X", *std(fx), f"8.3:testing:{t / 'evil-layer'}", "IMG"], 1,
                    (f"{t / 'evil-layer' / 'iso'}: symlink shadow -> /etc/shadow is absolute",))

    def layer_link_up(t: Path, fx: FixtureRepo, _r: pytest.FixtureRequest) -> Case:
        (t / "evil-layer" / "iso" / "EFI").mkdir(parents=True)
        (t / "evil-layer" / "iso" / "EFI" / "passwd").symlink_to("../../iso/../../../../../etc/passwd")
        return Case(["-o", "OUT", "-V", "X", *std(fx), f"8.3:testing:{t / 'evil-layer'}", "IMG"], 1,
                    ("symlink EFI/passwd -> ../../iso/../../../../../etc/passwd points outside its tree",))

    return {f.__name__.replace("_", "-"): f for f in (
        missing_img, img_is_dir, img_unreadable, existing, out_is_dir, no_volid, no_output, define_no_bang,
        srcurl_no_layer, srcurl_unknown_layer, sign_netinstall, sign_not_found, absent_package,
        xen_without_debug, empty_repo, unreachable_file, unreachable_http, sign_fails, sign_nothing, sign_sha1,
        efiboot_patch_fails,
        sig_unsigned, sig_other_key, sig_tampered, sig_packages_dir, gpgkey_missing, gpgkey_unreachable,
        names_option, link_leak, link_etc, link_up, layer_link, layer_link_up)}


BAD_CASES = bad_cases()


@pytest.mark.parametrize("case_name", list(BAD_CASES))
def test_bad_input(case_name: str, tmp_path: Path, short_tmp: Path, fx: FixtureRepo, install_img: Path,
                   request: pytest.FixtureRequest) -> None:
    case = BAD_CASES[case_name](tmp_path, fx, request)
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    out = outdir / "x.iso"
    if case.existing is not None:
        out.write_bytes(case.existing)
    before = {p.name: p.stat().st_mtime_ns for p in outdir.iterdir()}
    args = [out if a == "OUT" else install_img if a == "IMG" else a for a in case.args]
    tmpdir = short_tmp / "t"
    tmpdir.mkdir()
    proc = cli(args, cli_env(tmpdir), tmp_path, case.wrap)
    assert proc.returncode == case.code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("xcpimg iso: error:")]
    assert len(errors) == 1, proc.stderr
    for word in case.words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    # no output (a pre-existing one untouched), nothing left beside it, no temp dirs
    assert {p.name: p.stat().st_mtime_ns for p in outdir.iterdir()} == before
    if case.existing is not None:
        assert out.read_bytes() == case.existing
    else:
        assert not out.exists()
    assert list(tmpdir.iterdir()) == []
    leftover = [p for p in short_tmp.iterdir() if p.name != "t" and stat.S_ISDIR(p.stat().st_mode)]
    assert leftover == []
    for path in case.absent:
        assert not path.exists(), path


# ----------------------------------------------------------------------------------- accepted on purpose


def test_nogpgcheck_accepts_unsigned_with_a_warning(tmp_path: Path, fx: FixtureRepo, install_img: Path) -> None:
    bad = {"grub-efi": fixture_copy(tmp_path, fx, "grub-efi", "unsigned"),
           "kernel": fixture_copy(tmp_path, fx, "kernel", "unsigned")}
    out = tmp_path / "nogpg.iso"
    proc = cli(["-o", out, "-V", "X", "--srcurl", repo_with(tmp_path, fx, bad), "--nogpgcheck", "--netinstall",
                "8.3:base", install_img], cli_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: package signatures are not checked (--nogpgcheck)" in proc.stderr
    assert Iso(out).read("/boot/vmlinuz") == rpm_file(RpmPackage(bad["kernel"]), "/boot/vmlinuz-*")


def test_mkimage_links_inside_the_module_tree_stay_links(tmp_path: Path, fx: FixtureRepo,
                                                         install_img: Path) -> None:
    """zz-loop -> . used to crash the copy (ELOOP); links that stay inside are kept as links."""
    grub = crafted_grub(tmp_path, fx, {"zz-loop": ".", "zz-normal": "normal.mod"})
    out = tmp_path / "loop.iso"
    proc = cli(["-o", out, "-V", "X", "--srcurl", repo_with(tmp_path, fx, {"grub-efi": grub}), "--gpgkey",
                fx.gpgkey_url, "--netinstall", "--efi-installer", "mkimage", "8.3:base", install_img],
               cli_env(), tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = output(["xorriso", "-indev", out, "-lsl", "/boot/grub/x86_64-efi/zz-loop",
                      "/boot/grub/x86_64-efi/zz-normal"])
    assert re.search(r"(?m)^l.*'/boot/grub/x86_64-efi/zz-loop' -> '\.'$", listing), listing
    assert re.search(r"(?m)^l.*'/boot/grub/x86_64-efi/zz-normal' -> 'normal.mod'$", listing), listing
    iso = Iso(out)
    assert not any("zz-loop/" in f for f in iso.files)
    assert "/boot/grub/x86_64-efi/normal.mod" in iso.files
