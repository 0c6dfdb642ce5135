"""install.img: the build steps on small fake roots (cheap), full builds from the fixture repo (expensive)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hostkit import need_root, unprivileged

from xcpimg import compress, cpio, installimg
from xcpimg.errors import BuildError, ConfigError, XcpimgError
from xcpimg.layers import Layers, read_package_list, resolve
from xcpimg.repos import RepoConfig

CHECKOUT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- cheap: helpers on fake roots

def test_in_root_never_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")              # relative, like EL7's /lib
    os.symlink("/usr/lib", root / "abs-lib")          # absolute: must stay inside root
    os.symlink("../../..", root / "usr" / "lib" / "up")
    assert installimg.in_root(root, "lib/modules") == root / "usr/lib/modules"
    assert installimg.in_root(root, "/abs-lib/x") == root / "usr/lib/x"
    assert installimg.in_root(root, "usr/lib/up/../../etc") == root / "etc"
    assert installimg.in_root(root, "lib") == root / "lib"                       # last link not followed
    assert installimg.in_root(root, "lib", follow_last=True) == root / "usr/lib"
    os.symlink("loop", root / "loop")
    with pytest.raises(BuildError, match="too many levels"):
        installimg.in_root(root, "loop/x")


def test_prune_removes_listed_paths_and_pyc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("usr/bin/journalctl", "usr/bin/bash", "usr/sbin/ldconfig", "usr/lib/python2.7/a.pyc",
                "usr/lib/python2.7/a.py", "usr/lib/python2.7/b.pyo", "boot/vmlinuz",
                "usr/share/locale/fr/x.mo", "usr/lib/udev/hwdb.d/20-x.hwdb", "etc/keep.pyc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    os.symlink(str(outside), root / "usr/share/bash-completion")  # a link is removed, not followed
    installimg.prune(root)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == ["etc/keep.pyc", "usr/bin/bash", "usr/lib/python2.7/a.py"]
    assert (outside / "precious").read_text() == "keep"
    assert not (root / "boot").exists()


def fake_layers(tmp_path: Path) -> Layers:
    top, low = tmp_path / "8.3", tmp_path / "over"
    (top / "installimg/etc/systemd/system").mkdir(parents=True)
    (low / "installimg/etc/systemd/system").mkdir(parents=True)
    (top / "installimg/etc/systemd/system/installer.service").write_text("top\n")
    (low / "installimg/etc/systemd/system/installer.service").write_text("low\n")
    (low / "installimg/etc/sysconfig").mkdir(parents=True)
    script = low / "installimg/etc/sysconfig/run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    os.symlink("/dev/null", top / "installimg/etc/systemd/system/xenstored.service")
    return Layers((top, low))


def test_overlay_first_layer_wins_modes_kept_links_replaced(tmp_path: Path) -> None:
    need_root("overlay chowns to root")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("host file")
    # an existing link in the root must be replaced, never written through
    os.symlink(str(victim), root / "etc/systemd/system/installer.service")
    (root / "etc/systemd/system/xenstored.service").write_text("[Unit]\n")
    os.chown(root / "etc/systemd/system/xenstored.service", 99, 99)
    assert installimg.overlay(root, fake_layers(tmp_path)) == 3
    unit = root / "etc/systemd/system/installer.service"
    assert not unit.is_symlink() and unit.read_text() == "top\n"
    assert victim.read_text() == "host file"
    assert stat.S_IMODE((root / "etc/sysconfig/run.sh").stat().st_mode) == 0o750
    assert os.readlink(root / "etc/systemd/system/xenstored.service") == "/dev/null"
    assert all(os.lstat(p).st_uid == 0 and os.lstat(p).st_gid == 0 for p in root.rglob("*"))


def test_overlay_refuses_links_out_of_the_layer(tmp_path: Path) -> None:
    """``-> /dev/null`` is the image's own /dev/null (allowed); climbing out of the tree is refused."""
    layer = tmp_path / "evil"
    (layer / "installimg/etc").mkdir(parents=True)
    os.symlink("../../../../../etc/shadow", layer / "installimg/etc/shadow")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(BuildError, match=r"installimg: symlink etc/shadow -> \.\./\.\./\.\./\.\./\.\./etc/shadow "
                                         r"points outside its tree"):
        installimg.overlay(root, Layers((layer,)))
    assert not (root / "etc/shadow").exists() and not (root / "etc/shadow").is_symlink()


def test_overlay_refuses_to_replace_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/systemd/system/installer.service").mkdir(parents=True)
    with pytest.raises(BuildError, match="would replace the directory"):
        installimg.overlay(root, fake_layers(tmp_path))


def test_installer_getty_and_package_list(tmp_path: Path) -> None:
    assert installimg.installer_getty("8.2") == "getty@tty2.service"
    assert installimg.installer_getty("8.2.1") == "getty@tty2.service"
    assert installimg.installer_getty("8.3") == "installer-getty@tty2.service"
    lst = tmp_path / "packages.lst"
    lst.write_text("# comment\nfoo  bar # trailing\n\nbaz\n")
    assert read_package_list(lst) == ["foo", "bar", "baz"]
    lst.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="lists no package"):
        read_package_list(lst)
    real = read_package_list(resolve("8.3:testing").find("packages.lst"))
    assert "kernel" in real and "host-installer-startup" in real


def _unit(root: Path, rel: str, install: str = "WantedBy=multi-user.target") -> None:
    path = root / "usr/lib/systemd/system" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[Unit]\nDescription={rel}\n[Service]\nExecStart=/bin/true\n[Install]\n{install}\n")


def test_configure_units_enables_and_disables_existing(tmp_path: Path) -> None:
    need_root("systemctl --root on a root-owned tree")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    _unit(root, "installer.service")
    _unit(root, "installer-getty@.service", "WantedBy=getty.target")
    _unit(root, "getty@.service", "WantedBy=getty.target")
    _unit(root, "chronyd.service")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    os.symlink("/usr/lib/systemd/system/chronyd.service", wants / "chronyd.service")
    gwants = root / "etc/systemd/system/getty.target.wants"
    gwants.mkdir()
    os.symlink("/usr/lib/systemd/system/getty@.service", gwants / "getty@tty1.service")
    disabled = installimg.configure_units(root, "8.3")
    assert disabled == ["getty@tty1", "chronyd"]
    assert (wants / "installer.service").is_symlink()
    assert os.readlink(gwants / "installer-getty@tty2.service").endswith("installer-getty@.service")
    assert not (wants / "chronyd.service").is_symlink()
    assert not (gwants / "getty@tty1.service").is_symlink()


def test_clean_state(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("var/lib/dnf/history.sqlite", "var/cache/dnf/x", "var/log/dnf.log", "var/lib/rpm/__db.001",
                "var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite-shm", "etc/machine-id",
                "var/lib/systemd/random-seed", "var/lib/yum/history/h"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("state")
    installimg.clean_state(root)
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["etc/machine-id", "var/lib/rpm/rpmdb.sqlite"]
    assert (root / "etc/machine-id").read_bytes() == b""


# ---------------------------------------------------------------- cheap: refusals before any work

def test_not_root_refused_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    called: list[object] = []
    monkeypatch.setattr(installimg, "populate", lambda *a: called.append(a))
    with pytest.raises(XcpimgError, match="needs root"):
        installimg.build_installimg(resolve("8.3:testing"), RepoConfig(), tmp_path / "install.img")
    assert not called and not list(tmp_path.iterdir())


def test_cli_as_unprivileged_user(tmp_path: Path) -> None:
    """The real CLI, run unprivileged (under root: as uid 65534): one error line, exit 1, nothing written."""
    tmp_path.chmod(0o777)
    argv = unprivileged([sys.executable, "-m", "xcpimg.cli", "installimg", "-o", str(tmp_path / "i.img"),
                         "8.3:testing"])
    res = subprocess.run(argv, capture_output=True, text=True, cwd=CHECKOUT,
                         env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("xcpimg installimg: error: building install.img needs root"), res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*.img*"))


def test_refusals_before_work(tmp_path: Path) -> None:
    need_root("non-root is refused before these checks")
    out = tmp_path / "install.img"
    out.write_text("old")
    from xcpimg.errors import UsageError
    with pytest.raises(UsageError, match="already exists"):
        installimg.build_installimg(resolve("8.3:testing"), RepoConfig(), out)
    with pytest.raises(UsageError, match="unknown compression"):
        installimg.build_installimg(resolve("8.3:testing"), RepoConfig(), out, compression="lz4", force=True)
    with pytest.raises(ConfigError, match="unknown layer 'nosuch'"):
        resolve("8.3:nosuch")
    assert out.read_text() == "old"


# ---------------------------------------------------------------- expensive: builds from the fixture repo

@pytest.fixture(scope="session")
def fixture_repo():  # type: ignore[no-untyped-def]
    need_root("building install.img")
    from xcpimg.fixture_repo import ensure_fixture_repo
    return ensure_fixture_repo()


def fixture_config(repo, dist: str, **kw: object) -> RepoConfig:  # type: ignore[no-untyped-def]
    return RepoConfig(srcurl=repo.srcurl(dist), gpgkey=repo.gpgkey_url, **kw)  # type: ignore[arg-type]


def build(repo, spec: str, out: Path, **kw: object) -> Path:  # type: ignore[no-untyped-def]
    layers = resolve(spec)
    installimg.build_installimg(layers, fixture_config(repo, layers.dist), out, **kw)  # type: ignore[arg-type]
    return out


def unpack(img: Path, dest: Path) -> dict[str, cpio.Member]:
    with compress.open_decompressed(img) as f:
        data = f.read()
    members = {m.name: m for m in cpio.read_newc(io.BytesIO(data))}
    dest.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=dest, check=True)
    return members


@pytest.fixture(scope="session")
def built_83(fixture_repo, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    return build(fixture_repo, "8.3:testing", tmp_path_factory.mktemp("b1") / "install.img")


@pytest.mark.expensive
def test_83_content(built_83: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    members = unpack(built_83, root)
    assert built_83.read_bytes()[:6] == b"\xfd7zXZ\x00"  # xz, the default (bench/bench_release.py)
    assert members["init"].is_symlink and members["init"].data == b"/sbin/init"
    # packages of packages.lst are installed (the rpmdb knows them) and their files are present
    rpm = ["rpm", f"--root={root}", "--dbpath=/var/lib/rpm"]
    q = subprocess.run([*rpm, "-q", "kernel", "host-installer-startup", "systemd"],
                       capture_output=True, text=True)
    assert q.returncode == 0, q.stdout + q.stderr
    files = subprocess.run([*rpm, "-ql", "systemd"], capture_output=True, text=True, check=True).stdout
    some = [f for f in files.split() if f.startswith("/") and (root / f.lstrip("/")).is_file()]
    assert some, files
    # erased packages are gone from the rpmdb, gpg-pubkey included
    for name in installimg.ERASE:
        res = subprocess.run([*rpm, "-q", name], capture_output=True, text=True)
        assert res.returncode != 0, f"{name} still installed: {res.stdout}"
    # pruned paths are absent
    for rel in installimg.PRUNE:
        assert not os.path.lexists(root / rel), rel
    assert not [p for p in (root / "usr").rglob("*.py[co]")]
    # template overlay, owned by root, and the enabled units
    unit = root / "etc/systemd/system/installer.service"
    template = CHECKOUT / "configs/8.3/installimg/etc/systemd/system/installer.service"
    assert unit.read_bytes() == template.read_bytes()
    assert members["etc/systemd/system/installer.service"].uid == 0
    wants = [p for p in (root / "etc/systemd/system").glob("*.wants/*")]
    names = {p.name for p in wants}
    assert "installer.service" in names and "installer-getty@tty2.service" in names
    assert "getty@tty1.service" not in names
    # branding links
    assert os.readlink(root / "opt/xensource/installer/EULA") == "../../../EULA"
    assert os.readlink(root / "opt/xensource/installer/version.py") == \
        "../../../usr/lib/python2.7/site-packages/xcp/branding.py"
    # no package-manager state left
    assert not (root / "var/lib/dnf").exists() and not (root / "var/cache/dnf").exists()
    assert not list((root / "var/lib/rpm").glob("__db.*"))
    # depmod ran for each kernel
    for moddir in (root / "lib/modules").iterdir() if (root / "lib/modules").is_dir() else []:
        assert (moddir / "modules.dep").is_file(), moddir


@pytest.mark.expensive
def test_83_reproducible(fixture_repo, built_83: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    again = build(fixture_repo, "8.3:testing", tmp_path / "again.img")
    if again.read_bytes() != built_83.read_bytes():
        first = unpack(built_83, tmp_path / "r1")
        second = unpack(again, tmp_path / "r2")
        diff = sorted(n for n in set(first) | set(second)
                      if n not in first or n not in second or first[n].data != second[n].data
                      or first[n].mode != second[n].mode)
        pytest.fail(f"two builds differ in: {diff[:20]}")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(built_83.read_bytes()).hexdigest()


@pytest.mark.expensive
def test_missing_package_named(fixture_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    configs = tmp_path / "configs"
    shutil.copytree(CHECKOUT / "configs", configs, symlinks=True)
    with (configs / "8.3/packages.lst").open("a") as f:
        f.write("no-such-package-xyz\n")
    layers = resolve("8.3:testing", base=configs)
    out = tmp_path / "install.img"
    with pytest.raises(XcpimgError, match="no-such-package-xyz"):
        installimg.build_installimg(layers, fixture_config(fixture_repo, "8.3"), out, workdir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]  # no output, no build tree


@pytest.mark.expensive
def test_wrong_key_names_package(fixture_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layers = resolve("8.3:testing")
    wrong = (CHECKOUT / "configs/base/RPM-GPG-KEY-xcpng").as_uri()  # the real XCP-ng key
    cfg = RepoConfig(srcurl=fixture_repo.srcurl("8.3"), gpgkey=wrong)
    out = tmp_path / "install.img"
    with pytest.raises(XcpimgError) as info:
        installimg.build_installimg(layers, cfg, out, workdir=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, BuildError), msg
    assert re.match(r"signature check failed for package [\w.+-]+-[\w.+]+-[\w.+]+\.x86_64\b", msg), msg
    assert wrong in msg and "--gpgkey" in msg, msg
    assert not list(tmp_path.iterdir())


@pytest.mark.expensive
def test_82_updates(fixture_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    img = build(fixture_repo, "8.2:updates", tmp_path / "install.img", compression="xz")
    assert img.read_bytes()[:6] == compress.MAGICS["xz"]
    members = unpack(img, tmp_path / "root")
    assert members["init"].data == b"/sbin/init"
    wants = {n.rpartition("/")[2] for n in members if "/getty.target.wants/" in n}
    assert "getty@tty2.service" in wants and "getty@tty1.service" not in wants
    key = members["opt/xensource/installer/RPM-GPG-KEY-xcpng"]   # a link of the 8.2 template
    assert key.is_symlink and key.data == b"../../../etc/pki/rpm-gpg/RPM-GPG-KEY-xcpng"


@pytest.mark.expensive
def test_interrupted_build_leaves_nothing(fixture_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM in the middle of the dnf install: exit 130, no output, no build tree left."""
    import signal
    import time
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "install.img"
    argv = [sys.executable, "-m", "xcpimg.cli", "installimg", "--srcurl", fixture_repo.srcurl("8.3"),
            "--gpgkey", fixture_repo.gpgkey_url, "-o", str(out), "8.3:testing"]
    proc = subprocess.Popen(argv, cwd=CHECKOUT, env={**os.environ, "TMPDIR": str(work)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(work.glob("*/root/usr")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(work.iterdir()) == [] and not list(tmp_path.glob("*.img*"))


@pytest.mark.expensive
def test_disk_full_leaves_no_output(fixture_repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The output directory fills up while packing: a one-line error, no partial file."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "xcpimg-test-full", str(small)], check=True)
    try:
        with pytest.raises(BuildError, match="cannot write .*No space left on device"):
            build(fixture_repo, "8.3:testing", small / "install.img", workdir=tmp_path)
        assert list(small.iterdir()) == []
        assert [p.name for p in tmp_path.iterdir()] == ["small"]
    finally:
        subprocess.run(["umount", str(small)], check=True)
