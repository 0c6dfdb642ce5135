"""QEMU command lines, per medium and firmware (exact arguments), and the boot modes.

Pure: no QEMU runs. Each medium contributes its own arguments after the machine's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xcpimg.boot import BOOT_MODES, BootMode, boot_mode
from xcpimg.boot.machine import MachineConfig, build_argv
from xcpimg.boot.media import Cd, Pxe, Usb, UsbNoEltorito, disable_eltorito, medium_kind, prepare_medium
from xcpimg.errors import BootError, UsageError

SOCK = Path("/tmp/xcpimg-vm-test")
BASE_TCG = [
    "qemu-system-x86_64", "-name", "xcpimg-bios-cd", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
    "-smp", "1", "-m", "2048", "-S", "-no-reboot", "-display", "none", "-vga", "std", "-nic", "none",
    "-monitor", "none", "-parallel", "none",
    "-chardev", "socket,id=console,path=/tmp/xcpimg-vm-test/serial.sock,server=on,wait=off",
    "-serial", "chardev:console", "-qmp", "unix:/tmp/xcpimg-vm-test/qmp.sock,server=on,wait=off"]
OVMF = ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/tmp/xcpimg-vm-test/OVMF_VARS.fd"]


def _argv(medium: object, firmware: str = "bios", **kw: object) -> list[str]:
    extra = {"firmware_file": Path("/fw/CODE.fd"), "vars_template": Path("/fw/VARS.fd")} if firmware == "uefi" else {}
    cfg = MachineConfig(medium=medium, firmware=firmware, **extra, **kw)  # type: ignore[arg-type]
    return build_argv(cfg, SOCK, SOCK / "OVMF_VARS.fd" if firmware == "uefi" else None)


def _base(name: str) -> list[str]:
    return [*BASE_TCG[:2], name, *BASE_TCG[3:]]


def test_argv_bios_cd() -> None:
    assert _argv(Cd(Path("/x/a.iso"))) == BASE_TCG + [
        "-drive", "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x/a.iso",
        "-device", "ide-cd,bus=ide.1,drive=cd,bootindex=0"]


def test_argv_uefi_usb() -> None:
    assert _argv(Usb(Path("/x/a.iso")), "uefi") == _base("xcpimg-uefi-usb") + OVMF + [
        "-drive", "if=none,id=stick,format=raw,readonly=on,file=/x/a.iso",
        "-device", "qemu-xhci,id=xhci", "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]


def test_argv_usb_without_eltorito_boots_the_copy() -> None:
    assert _argv(UsbNoEltorito(Path("/w/a.iso")), "uefi") == _base("xcpimg-uefi-usb-noeltorito") + OVMF + [
        "-drive", "if=none,id=stick,format=raw,readonly=on,file=/w/a.iso",
        "-device", "qemu-xhci,id=xhci", "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]


def test_argv_bios_pxe() -> None:
    assert _argv(Pxe(Path("/t/tree"), "pxelinux.0")) == _base("xcpimg-bios-pxe") + [
        "-netdev", "user,id=n0,tftp=/t/tree,bootfile=pxelinux.0",
        "-device", "virtio-net-pci,netdev=n0,bootindex=0"]


def test_argv_uefi_pxe() -> None:
    assert _argv(Pxe(Path("/t/tree"), "EFI/xenserver/grubx64.efi"), "uefi") == _base("xcpimg-uefi-pxe") + OVMF + [
        "-netdev", "user,id=n0,tftp=/t/tree,bootfile=EFI/xenserver/grubx64.efi",
        "-device", "virtio-net-pci,netdev=n0,bootindex=0"]


def test_argv_commas_in_paths_are_escaped() -> None:
    """A comma in a file name is doubled: QEMU reads one file name, never extra options."""
    assert "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x/a.iso,,if=pflash,,format=qcow2" in \
        _argv(Cd(Path("/x/a.iso,if=pflash,format=qcow2")))
    cfg = MachineConfig(medium=Usb(Path("/x/b,c.iso")), firmware="uefi", firmware_file=Path("/fw/CO,DE.fd"),
                        vars_template=Path("/fw/VARS.fd"))
    drives = [a for a in build_argv(cfg, SOCK, SOCK / "V,ARS.fd") if a.startswith("if=")]
    assert [d.rpartition("file=")[2] for d in drives] == [
        "/fw/CO,,DE.fd", "/tmp/xcpimg-vm-test/V,,ARS.fd", "/x/b,,c.iso"]
    argv = _argv(Pxe(Path("/t/a,b"), "pxelinux.0"))
    assert "user,id=n0,tftp=/t/a,,b,bootfile=pxelinux.0" in argv
    assert "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x/a,,b.iso" in _argv(Cd(Path("/x/a,b.iso")))


def test_argv_kvm_memory_bios_file_and_cpu() -> None:
    argv = _argv(Cd(Path("/x/a.iso")), accel="kvm", memory=1024)
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-smp") + 1] == "2" and argv[argv.index("-m") + 1] == "1024"
    argv = _argv(Cd(Path("/x/a.iso")), firmware_file=Path("/fw/bios.bin"), cpu="max,-smap")
    assert argv[argv.index("-bios") + 1] == "/fw/bios.bin" and argv[argv.index("-cpu") + 1] == "max,-smap"
    assert "if=pflash" not in " ".join(argv)


@pytest.mark.parametrize(("field", "value"), [("firmware", "coreboot"), ("accel", "hvf")])
def test_config_rejects_unknown_values(field: str, value: str) -> None:
    with pytest.raises(UsageError, match=field):
        MachineConfig(medium=Cd(Path("/x")), **{field: value})  # type: ignore[arg-type]


# -- boot modes and media kinds ------------------------------------------------------------

def test_boot_modes_are_typed() -> None:
    assert BOOT_MODES == ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb", "bios-pxe", "uefi-pxe")
    assert boot_mode("uefi-usb") == BootMode("uefi", "usb", no_eltorito=True)
    assert boot_mode("uefi-usb").medium == "usb-noeltorito" and boot_mode("bios-usb").medium == "usb"
    assert boot_mode("uefi-pxe") == BootMode("uefi", "pxe") and boot_mode("uefi-pxe").name == "uefi-pxe"
    with pytest.raises(AttributeError):
        boot_mode("bios-cd").firmware = "uefi"  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown boot mode 'bios-floppy'"):
        boot_mode("bios-floppy")


def test_medium_kind() -> None:
    assert [medium_kind(m) for m in ("cd", "usb", "pxe")] == ["cd", "usb", "pxe"]
    assert medium_kind("usb", no_eltorito=True) == "usb-noeltorito"
    with pytest.raises(UsageError, match="--no-eltorito applies to --media usb only"):
        medium_kind("pxe", no_eltorito=True)
    with pytest.raises(UsageError, match="media must be one of"):
        medium_kind("floppy")


def _fake_iso(path: Path, with_eltorito: bool = True) -> bytes:
    data = bytearray(2048 * 20)
    data[16 * 2048:16 * 2048 + 6] = b"\x01CD001"
    if with_eltorito:
        data[17 * 2048:17 * 2048 + 7 + 23] = b"\x00CD001\x01EL TORITO SPECIFICATION"
        data[18 * 2048:18 * 2048 + 6] = b"\xffCD001"
    else:
        data[17 * 2048:17 * 2048 + 6] = b"\xffCD001"
    path.write_bytes(bytes(data))
    return bytes(data)


def test_disable_eltorito_blanks_boot_record_in_a_copy(tmp_path: Path) -> None:
    original = _fake_iso(tmp_path / "a.iso")
    copy = disable_eltorito(tmp_path / "a.iso", tmp_path / "b.iso")
    assert (tmp_path / "a.iso").read_bytes() == original
    changed = copy.read_bytes()
    assert changed[17 * 2048 + 7:17 * 2048 + 39] == b"\0" * 32
    diff = [i for i in range(len(original)) if original[i] != changed[i]]
    assert diff and min(diff) >= 17 * 2048 + 7 and max(diff) < 17 * 2048 + 39


def test_disable_eltorito_refuses_iso_without_boot_record(tmp_path: Path) -> None:
    _fake_iso(tmp_path / "a.iso", with_eltorito=False)
    with pytest.raises(BootError, match="no El Torito"):
        disable_eltorito(tmp_path / "a.iso", tmp_path / "b.iso")


def test_prepare_media(tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    _fake_iso(iso)
    work = tmp_path / "work"
    work.mkdir()
    assert prepare_medium("cd", iso, "bios", work) == Cd(iso, 0)
    assert prepare_medium("usb", iso, "uefi", work) == Usb(iso, 0)
    noet = prepare_medium("usb-noeltorito", iso, "uefi", work)
    assert isinstance(noet, UsbNoEltorito) and noet.image == work / "a.iso" and noet.image.is_file()
    tree = tmp_path / "tree"
    (tree / "EFI/xenserver").mkdir(parents=True)
    (tree / "pxelinux.0").write_bytes(b"x" * 10)
    (tree / "EFI/xenserver/grubx64.efi").write_bytes(b"y" * 5)
    assert prepare_medium("pxe", tree, "bios", work) == Pxe(tree, "pxelinux.0", 15)
    assert prepare_medium("pxe", tree, "uefi", work).qemu_args()[1].endswith("bootfile=EFI/xenserver/grubx64.efi")
    (tree / "pxelinux.0").unlink()
    with pytest.raises(BootError, match=r"has no pxelinux.0 \(the bios network boot program\)"):
        prepare_medium("pxe", tree, "bios", work)
    with pytest.raises(BootError, match="ISO not found"):
        prepare_medium("cd", tree, "bios", work)
