"""Tests of the QEMU machine: argv per firmware/media, OVMF discovery, accel choice, image
helpers (no QEMU), start-up errors (QEMU runs briefly), and ``boot``-marked tests that
boot the hand-made bootkit ISO to init in all four modes and broken variants to a named
failure (slow: about 15-60 s per boot under TCG).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from xcpimg import qemu
from xcpimg.errors import BootError, UsageError
from xcpimg.qemu import MachineConfig, build_argv, choose_accel, cpu_has_virt, disable_eltorito, find_ovmf

SOCK = Path("/tmp/xcpimg-vm-test")


def _opt_values(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


# -- argv ------------------------------------------------------------------------------------

def test_argv_bios_cd() -> None:
    argv = build_argv(MachineConfig(image=Path("/x/a.iso")), SOCK, None)
    assert argv[0] == "qemu-system-x86_64"
    assert _opt_values(argv, "-accel") == ["tcg"] and _opt_values(argv, "-cpu") == ["qemu64"]
    assert _opt_values(argv, "-smp") == ["1"] and _opt_values(argv, "-m") == ["2048"]
    assert {"-S", "-no-reboot"} <= set(argv) and "-nographic" not in argv
    assert _opt_values(argv, "-vga") == ["std"] and _opt_values(argv, "-display") == ["none"]
    assert _opt_values(argv, "-chardev") == [
        "socket,id=console,path=/tmp/xcpimg-vm-test/serial.sock,server=on,wait=off"]
    assert _opt_values(argv, "-serial") == ["chardev:console"]
    assert _opt_values(argv, "-qmp") == ["unix:/tmp/xcpimg-vm-test/qmp.sock,server=on,wait=off"]
    assert _opt_values(argv, "-drive") == ["if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x/a.iso"]
    assert _opt_values(argv, "-device") == ["ide-cd,bus=ide.1,drive=cd,bootindex=0"]
    assert "-bios" not in argv and "if=pflash" not in " ".join(argv)


def test_argv_file_names_never_become_options() -> None:
    """A comma in a file name is doubled: QEMU reads one file name, not extra drive options."""
    argv = build_argv(MachineConfig(image=Path("/x/a.iso,if=pflash,format=qcow2")), SOCK, None)
    assert _opt_values(argv, "-drive") == [
        "if=none,id=cd,media=cdrom,format=raw,readonly=on,file=/x/a.iso,,if=pflash,,format=qcow2"]
    cfg = MachineConfig(image=Path("/x/b,c.iso"), firmware="uefi", media="usb",
                        firmware_file=Path("/fw/CO,DE.fd"), vars_template=Path("/fw/VARS.fd"))
    assert [d.rpartition("file=")[2] for d in _opt_values(build_argv(cfg, SOCK, SOCK / "V,ARS.fd"), "-drive")] == [
        "/fw/CO,,DE.fd", "/tmp/xcpimg-vm-test/V,,ARS.fd", "/x/b,,c.iso"]


def test_argv_uefi_usb_with_vars_copy_and_kvm() -> None:
    cfg = MachineConfig(image=Path("/x/a.iso"), firmware="uefi", media="usb", accel="kvm", memory=1024,
                        firmware_file=Path("/fw/CODE.fd"), vars_template=Path("/fw/VARS.fd"))
    argv = build_argv(cfg, SOCK, SOCK / "OVMF_VARS.fd")
    assert _opt_values(argv, "-drive") == [
        "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
        "if=pflash,format=raw,unit=1,file=/tmp/xcpimg-vm-test/OVMF_VARS.fd",
        "if=none,id=stick,format=raw,readonly=on,file=/x/a.iso"]
    assert _opt_values(argv, "-device") == [
        "qemu-xhci,id=xhci", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]
    assert _opt_values(argv, "-accel") == ["kvm"] and _opt_values(argv, "-cpu") == ["host"]
    assert _opt_values(argv, "-m") == ["1024"]


def test_argv_bios_file_and_cpu_override() -> None:
    cfg = MachineConfig(image=Path("/x/a.iso"), firmware_file=Path("/fw/bios.bin"), cpu="max,-smap")
    argv = build_argv(cfg, SOCK, None)
    assert _opt_values(argv, "-bios") == ["/fw/bios.bin"] and _opt_values(argv, "-cpu") == ["max,-smap"]


@pytest.mark.parametrize(("field", "value"),
                         [("firmware", "coreboot"), ("media", "floppy"), ("accel", "hvf")])
def test_config_rejects_unknown_values(field: str, value: str) -> None:
    with pytest.raises(UsageError, match=field):
        MachineConfig(image=Path("/x"), **{field: value})


# -- OVMF discovery --------------------------------------------------------------------------

def _descriptor(tmp: Path, name: str, code: Path, vars_: Path, features: list[str]) -> None:
    (tmp / name).write_text(json.dumps({
        "interface-types": ["uefi"], "features": features,
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": "raw"},
                    "nvram-template": {"filename": str(vars_), "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}]}))


def test_find_ovmf_prefers_plain_descriptor(tmp_path: Path) -> None:
    files = {n: tmp_path / n for n in ("sec.fd", "secvars.fd", "code.fd", "vars.fd")}
    for f in files.values():
        f.write_bytes(b"x")
    desc = tmp_path / "d"
    desc.mkdir()
    _descriptor(desc, "40-secure.json", files["sec.fd"], files["secvars.fd"], ["secure-boot", "requires-smm"])
    _descriptor(desc, "60-plain.json", files["code.fd"], files["vars.fd"], ["acpi-s3"])
    (desc / "10-broken.json").write_text("{not json")
    assert find_ovmf([desc], known=()) == (files["code.fd"], files["vars.fd"])


def test_find_ovmf_falls_back_to_known_paths_then_fails(tmp_path: Path) -> None:
    code, vars_ = tmp_path / "C.fd", tmp_path / "V.fd"
    code.write_bytes(b"x")
    vars_.write_bytes(b"x")
    known = [(str(tmp_path / "missing.fd"), str(vars_)), (str(code), str(vars_))]
    assert find_ovmf([tmp_path / "nodir"], known=known) == (code, vars_)
    with pytest.raises(BootError, match="OVMF .* not found"):
        find_ovmf([tmp_path / "nodir"], known=known[:1])


def test_find_ovmf_on_this_host() -> None:
    code, vars_ = find_ovmf()
    assert code.is_file() and vars_.is_file() and "secboot" not in code.name


# -- accel -----------------------------------------------------------------------------------

CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 lm\n"
CPUINFO_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae vmx sse sse2 lm\n"


class Probe:
    def __init__(self, answer: bool) -> None:
        self.answer, self.calls = answer, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_cpu_has_virt() -> None:
    assert not cpu_has_virt(CPUINFO_PLAIN)
    assert cpu_has_virt(CPUINFO_VMX) and cpu_has_virt(CPUINFO_PLAIN.replace("sse ", "svm sse "))
    assert not cpu_has_virt("model name\t: vmx svm in a name\n")


def test_accel_without_virt_flags_is_tcg_without_probing(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XCPIMG_ACCEL", raising=False)
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    probe = Probe(True)
    assert choose_accel(CPUINFO_PLAIN, probe, str(dev)) == "tcg" and probe.calls == 0


def test_accel_kvm_only_when_probe_guest_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XCPIMG_ACCEL", raising=False)
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    assert choose_accel(CPUINFO_VMX, Probe(True), str(dev)) == "kvm"
    failing = Probe(False)
    assert choose_accel(CPUINFO_VMX, failing, str(dev)) == "tcg" and failing.calls == 1
    assert choose_accel(CPUINFO_VMX, Probe(True), str(tmp_path / "no-such-kvm")) == "tcg"


def test_accel_forced_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XCPIMG_ACCEL", "kvm")
    assert choose_accel(CPUINFO_PLAIN, Probe(False)) == "kvm"
    monkeypatch.setenv("XCPIMG_ACCEL", "fast")
    with pytest.raises(UsageError, match="XCPIMG_ACCEL"):
        choose_accel()


def test_accel_on_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """No vmx/svm or no usable /dev/kvm: TCG. Otherwise the probe guest decides: this project's
    machines have a /dev/kvm whose guests die (REFERENCE section 3), so TCG there too."""
    monkeypatch.delenv("XCPIMG_ACCEL", raising=False)
    if not cpu_has_virt(Path("/proc/cpuinfo").read_text()) or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert choose_accel() == "tcg"
    else:
        assert choose_accel() == ("kvm" if qemu.kvm_probe() else "tcg")


def test_timeouts_scale_with_accel() -> None:
    assert qemu.default_timeout("init", "tcg") == qemu.TCG_FACTOR * qemu.default_timeout("init", "kvm")
    assert qemu.default_timeout("bootloader", "kvm") < qemu.default_timeout("init", "kvm")


# -- images and screens ----------------------------------------------------------------------

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


def test_ppm_to_png_keeps_pixels() -> None:
    pixels = bytes(range(2 * 3 * 3))  # 2 wide, 3 high
    png = qemu.ppm_to_png(b"P6\n# comment\n2 3\n255\n" + pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2, 3)
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    raw = zlib.decompress(png[41:41 + idat_len])
    assert raw == b"".join(b"\0" + pixels[y * 6:(y + 1) * 6] for y in range(3))
    with pytest.raises(ValueError):
        qemu.ppm_to_png(b"P5\n2 3\n255\n" + pixels)


def test_vga_text_decodes_rows() -> None:
    screen = "Booting from DVD/CD...".ljust(80) + "Failed to load ldlinux.c32".ljust(80) + " " * 80
    memory = b"".join(bytes([ord(c), 0x07]) for c in screen)
    assert qemu.vga_text(memory) == "Booting from DVD/CD...\nFailed to load ldlinux.c32"


# -- the watch loop, against a scripted fake machine -----------------------------------------

class FakeMachine:
    """Stands in for Machine in qemu._watch: scripted console chunks, recorded keystrokes."""

    def __init__(self, tmp: Path, chunks: list[str | None], firmware: str = "bios", stderr: str = "",
                 vga: str = "", exits_after_script: bool = False) -> None:
        self.cfg = MachineConfig(image=tmp / "a.iso", firmware=firmware)
        self.logdir = tmp
        self.serial_log, self.stderr_log, self.argv_file = tmp / "s.log", tmp / "e.log", tmp / "argv"
        self.started_at = __import__("time").monotonic()
        self.chunks, self.sent, self.stderr, self.vga = list(chunks), [], stderr, vga
        self.exits = exits_after_script
        self.proc = type("P", (), {"returncode": 0})()
        self.dumps: list[Path] = []

    def read(self, timeout: float) -> str | None:
        return self.chunks.pop(0) if self.chunks else ""

    def alive(self) -> bool:
        return bool(self.chunks) or not self.exits

    def drain(self) -> str:
        return ""

    def send(self, text: str) -> None:
        self.sent.append(text)

    def new_stderr(self) -> str:
        out, self.stderr = self.stderr, ""
        return out

    def vga_text(self) -> str:
        return self.vga

    def screendump(self, path: Path) -> Path:
        self.dumps.append(path)
        return path


def test_watch_sends_enter_at_menus_and_stops_at_init(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["ISOLINUX 6.04\r\n", "boot: ", "", "(XEN) Xen version 4.17\r\n",
                               "Automatic boot in 5 seconds\r\n", "[0.0] Linux version 6.1\r\n",
                               "xcpimg-init: reached\r\nxcpimg-cmdline: a b\r\n", "never read"])
    seen: list[str] = []
    result = qemu._watch(m, "init", 30, lambda stage, _t: seen.append(stage))  # type: ignore[arg-type]
    assert result.ok and result.cmdline == "a b" and seen == ["bootloader", "hypervisor", "kernel", "init"]
    assert m.sent == ["\r"]            # at isolinux's prompt; not again once Xen runs
    assert m.chunks == ["never read"] and m.dumps == []


def test_watch_failure_names_reason_and_takes_screendump(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["Welcome to GRUB!\r\n", "error: file `/boot/xen.gz' not found.\r\n"],
                    firmware="uefi")
    with pytest.raises(qemu.BootFailure) as err:
        qemu._watch(m, "init", 30, None)  # type: ignore[arg-type]
    assert err.value.result.reason == "GRUB file not found: error: file `/boot/xen.gz' not found."
    assert "stages reached: bootloader" in str(err.value) and "Welcome to GRUB!" in str(err.value)
    assert m.dumps == [tmp_path / "screen.png"] and err.value.result.screenshot == tmp_path / "screen.png"


def test_watch_kvm_internal_error_on_stderr_fails(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, [""] * 5, stderr="KVM internal error. Suberror: 1\nemulation failure\n")
    with pytest.raises(qemu.BootFailure, match="KVM failed: KVM internal error. Suberror: 1"):
        qemu._watch(m, "init", 30, None)  # type: ignore[arg-type]


def test_watch_reads_bios_failures_from_vga_text(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, [""] * 40, vga="ISOLINUX 6.04\n\nFailed to load ldlinux.c32\nBoot failed")
    m.started_at -= 10  # the VGA screen is looked at every 3 s
    with pytest.raises(qemu.BootFailure) as err:
        qemu._watch(m, "init", 60, None)  # type: ignore[arg-type]
    assert err.value.result.reason == "isolinux could not load a module (VGA): Failed to load ldlinux.c32"
    assert "--- VGA screen ---" in str(err.value) and (tmp_path / "vga.txt").is_file()


def test_watch_qemu_exit_before_stage_and_timeout(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["(XEN) Xen version 4.17\r\n"], exits_after_script=True)
    with pytest.raises(qemu.BootFailure, match=r"QEMU exited \(code 0\) before 'init'"):
        qemu._watch(m, "init", 30, None)  # type: ignore[arg-type]
    m = FakeMachine(tmp_path, ["ISOLINUX 6.04\r\n"])
    with pytest.raises(qemu.BootFailure, match="timed out after 0.5 s waiting for 'kernel'"):
        qemu._watch(m, "kernel", 0.5, None)  # type: ignore[arg-type]


# -- start-up errors (QEMU may run briefly) --------------------------------------------------

def _no_vm_left() -> None:
    out = subprocess.run(["pgrep", "-f", "xcpimg-vm-"], capture_output=True, text=True).stdout
    mine = [p for p in out.split() if p.isdigit() and int(p) in qemu._LIVE]
    assert not mine and not qemu._LIVE


def test_missing_iso_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(BootError) as err:
        qemu.boot(tmp_path / "nope.iso", "bios", "cd", logdir=tmp_path / "logs")
    assert str(err.value) == f"ISO not found: {tmp_path / 'nope.iso'}"
    assert not (tmp_path / "logs").exists()


def test_bad_firmware_path_is_one_clear_line(tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    _fake_iso(iso)
    with pytest.raises(BootError) as err:
        qemu.boot(iso, "uefi", "cd", logdir=tmp_path / "logs", firmware_file=tmp_path / "OVMF_NOPE.fd")
    assert str(err.value) == f"firmware file not found: {tmp_path / 'OVMF_NOPE.fd'}"
    assert not (tmp_path / "logs").exists()


def test_qemu_that_cannot_start_gives_its_reason(tmp_path: Path) -> None:
    iso = tmp_path / "a.iso"
    _fake_iso(iso)
    bad = tmp_path / "bios.bin"
    bad.write_bytes(b"not a bios")  # QEMU refuses a BIOS image whose size is not a multiple of 64 KiB
    with pytest.raises(BootError) as err:
        qemu.boot(iso, "bios", "cd", logdir=tmp_path / "logs", firmware_file=bad, accel="tcg")
    message = str(err.value)
    assert message.startswith("QEMU could not start: ") and "\n" not in message
    assert "bios" in message.lower()
    assert (tmp_path / "logs" / "qemu-argv.txt").read_text().startswith("/")
    _no_vm_left()


def test_cli_missing_iso(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    qemu.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "x.iso"), "--firmware", "uefi", "--media", "usb",
                              "--until", "kernel", "--timeout", "30", "--accel", "tcg"])
    assert (args.firmware, args.media, args.until, args.timeout) == ("uefi", "usb", "kernel", 30.0)
    with pytest.raises(BootError, match="ISO not found"):
        qemu.command(args)


# -- real boots (slow) -----------------------------------------------------------------------

MODES = ["bios-cd", "bios-usb", "uefi-cd", "uefi-usb"]


@pytest.fixture(scope="session")
def bootkit_iso(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Build a bootkit ISO variant once per run (shared across xdist workers)."""
    from bootkit import build_bootkit_iso

    from xcpimg.pytest_plugin import shared_build

    def get(variant: str) -> Path:
        def build(out: Path) -> None:
            build_bootkit_iso(out, variant)
        return shared_build(tmp_path_factory, f"bootkit-{variant}.iso", build)
    return get


@pytest.mark.boot
@pytest.mark.parametrize("mode", MODES)
def test_boot_bootkit_to_init(bootkit_iso, mode: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bootkit import DOM0_MARKER
    firmware, media = mode.split("-")
    result = qemu.boot(bootkit_iso("good"), firmware, media, until="init", logdir=tmp_path)
    assert result.ok and list(result.reached) == ["bootloader", "hypervisor", "kernel", "init"]
    assert result.cmdline is not None and DOM0_MARKER in result.cmdline.split()
    assert "console=hvc0" in result.cmdline.split()
    assert result.reached["bootloader"] < result.reached["hypervisor"] < result.reached["kernel"]
    assert "xcpimg-init: reached" in result.serial_log.read_text(errors="replace")
    assert result.screenshot is None and result.argv_file.is_file()
    _no_vm_left()


@pytest.mark.boot
def test_boot_uefi_usb_through_hybrid_partition(bootkit_iso, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bootkit import GRUB_CMDPATH_PREFIX
    iso = bootkit_iso("good")
    result = qemu.boot(iso, "uefi", "usb", until="kernel", logdir=tmp_path, no_eltorito=True)
    assert result.ok
    log = result.serial_log.read_text(errors="replace")
    assert f"{GRUB_CMDPATH_PREFIX}(hd0,msdos2)" in log  # booted via MBR partition 2, not El Torito
    _no_vm_left()


@pytest.mark.boot
def test_boot_stops_at_requested_stage(bootkit_iso, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = qemu.boot(bootkit_iso("good"), "bios", "cd", until="hypervisor", logdir=tmp_path)
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
    firmware, media = mode.split("-")
    with pytest.raises(qemu.BootFailure) as err:
        qemu.boot(bootkit_iso(variant), firmware, media, until="init", logdir=tmp_path, timeout=120)
    result = err.value.result
    assert result.reason == reason and reason in str(err.value)
    assert result.seconds < 60, f"took {result.seconds} s to fail"
    assert result.screenshot is not None and result.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.serial_log.is_file() and result.stderr_log.is_file()
    assert "-no-reboot" in result.argv_file.read_text()
    _no_vm_left()
