"""Real boots (``boot`` marker; 6-60 s each under TCG, run under the shared QEMU lock):
the hand-made bootkit ISO to init in the four disk modes and broken variants to a named
failure; network boots of a fixture ISO's PXE tree (made by ``xcpimg pxe-tree``) under
SeaBIOS and OVMF, and broken trees (no ldlinux.c32, a GRUB image without efinet/tftp)
failing fast with their reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from xcpimg.boot import BootFailure, boot, boot_mode, process
from xcpimg.fixture_repo import load_fixtures
from xcpimg.pxe import PxeOptions, make_pxe_tree
from xcpimg.pytest_plugin import MatrixConfig, RepoSource, build_matrix_iso, shared_build
from xcpimg.run import run

DISK_MODES = ["bios-cd", "bios-usb", "uefi-cd", "uefi-usb"]


def _no_vm_left() -> None:
    out = subprocess.run(["pgrep", "-f", "xcpimg-vm-"], capture_output=True, text=True).stdout
    mine = [p for p in out.split() if p.isdigit() and int(p) in process.live()]
    assert not mine and not process.live()


def _boot(iso: Path, mode: str, **kw: object) -> object:
    bm = boot_mode(mode)
    return boot(iso, bm.firmware, bm.media, no_eltorito=bm.no_eltorito, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def bootkit_iso(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Build a bootkit ISO variant once per run (shared across xdist workers)."""
    from bootkit import build_bootkit_iso

    def get(variant: str) -> Path:
        def build(out: Path) -> None:
            build_bootkit_iso(out, variant)
        return shared_build(tmp_path_factory, f"bootkit-{variant}.iso", build)
    return get


@pytest.mark.boot
@pytest.mark.parametrize("mode", DISK_MODES)
def test_boot_bootkit_to_init(bootkit_iso, mode: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bootkit import DOM0_MARKER
    result = _boot(bootkit_iso("good"), mode, until="init", logdir=tmp_path)
    assert result.ok and list(result.reached) == ["bootloader", "hypervisor", "kernel", "init"]  # type: ignore[attr-defined]
    assert result.cmdline is not None and DOM0_MARKER in result.cmdline.split()  # type: ignore[attr-defined]
    assert "console=hvc0" in result.cmdline.split()  # type: ignore[attr-defined]
    reached = result.reached  # type: ignore[attr-defined]
    assert reached["bootloader"] < reached["hypervisor"] < reached["kernel"]
    assert "xcpimg-init: reached" in result.serial_log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert result.screenshot is None and result.argv_file.is_file()  # type: ignore[attr-defined]
    _no_vm_left()


@pytest.mark.boot
def test_boot_uefi_usb_through_hybrid_partition(bootkit_iso, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bootkit import GRUB_CMDPATH_PREFIX
    result = boot(bootkit_iso("good"), "uefi", "usb", until="kernel", logdir=tmp_path, no_eltorito=True)
    assert result.ok and result.media == "usb-noeltorito"
    log = result.serial_log.read_text(errors="replace")
    assert f"{GRUB_CMDPATH_PREFIX}(hd0,msdos2)" in log  # booted via MBR partition 2, not El Torito
    _no_vm_left()


@pytest.mark.boot
def test_boot_stops_at_requested_stage(bootkit_iso, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = boot(bootkit_iso("good"), "bios", "cd", until="hypervisor", logdir=tmp_path)
    assert "hypervisor" in result.reached and "kernel" not in result.reached and result.cmdline is None
    _no_vm_left()


@pytest.mark.boot
@pytest.mark.parametrize(("variant", "mode", "reason"), [
    ("no-xen", "bios-cd", "mboot.c32 could not load a file: Loading /boot/xen.gz... failed!"),
    ("no-xen", "uefi-cd", "GRUB file not found: error: file `/boot/xen.gz' not found."),
    ("no-ldlinux", "bios-cd", "isolinux could not load a module (VGA): Failed to load ldlinux.c32"),
])
def test_broken_iso_fails_fast_with_reason(bootkit_iso, variant: str, mode: str, reason: str,  # type: ignore[no-untyped-def]
                                           tmp_path: Path) -> None:
    with pytest.raises(BootFailure) as err:
        _boot(bootkit_iso(variant), mode, until="init", logdir=tmp_path)
    result = err.value.result
    assert result.reason == reason and reason in str(err.value)
    assert result.seconds < 60, f"took {result.seconds} s to fail"
    assert result.screenshot is not None and result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.serial_log.is_file() and result.stderr_log.is_file()
    assert "-no-reboot" in result.argv_file.read_text()
    _no_vm_left()


# -- network boots of a fixture ISO ----------------------------------------------------------

@pytest.fixture(scope="session")
def fixture_iso(repo_source: RepoSource, probe_initrd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8.3:testing netinstall ISO of the matrix (probe initrd as install.img)."""
    return build_matrix_iso(MatrixConfig("8.3:testing", True), repo_source, probe_initrd, tmp_path_factory, "probe")


@pytest.mark.boot
def test_bios_pxe_from_a_tree_with_bootargs(fixture_iso: Path, tmp_path: Path) -> None:
    tree = make_pxe_tree(PxeOptions(fixture_iso, tmp_path / "tree", bootargs="xcpimg-pxe-marker=1"))
    result = boot(tree, "bios", "pxe", logdir=tmp_path / "logs")
    assert result.ok and result.media == "pxe"
    assert list(result.reached) == ["bootloader", "hypervisor", "kernel", "init"]
    assert result.cmdline is not None
    assert {"netinstall", "xcpimg-pxe-marker=1", "console=hvc0"} <= set(result.cmdline.split())
    assert "PXELINUX 6" in result.serial_log.read_text(errors="replace")
    _no_vm_left()


@pytest.mark.boot
def test_uefi_pxe_from_a_tree_with_answerfile(fixture_iso: Path, tmp_path: Path) -> None:
    url = "http://10.0.2.2/answerfile.xml"
    tree = make_pxe_tree(PxeOptions(fixture_iso, tmp_path / "tree", answerfile=url))
    result = boot(tree, "uefi", "pxe", logdir=tmp_path / "logs")
    assert result.ok and result.cmdline is not None
    words = result.cmdline.split()
    assert words[:2] == [f"answerfile={url}", "install"] and "netinstall" in words  # right after the kernel
    assert "tftp://10.0.2.2/EFI/xenserver/grubx64.efi... ok" in result.serial_log.read_text(errors="replace")
    _no_vm_left()


@pytest.mark.boot
def test_uefi_pxe_of_a_mkimage_iso(repo_source: RepoSource, probe_initrd: Path,
                                   tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """`--efi-installer mkimage` builds efinet and tftp into GRUB: its ISO network-boots under UEFI."""
    from xcpimg.iso.build import IsoOptions, build_iso
    from xcpimg.layers import resolve

    def build(out: Path) -> None:
        build_iso(IsoOptions(layers=resolve("8.3:testing"), install_img=probe_initrd, output=out, volid="MKIMAGE",
                             repo_config=repo_source.repo_config("8.3:testing"), netinstall=True,
                             efi_installer="mkimage", force=True))
    iso = shared_build(tmp_path_factory, "8.3_testing-netinstall-mkimage.iso", build)
    result = boot(iso, "uefi", "pxe", logdir=tmp_path)
    assert result.ok and result.cmdline is not None and "netinstall" in result.cmdline.split()
    _no_vm_left()


@pytest.mark.boot
def test_pxe_tree_without_ldlinux_fails_fast(fixture_iso: Path, tmp_path: Path) -> None:
    tree = make_pxe_tree(PxeOptions(fixture_iso, tmp_path / "tree"))
    (tree / "ldlinux.c32").unlink()
    with pytest.raises(BootFailure) as err:
        boot(tree, "bios", "pxe", logdir=tmp_path / "logs")
    result = err.value.result
    assert result.reason == "isolinux could not load a module (VGA): Failed to load ldlinux.c32"
    assert "PXELINUX" in (tmp_path / "logs" / "vga.txt").read_text()
    assert result.seconds < 30, f"took {result.seconds} s to fail"
    assert result.screenshot is not None and result.screenshot.is_file()
    _no_vm_left()


@pytest.mark.boot
def test_grub_image_without_tftp_fails_fast(fixture_iso: Path, tmp_path: Path) -> None:
    img = load_fixtures().repo["grub_image"]
    modules = [m for m in img["modules"] if m not in ("efinet", "tftp", "net")]
    assert len(modules) == len(img["modules"]) - 3
    moddir = Path("/usr/lib/grub") / img["format"]
    if not moddir.is_dir():
        pytest.fail(f"{moddir} missing: install grub-efi-amd64-bin")
    tree = make_pxe_tree(PxeOptions(fixture_iso, tmp_path / "tree"))
    grub = tree / "EFI/xenserver/grubx64.efi"
    grub.unlink()
    run(["grub-mkimage", "-O", img["format"], "-p", img["prefix"], "-d", moddir, "-o", grub, *modules])
    with pytest.raises(BootFailure) as err:
        boot(tree, "uefi", "pxe", logdir=tmp_path / "logs")
    result = err.value.result
    assert result.reason is not None and result.reason.startswith(
        "GRUB read no grub.cfg and stopped at its command line (over PXE: efinet and tftp missing")
    assert list(result.reached) == ["bootloader"] and result.seconds < 30, f"took {result.seconds} s"
    _no_vm_left()
    shutil.rmtree(tree)
