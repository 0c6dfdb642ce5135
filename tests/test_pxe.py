"""`xcpimg pxe-tree`: the tree made from fixture ISOs (full and netinstall), from ISOs
mastered by xorriso (Rock Ridge + Joliet, Joliet only), the generated loader configs parsed
back against the ISO's own, answerfile/bootargs, publishing without clobbering, and ISOs
whose configs or links try to leave the tree. No QEMU runs here (see test_boot_real).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from xcpimg import cli
from xcpimg.errors import BuildError, UsageError
from xcpimg.fsutil import publish_tree
from xcpimg.media.reader import IsoReader
from xcpimg.pxe import PxeOptions, make_pxe_tree
from xcpimg.pytest_plugin import MatrixConfig, RepoSource, build_matrix_iso
from xcpimg.run import run

BIOS_FILES = {"pxelinux.0", "ldlinux.c32", "libcom32.c32", "libutil.c32", "mboot.c32", "menu.c32",
              "pxelinux.cfg/default"}
UEFI_FILES = {"EFI/xenserver/grubx64.efi", "EFI/xenserver/grub.cfg"}
BOOT_FILES = {"xen.gz", "vmlinuz", "alt/vmlinuz", "install.img", "memtest.bin", "memtest.efi",
              "isolinux/pg_main", "isolinux/pg_help", "isolinux/splash.lss"}


@pytest.fixture(scope="session")
def fixture_isos(repo_source: RepoSource, probe_initrd: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The matrix's 8.3:testing ISOs, full and netinstall (probe initrd as install.img)."""
    return {flavour: build_matrix_iso(MatrixConfig("8.3:testing", flavour == "netinstall"), repo_source,
                                      probe_initrd, tmp_path_factory, "probe")
            for flavour in ("full", "netinstall")}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# -- parsing the configs back ----------------------------------------------------------------

def syslinux_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """label -> (kernel, append words) of a syslinux config."""
    entries: dict[str, tuple[str, list[str]]] = {}
    label = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].lower()
        if key == "label":
            label = words[1]
            entries[label] = ("", [])
        elif label and key in ("kernel", "linux"):
            entries[label] = (words[1], entries[label][1])
        elif label and key == "append":
            entries[label] = (entries[label][0], words[1:])
    return entries


def grub_entries(text: str) -> dict[str, list[list[str]]]:
    """menuentry title -> its command lines (words) of a grub.cfg."""
    entries: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        found = re.match(r'\s*menuentry\s+"([^"]+)"', line)
        if found:
            title = found.group(1)
            entries[title] = []
        elif line.strip() == "}":
            title = None
        elif title and line.strip() and not line.strip().startswith("#"):
            entries[title].append(line.split())
    return entries


def _mboot_files(append: list[str]) -> list[str]:
    segments = " ".join(append).split(" --- ")
    return [seg.split()[0] for seg in segments]


def _unpathed(words: list[str]) -> list[str]:
    """Words with every path reduced to its base name (to compare args across path rewrites)."""
    return [w.rsplit("/", 1)[-1] if "/" in w and "=" not in w else w for w in words]


def check_tree(tree: Path, iso: Path, prefix: str = "xcp-ng") -> None:
    """The tree's configs name the same entries as the ISO's, with the same arguments, and
    every file they name exists in the tree."""
    with IsoReader(iso) as reader:
        iso_sys = syslinux_entries(reader.read("/boot/isolinux/isolinux.cfg").decode())
        iso_grub = grub_entries(reader.read("/EFI/xenserver/grub.cfg").decode())
    pxe_sys = syslinux_entries((tree / "pxelinux.cfg/default").read_text())
    assert list(pxe_sys) == list(iso_sys) and len(pxe_sys) >= 7
    for label, (kernel, append) in pxe_sys.items():
        assert (tree / kernel).is_file(), f"{label}: {kernel}"
        assert _unpathed(append) == _unpathed(iso_sys[label][1]), label
        if kernel == "mboot.c32":
            files = _mboot_files(append)
            assert [f.split("/")[0] for f in files] == [prefix] * 3, files
            assert all((tree / f).is_file() for f in files), files
    grub_text = (tree / "EFI/xenserver/grub.cfg").read_text()
    assert not re.search(r"^\s*search\b", grub_text, re.M)
    pxe_grub = grub_entries(grub_text)
    assert list(pxe_grub) == list(iso_grub)
    for title, commands in pxe_grub.items():
        assert [_unpathed(c) for c in commands] == [_unpathed(c) for c in iso_grub[title]], title
        for words in commands:
            if words[0] in ("multiboot2", "module2", "chainloader"):
                assert words[1].startswith(f"/{prefix}/") and (tree / words[1].lstrip("/")).is_file(), words


# -- fixture ISOs ----------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", ["full", "netinstall"])
def test_pxe_tree_of_fixture_iso(fixture_isos: dict[str, Path], flavour: str, tmp_path: Path) -> None:
    iso = fixture_isos[flavour]
    tree = make_pxe_tree(PxeOptions(iso, tmp_path / "tree"))
    expected = BIOS_FILES | UEFI_FILES | {f"xcp-ng/{f}" for f in BOOT_FILES}
    with IsoReader(iso) as reader:
        has_treeinfo = reader.exists("/.treeinfo")
        assert (tree / "xcp-ng/install.img").read_bytes() == reader.read("/install.img")
        assert (tree / "pxelinux.0").read_bytes() == reader.read("/boot/pxelinux/pxelinux.0")
    assert has_treeinfo == (flavour == "full")
    assert _files(tree) == expected | ({"xcp-ng/.treeinfo"} if has_treeinfo else set())
    check_tree(tree, iso)
    default = (tree / "pxelinux.cfg/default").read_text()
    word = "no-repo-gpgcheck" if flavour == "full" else "netinstall"
    assert f"--- xcp-ng/vmlinuz {word} console=hvc0 console=tty0 --- xcp-ng/install.img" in default
    assert "DISPLAY xcp-ng/isolinux/pg_main" in default and "LINUX xcp-ng/memtest.bin" in default
    assert b"\x18xcp-ng/isolinux/splash.lss" in (tree / "xcp-ng/isolinux/pg_main").read_bytes()  # the menu's image
    assert {oct(p.stat().st_mode & 0o777) for p in tree.rglob("*")} <= {"0o644", "0o755"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_pxe_tree_is_reproducible(fixture_isos: dict[str, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    trees = [make_pxe_tree(PxeOptions(fixture_isos["netinstall"], tmp_path / name)) for name in ("a", "b")]

    def digest(root: Path) -> dict[str, tuple[str, int]]:
        return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), int(p.stat().st_mtime))
                for p in root.rglob("*") if p.is_file()}
    assert digest(trees[0]) == digest(trees[1])
    assert {mtime for _h, mtime in digest(trees[0]).values()} == {1700000000}


def test_answerfile_and_bootargs(fixture_isos: dict[str, Path], tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    url = "http://192.0.2.1/answerfile.xml"
    tree = make_pxe_tree(PxeOptions(fixture_isos["full"], tmp_path / "t", prefix="pxe/xcp-ng-8.3",
                                    answerfile=url, bootargs="sshpassword=x network_device=eth0"))
    added = ["sshpassword=x", "network_device=eth0", f"answerfile={url}", "install"]
    for label, (kernel, append) in syslinux_entries((tree / "pxelinux.cfg/default").read_text()).items():
        if kernel != "mboot.c32":
            assert not set(added) & set(append), label
            continue
        dom0 = " ".join(append).split(" --- ")[1].split()
        assert dom0[0].startswith("pxe/xcp-ng-8.3/") and dom0[1:5] == added, label  # right after the kernel
        assert "no-repo-gpgcheck" not in dom0  # the installer refuses it with an answerfile
    for title, commands in grub_entries((tree / "EFI/xenserver/grub.cfg").read_text()).items():
        modules = [c for c in commands if c[0] == "module2"]
        if modules:
            assert modules[0][2:6] == added and "no-repo-gpgcheck" not in modules[0], title
            assert modules[1] == ["module2", "/pxe/xcp-ng-8.3/install.img"]
    assert "dropped no-repo-gpgcheck" in caplog.text


# -- ISOs not mastered by xcpimg -------------------------------------------------------------

@pytest.mark.parametrize("names", [["-R", "-J"], ["-J", "-joliet-long"]], ids=["rockridge", "joliet-only"])
def test_pxe_tree_from_xorriso_iso(fixture_isos: dict[str, Path], names: list[str], tmp_path: Path) -> None:
    """Remastered by xorriso from the extracted ISO: the same tree as from the original."""
    original = fixture_isos["netinstall"]
    extracted = tmp_path / "x"
    run(["xorriso", "-osirrox", "on", "-indev", original, "-extract", "/", extracted])
    iso = tmp_path / "remastered.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", *names, "-V", "REMASTER", "-o", iso, extracted])
    with IsoReader(iso) as reader:
        assert reader.exists("/boot/isolinux/isolinux.cfg") and reader.exists("/EFI/xenserver/grubx64.efi")
    ours = make_pxe_tree(PxeOptions(original, tmp_path / "ours"))
    theirs = make_pxe_tree(PxeOptions(iso, tmp_path / "theirs"))
    assert _files(ours) == _files(theirs)
    for name in _files(ours):
        a, b = (ours / name).read_bytes(), (theirs / name).read_bytes()
        if name.endswith(("default", "grub.cfg")):  # the header names the ISO
            a, b = a.split(b"\n", 1)[1], b.split(b"\n", 1)[1]
        assert a == b, name
    check_tree(theirs, iso)


def _small_iso(tmp_path: Path, isolinux_cfg: str, links: dict[str, str] | None = None,
               extra: dict[str, bytes] | None = None) -> Path:
    tree = tmp_path / "src"
    (tree / "boot/isolinux").mkdir(parents=True)
    (tree / "boot/pxelinux").mkdir(parents=True)
    (tree / "boot/pxelinux/pxelinux.0").write_bytes(b"pxe")
    (tree / "boot/pxelinux/mboot.c32").write_bytes(b"mboot")
    (tree / "boot/xen.gz").write_bytes(b"xen")
    (tree / "boot/isolinux/isolinux.cfg").write_text(isolinux_cfg)
    for name, target in (links or {}).items():
        os.symlink(target, tree / name)
    for name, data in (extra or {}).items():
        (tree / name).write_bytes(data)
    iso = tmp_path / "small.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", iso, tree])
    return iso


def test_config_paths_never_leave_the_tree(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    iso = _small_iso(tmp_path, "DEFAULT evil\nLABEL evil\n  KERNEL ../../../../mboot.c32\n"
                               "  APPEND /../../../etc/hostname --- ../../../../boot/xen.gz x\n")
    dest = tmp_path / "out" / "tree"
    dest.parent.mkdir()
    make_pxe_tree(PxeOptions(iso, dest))
    assert _files(tmp_path / "out") == {"tree/pxelinux.0", "tree/mboot.c32", "tree/pxelinux.cfg/default",
                                        "tree/xcp-ng/xen.gz"}
    default = (dest / "pxelinux.cfg/default").read_text()
    assert "KERNEL mboot.c32\n  APPEND xcp-ng/etc/hostname --- xcp-ng/xen.gz x" in default
    assert "names /etc/hostname, which the ISO does not have" in caplog.text
    assert "no UEFI (GRUB) boot" in caplog.text


def test_display_files_and_their_images_follow_into_the_prefix(tmp_path: Path) -> None:
    iso = _small_iso(tmp_path, "DISPLAY pg_main\nF2 /boot/isolinux/pg_main\nLABEL x\n  KERNEL mboot.c32\n",
                     extra={"boot/isolinux/pg_main": b"\x18splash.lss\nWelcome\n", "boot/isolinux/splash.lss": b"LSS"})
    tree = make_pxe_tree(PxeOptions(iso, tmp_path / "tree", prefix="p"))
    default = (tree / "pxelinux.cfg/default").read_text()
    assert "DISPLAY p/isolinux/pg_main\nF2 p/isolinux/pg_main\n" in default
    assert (tree / "p/isolinux/pg_main").read_bytes() == b"\x18p/isolinux/splash.lss\nWelcome\n"
    assert (tree / "p/isolinux/splash.lss").read_bytes() == b"LSS"


def test_links_on_the_iso_are_not_followed(tmp_path: Path) -> None:
    iso = _small_iso(tmp_path, "LABEL x\n  KERNEL mboot.c32\n  APPEND /boot/xen.gz --- /vmlinuz\n",
                     links={"vmlinuz": "/etc/shadow"})
    with pytest.raises(BuildError, match="/vmlinuz is a symbolic link"):
        make_pxe_tree(PxeOptions(iso, tmp_path / "tree"))
    assert not (tmp_path / "tree").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.iso", "src"]


# -- publishing and options ------------------------------------------------------------------

def test_existing_dest_is_kept_unless_forced(fixture_isos: dict[str, Path], tmp_path: Path) -> None:
    dest = tmp_path / "tree"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    with pytest.raises(UsageError, match="already exists"):
        make_pxe_tree(PxeOptions(fixture_isos["netinstall"], dest))
    assert _files(dest) == {"mine"}
    make_pxe_tree(PxeOptions(fixture_isos["netinstall"], dest, force=True))
    assert "mine" not in _files(dest) and "pxelinux.0" in _files(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_publish_never_clobbers_a_dest_that_appeared_meanwhile(tmp_path: Path) -> None:
    new, dest = tmp_path / "new", tmp_path / "dest"
    new.mkdir()
    (new / "a").write_text("new")
    dest.mkdir()  # created by someone else after the first check: even an empty dir is kept
    with pytest.raises(UsageError, match="already exists"):
        publish_tree(new, dest, force=False)
    assert _files(new) == {"a"} and _files(dest) == set()
    (dest / "old").write_text("old")
    publish_tree(new, dest, force=True)  # an atomic exchange, then the old tree goes
    assert _files(dest) == {"a"} and not new.exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prefix": "../up"}, "--prefix must be a relative path"),
    ({"prefix": "/abs"}, "--prefix must be a relative path"),
    ({"prefix": "EFI/x"}, "collides"),
    ({"answerfile": "answer.xml"}, "--answerfile must be"),
    ({"answerfile": "http://a b"}, "--answerfile must be"),
    ({"bootargs": "a --- b"}, "--bootargs must be plain"),
])
def test_bad_options(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_pxe_tree(PxeOptions(tmp_path / "a.iso", tmp_path / "t", **kwargs))  # type: ignore[arg-type]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.iso").write_bytes(b"\0" * 65536)
    assert cli.main(["pxe-tree", str(tmp_path / "none.iso"), str(tmp_path / "t")]) == 2
    assert cli.main(["pxe-tree", str(tmp_path / "bad.iso"), str(tmp_path / "t")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("xcpimg pxe-tree: error: ") for ln in lines), lines
    assert "is not an ISO image" in lines[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.iso"]
