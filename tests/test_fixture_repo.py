"""The embedded fixture repository: shape, boot payloads, signatures, dnf resolution, cache.

The full repository is built once per test run (session fixture; a few minutes cold,
then taken from ~/.cache/xcpimg). Cache, concurrency, reproducibility and failure
tests use a tiny fixture definition so they stay fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hostkit import need_root

from xcpimg import fixture_repo as fr
from xcpimg.errors import ConfigError

REPOS = ("base", "updates", "candidates", "testing", "ci", "incoming")
PY = sys.executable


@pytest.fixture(scope="session")
def repo() -> fr.FixtureRepo:
    return fr.ensure_fixture_repo()


def _rpm(repo: fr.FixtureRepo, ver: str, name: str, layer: str = "base") -> Path:
    """The RPM of package *name* in *layer* of *ver*, found through the manifest."""
    evra = repo.manifest()[ver][layer][name]
    path = repo.repo_dir(ver, layer) / "Packages" / f"{name}-{evra}.rpm"
    assert path.is_file(), path
    return path


def _files(rpm: Path) -> set[str]:
    out = subprocess.run(["rpm", "-qlp", "--nosignature", rpm], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _unpack(rpm: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cpio = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=cpio, cwd=dest, check=True)
    return dest


# ------------------------------------------------------------------------------ definitions (no build)


@pytest.mark.parametrize("ver", ["8.2", "8.3"])
def test_plan_covers_package_list_and_closure(ver: str) -> None:
    fx = fr.load_fixtures()
    listed = fr.package_lists(fx)[ver]
    assert len(listed) > 100
    by_repo = fr.plan(fx, ver, listed)
    base = {p.name: p for p in by_repo["base"]}
    assert set(listed) <= set(base)
    for pkg in base.values():  # every Requires is satisfiable in base
        assert set(pkg.requires) <= set(base), pkg.name
    closure, todo = set(), ["xcp-ng-deps"]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo += base[name].requires
    assert len(closure) >= 20
    for erased in ("binutils", "dracut", "pkgconfig", "xen-hypervisor"):
        assert erased in base
    assert base["xcp-ng-deps"].arch == "noarch" and not base["xcp-ng-deps"].files


def test_plan_rejects_two_owners_of_a_path(tmp_path: Path) -> None:
    fx = fr.load_fixtures()
    fx.packages = [*fx.packages, {"name": "intruder", "files": [{"path": "/sbin/init", "text": "x"}]}]
    with pytest.raises(ConfigError, match="/sbin/init is in both"):
        fr.plan(fx, "8.3", fr.package_lists(fx)["8.3"])


# ------------------------------------------------------------------------------ the built tree


def test_tree_shape(repo: fr.FixtureRepo) -> None:
    assert repo.versions == ("8.2", "8.3")
    assert (repo.root / "RPM-GPG-KEY-xcpimg-fixture").read_text().startswith("-----BEGIN PGP PUBLIC KEY")
    assert repo.gpgkey_url == f"file://{repo.root}/RPM-GPG-KEY-xcpimg-fixture"
    for ver in repo.versions:
        assert repo.srcurl(ver) == f"file://{repo.root}/8/{ver}"
        for layer in REPOS:
            top = repo.root / "8" / ver / layer
            assert (top / "x86_64/repodata/repomd.xml").is_file()
            assert list((top / "x86_64/Packages").glob("*.rpm"))
            assert list((top / "Source/SPackages").glob("*.src.rpm"))
            assert (top / "Source/repodata/repomd.xml").is_file()
        assert repo.linstor_srcurl(ver) == f"file://{repo.root}/linstor/8/{ver}"
        linstor = repo.root / "linstor/8" / ver / "linstor/x86_64"
        assert (linstor / "repodata/repomd.xml").is_file()
        assert {p.name.split("-1.0-")[0] for p in (linstor / "Packages").glob("*.rpm")} >= {"xcp-ng-linstor"}
        names = [p.name for p in (repo.root / "8" / ver / "base/x86_64/Packages").glob("*.rpm")]
        for decoy in ("-debuginfo-", "-devel-", "-debug-"):
            assert any(decoy in n for n in names), decoy
        assert any(n.startswith("ocaml") for n in names) and any(n.startswith("golang") for n in names)


def test_payload_compression(repo: fr.FixtureRepo) -> None:
    for ver, comp in (("8.3", "xz"), ("8.2", "gzip")):
        out = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{PAYLOADCOMPRESSOR}",
                              _rpm(repo, ver, "kernel")], capture_output=True, text=True, check=True)
        assert out.stdout == comp


@pytest.mark.parametrize("ver", ["8.2", "8.3"])
def test_boot_package_files(repo: fr.FixtureRepo, ver: str) -> None:
    kernel = _files(_rpm(repo, ver, "kernel"))
    assert {"/boot/vmlinuz-4.19.0+1", "/boot/vmlinuz-4.19-xen", "/boot/System.map-4.19.0+1",
            "/boot/config-4.19.0+1"} <= kernel
    assert any(f.startswith("/lib/modules/4.19.0+1/kernel/") and f.endswith(".ko") for f in kernel)
    alt_uname = {"8.3": "4.19.322+1", "8.2": "4.19.265+1"}[ver]
    alt = _files(_rpm(repo, ver, "kernel-alt"))
    assert {f"/boot/vmlinuz-{alt_uname}", f"/boot/vmlinuz-{alt_uname}-xen"} <= alt
    xen = _files(_rpm(repo, ver, "xen-hypervisor"))
    xv = {"8.3": "4.17.5-20.1", "8.2": "4.13.5-10.58"}[ver]
    assert {f"/boot/xen-{xv}{d}{ext}" for d in ("", "-d") for ext in (".gz", ".map", ".config")} == xen
    syslinux = _files(_rpm(repo, ver, "syslinux"))
    assert {f"/usr/share/syslinux/{n}" for n in ("isolinux.bin", "isohdpfx.bin", "mboot.c32", "menu.c32",
            "pxelinux.0", "memdisk", "ldlinux.c32", "libcom32.c32", "libutil.c32")} <= syslinux
    grub = _files(_rpm(repo, ver, "grub-efi"))
    assert {"/boot/efi/EFI/xenserver/grubx64.efi", "/boot/efi/EFI/xenserver/gcdx64.efi",
            "/boot/efi/EFI/BOOT/BOOTX64.EFI", "/etc/grub-efi.cfg", "/usr/lib/grub/x86_64-efi/normal.mod",
            "/usr/lib/grub/x86_64-efi/kernel.img"} <= grub
    memtest = _files(_rpm(repo, ver, "memtest86+"))
    assert memtest == ({"/boot/memtest.bin", "/boot/memtest.efi"} if ver == "8.3"
                       else {"/boot/memtest86+-5.01", "/boot/elf-memtest86+-5.01"})
    branding = _files(_rpm(repo, ver, "branding-xcp-ng"))
    assert {f"/usr/src/branding/{n}" for n in ("branding", "EULA", "LICENSES", "brand-directory.py",
                                               "branding-compile.py")} == branding
    assert _files(_rpm(repo, ver, "xcp-ng-deps")) <= {"(contains", "no", "files)"}


def test_boot_payload_bytes(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    """The boot files are the real things: bzImage, gzip Xen, PE GRUB with its prefix, static busybox,
    systemd as /sbin/init with every shared library its binaries need."""
    root = tmp_path / "root"
    for name in ("kernel", "xen-hypervisor", "grub-efi", "syslinux", "branding-xcp-ng", "busybox", "systemd",
                 "systemd-sysv", "glibc", "bash", "util-linux", "host-installer", "host-installer-startup"):
        _unpack(_rpm(repo, "8.3", name), root)
    vmlinuz = (root / "boot/vmlinuz-4.19.0+1").read_bytes()
    assert vmlinuz[0x202:0x206] == b"HdrS"
    assert os.readlink(root / "boot/vmlinuz-4.19-xen") == "vmlinuz-4.19.0+1"
    assert (root / "boot/xen-4.17.5-20.1-d.gz").read_bytes()[:2] == b"\x1f\x8b"
    grub = (root / "boot/efi/EFI/xenserver/grubx64.efi").read_bytes()
    assert grub[:2] == b"MZ" and b"/EFI/xenserver" in grub
    assert (root / "boot/efi/EFI/BOOT/BOOTX64.EFI").read_bytes() == grub
    assert (root / "usr/share/syslinux/isolinux.bin").stat().st_size > 20000
    assert (root / "bin/busybox").read_bytes()[:4] == b"\x7fELF"
    assert os.readlink(root / "bin/sh") == "bash"
    assert os.readlink(root / "sbin/init") == "../lib/systemd/systemd"
    assert os.readlink(root / "sbin/poweroff") == "../bin/systemctl"
    for binary in ("lib/systemd/systemd", "bin/systemctl", "bin/udevadm", "sbin/agetty", "usr/bin/setsid", "bin/bash"):
        assert (root / binary).read_bytes()[:4] == b"\x7fELF", binary
    # the closure: every DT_NEEDED of every ELF file is in the root (its RUNPATH or the multiarch dirs)
    from xcpimg import elf
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and elf.is_elf(path) and "lib/modules" not in str(path):
            dyn = elf.read_dynamic(path)
            if dyn is None:  # 32-bit: syslinux's .c32 modules
                assert "usr/share/syslinux" in str(path), path
                continue
            for name in dyn.needed:
                dirs = (*dyn.runpath, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                        "/usr/lib/x86_64-linux-gnu/systemd")
                assert any((root / d.lstrip("/") / name).exists() for d in dirs), (path, name)
            if dyn.interpreter:
                assert (root / dyn.interpreter.lstrip("/")).exists()
    preinit = (root / "opt/xensource/installer/preinit").read_text()
    assert "agetty -n -l /opt/xensource/installer/init" in preinit and "udevadm settle" in preinit
    init = (root / "opt/xensource/installer/init").read_text()
    assert "Welcome to %s - Version %s (Kernel %s)" in init and "Select Keymap" in init
    for unit in ("interface-rename-sideway.service", "early-blacklist.service"):
        assert (root / "usr/lib/systemd/system" / unit).is_file()
    lines = (root / "usr/src/branding/branding").read_text().splitlines()
    branding = dict(line.split("=", 1) for line in lines)
    assert branding["PLATFORM_NAME"] == "XCP" and branding["PLATFORM_VERSION"] == "3.4.0"
    assert branding["PRODUCT_BRAND"] == "XCP-ng" and branding["PRODUCT_VERSION"] == "8.3.0"
    assert branding["COMPANY_NAME"] == '"Vates, XenServer, and others"'


def test_signatures_verify_with_fixture_key(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    rpms = sorted(repo.root.rglob("*.rpm"))
    assert len(rpms) > 400
    sample = [_rpm(repo, "8.3", "kernel"), _rpm(repo, "8.2", "kernel-alt")]
    nokey = subprocess.run(["rpm", "--dbpath", tmp_path / "empty", "-K", *sample],
                           capture_output=True, text=True)
    assert nokey.returncode != 0 and "SIGNATURES NOT OK" in nokey.stdout
    db = tmp_path / "db"
    subprocess.run(["rpm", "--dbpath", db, "--import", repo.gpgkey_path], check=True)
    out = subprocess.run(["rpm", "--dbpath", db, "-Kv", *rpms], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:]
    assert out.stdout.count("Header V4 RSA/SHA256 Signature, key ID b35aa2ac: OK") == len(rpms)


def _dnf(repo: fr.FixtureRepo, ver: str, layers: tuple[str, ...], work: Path,
         *args: str) -> subprocess.CompletedProcess[str]:
    """dnf on *layers* of *ver* with gpgcheck on, isolated in *work* (nothing of the host's dnf state)."""
    repos = work / "repos.d"
    for d in ("repos.d", "cache", "persist", "log", "empty", "root"):
        (work / d).mkdir(parents=True, exist_ok=True)
    conf = work / "dnf.conf"
    conf.write_text("[main]\ngpgcheck=1\nbest=1\nkeepcache=0\ninstall_weak_deps=0\n"
                    "skip_missing_names_on_install=0\nreposdir=\n")
    for layer in layers:
        (repos / f"{layer}.repo").write_text(textwrap.dedent(f"""\
            [fixture-{layer}]
            name=fixture {layer}
            baseurl={repo.srcurl(ver)}/{layer}/x86_64/
            gpgcheck=1
            gpgkey={repo.gpgkey_url}
            skip_if_unavailable=False
            """))
    argv = ["dnf", "-y", f"--config={conf}", f"--installroot={work / 'root'}", f"--releasever={ver}",
            "--noplugins", f"--setopt=reposdir={repos}", f"--setopt=cachedir={work / 'cache'}",
            f"--setopt=persistdir={work / 'persist'}", f"--setopt=logdir={work / 'log'}",
            f"--setopt=varsdir={work / 'empty'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


TESTING = ("base", "updates", "candidates", "testing")


def test_dnf_resolves_8_2_package_list(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    names = fr.read_package_list(fr.CHECKOUT / "configs/8.2/packages.lst")
    proc = _dnf(repo, "8.2", TESTING, tmp_path, "install", "--assumeno", *names)
    out = proc.stdout + proc.stderr
    assert "Operation aborted" in out, out[-3000:]
    assert "No match for argument" not in out and "Problem" not in out
    assert "kernel-alt" in out and "3.xcpng8.2" in out


def test_dnf_installs_8_3_package_list(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    """A real installroot install (signatures checked by dnf), then what install.img needs of it."""
    need_root("installing into a root needs uid 0")
    names = fr.read_package_list(fr.CHECKOUT / "configs/8.3/packages.lst")
    proc = _dnf(repo, "8.3", TESTING, tmp_path, "install", *names)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    root = tmp_path / "root"
    q = _dnf(repo, "8.3", TESTING, tmp_path, "repoquery", "--installed", "--qf", "%{name}-%{release}")
    assert q.returncode == 0, q.stderr[-2000:]
    installed = set(q.stdout.split())
    assert {"kernel-alt-3.xcpng8.3", "binutils-1.xcpng8.3", "dracut-572.xcpng8.3", "pkgconfig-1.xcpng8.3",
            "xen-hypervisor-20.1.xcpng8.3"} <= installed
    assert "Importing GPG key 0xB35AA2AC" in proc.stdout + proc.stderr  # and checked signatures with it
    for path in ("sbin/init", "lib/systemd/systemd", "bin/busybox", "EULA",
                 "usr/lib/python2.7/site-packages/xcp/branding.py",
                 "usr/bin/journalctl", "usr/share/locale/fr/LC_MESSAGES/libc.mo", "etc/yum/yum.conf",
                 "lib/modules/4.19.0+1/kernel/fs/fat/vfat.ko"):
        assert (root / path).exists(), path
    assert list((root / "usr").rglob("*.pyc"))
    # the installer's scripts parse with the root's own bash; depmod and systemctl --root find real work
    for script in ("opt/xensource/installer/preinit", "opt/xensource/installer/init"):
        subprocess.run(["chroot", root, "/bin/bash", "-n", f"/{script}"], check=True)
    subprocess.run(["chroot", root, "/bin/bash", "-c", "exit 0"], check=True)  # the libraries load
    subprocess.run(["depmod", "-b", root, "4.19.0+1"], check=True)
    modules_dep = (root / "lib/modules/4.19.0+1/modules.dep").read_text()
    assert "kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko" in modules_dep
    subprocess.run(["systemctl", "--root", root, "enable", "getty@tty2.service", "sshd.service"], check=True,
                   capture_output=True)
    assert (root / "etc/systemd/system/getty.target.wants/getty@tty2.service").is_symlink()
    subprocess.run(["systemctl", "--root", root, "enable", "fcoe", "lldpad", "xenstored", "chronyd"],
                   check=True, capture_output=True)
    subprocess.run(["systemctl", "--root", root, "disable", "getty@tty1", "fcoe", "lldpad", "xen-init-dom0",
                    "xenconsoled", "xenstored", "chronyd", "chrony-wait"], check=True, capture_output=True)
    assert not (root / "etc/systemd/system/multi-user.target.wants/fcoe.service").exists()


def test_base_and_testing_resolve_different_kernel_alt(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    def latest(layers: tuple[str, ...], work: Path) -> str:
        proc = _dnf(repo, "8.3", layers, work, "repoquery", "--latest-limit", "1",
                    "--qf", "%{name}-%{version}-%{release}", "kernel-alt")
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]
    assert latest(("base",), tmp_path / "b") == "kernel-alt-4.19.322-1.xcpng8.3"
    assert latest(TESTING, tmp_path / "t") == "kernel-alt-4.19.322-3.xcpng8.3"
    assert latest(("base", "updates"), tmp_path / "u") == "kernel-alt-4.19.322-2.xcpng8.3"


def test_cache_hit_is_fast(repo: fr.FixtureRepo) -> None:
    start = time.monotonic()
    again = fr.ensure_fixture_repo()
    assert time.monotonic() - start < 2.0
    assert again == repo


def test_cli_copies_the_tree(repo: fr.FixtureRepo, tmp_path: Path) -> None:
    dest = tmp_path / "fixture"
    cli = [PY, "-m", "xcpimg.cli", "fixture-repo"]
    proc = subprocess.run([*cli, dest], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"file://{dest}/8/8.3" in proc.stdout
    assert (dest / "8/8.3/testing/x86_64/repodata/repomd.xml").read_bytes() == \
        (repo.root / "8/8.3/testing/x86_64/repodata/repomd.xml").read_bytes()
    again = subprocess.run([*cli, dest], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr
    (dest / "stray").write_text("x")
    forced = subprocess.run([*cli, dest, "--force-overwrite"], capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert not (dest / "stray").exists() and (dest / "RPM-GPG-KEY-xcpimg-fixture").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["fixture"]


# ------------------------------------------------------------------ tiny fixtures: cache, races, failures


def _tiny_fixtures(where: Path, debian: str = "") -> Path:
    d = where / "fixtures"
    (d / "keys").mkdir(parents=True)
    for key in ("fixture-secret.asc", "RPM-GPG-KEY-xcpimg-fixture"):
        shutil.copy(fr.FIXTURES / "keys" / key, d / "keys" / key)
    (d / "repo.toml").write_text(textwrap.dedent(f"""\
        [repo]
        repos = ["base", "testing"]
        metadata_revision = 1704067200
        stub_version = "1.0"
        stub_release = "1"
        vendor = "xcpimg fixture"
        license = "GPL-2.0-or-later"
        [key]
        uid = "xcpimg fixture <fixture@xcpimg.invalid>"
        secret = "keys/fixture-secret.asc"
        public = "keys/RPM-GPG-KEY-xcpimg-fixture"
        public_name = "RPM-GPG-KEY-xcpimg-fixture"
        created = 1672531200
        [version."8.3"]
        dist = "xcpng8.3"
        payload = "w2.xzdio"
        [debian]
        {debian}
        """))
    (d / "packages.toml").write_text(textwrap.dedent("""\
        [[package]]
        name = "tiny"
        version = "2.0"
        release = "1"
        requires = ["tiny-dep"]
        files = [{ path = "/usr/share/tiny/README", text = "tiny @version@-@release@\\n" }]
        [[newer]]
        name = "tiny"
        repo = "testing"
        release = "2"
        """))
    return d


def _ensure_in_subprocess(cache: Path, fixtures: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = ("import logging, sys; from pathlib import Path; from xcpimg import fixture_repo as fr; "
            "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
            "print(fr.ensure_fixture_repo(Path(sys.argv[1]), Path(sys.argv[2])).root)")
    return subprocess.Popen([PY, "-c", code, cache, fixtures], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_concurrent_builds_give_one_intact_repo(tmp_path: Path) -> None:
    fixtures = _tiny_fixtures(tmp_path)
    cache = tmp_path / "cache"
    procs = [_ensure_in_subprocess(cache, fixtures) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    roots = {r[0].strip() for r in results}
    assert len(roots) == 1
    assert sum(r[1].count("fixture repo: building") for r in results) == 1
    root = Path(roots.pop())
    built = sorted(p.name for p in (cache / "fixture-repo").iterdir() if p.is_dir())
    assert built == [root.name]  # no second tree, no .build-* leftovers
    repo = fr.FixtureRepo(root, ("8.3",))
    assert repo.manifest()["8.3"]["testing"] == {"tiny": "2.0-2.xcpng8.3.x86_64"}
    assert (repo.repo_dir("8.3", "base") / "Packages/tiny-dep-1.0-1.xcpng8.3.x86_64.rpm").is_file()
    assert (repo.repo_dir("8.3", "testing") / "repodata/repomd.xml").is_file()
    # a cache hit in a fresh process is fast, and a second build elsewhere is byte-identical
    start = time.monotonic()
    fr.ensure_fixture_repo(cache, fixtures)
    assert time.monotonic() - start < 2.0
    other = fr.ensure_fixture_repo(tmp_path / "cache2", fixtures)
    assert _digests(other.root) == _digests(root)


def test_unfetchable_debian_package_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    """No network to Debian: apt-get download fails; the error names the package; no repo is left."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "apt-get").write_text("#!/bin/sh\necho 'E: Failed to fetch http://deb.debian.org/debian/pool/"
                                     "x.deb  Temporary failure resolving deb.debian.org' >&2\nexit 100\n")
    (fakebin / "apt-get").chmod(0o755)
    cache = tmp_path / "cache"
    dest = tmp_path / "out"
    env = {**os.environ, "XCPIMG_CACHE": str(cache), "PATH": f"{fakebin}:{os.environ['PATH']}"}
    proc = subprocess.run([PY, "-m", "xcpimg.cli", "fixture-repo", dest], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("xcpimg fixture-repo: error: download Debian package "), err
    name = err.split("download Debian package ")[1].split()[0]
    assert name in {src["package"] for src in fr.load_fixtures().repo["debian"].values() if "package" in src}, err
    assert not dest.exists()
    assert not [p for p in (cache / "fixture-repo").iterdir() if p.is_dir()]


def test_unknown_debian_package_is_named(tmp_path: Path) -> None:
    fixtures = _tiny_fixtures(tmp_path, 'nope = { package = "xcpimg-no-such-package" }')
    proc = _ensure_in_subprocess(tmp_path / "cache", fixtures)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Debian package xcpimg-no-such-package is unknown to apt" in err
    assert not [p for p in (tmp_path / "cache/fixture-repo").iterdir() if p.is_dir()]
