"""Unit tests of the console stage matcher (recorded console text, no QEMU), and of the
probe initrd whose /init prints the init marker."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from pathlib import Path

import pytest

from xcpimg.errors import UsageError
from xcpimg.probe import Entry, build_probe_initrd, newc_archive
from xcpimg.stages import (
    CMDLINE_PREFIX,
    INIT_MARKER,
    STAGES,
    ConsoleWatcher,
    clean,
    parse_cmdline,
    stage_index,
)

# Abridged from a real SeaBIOS/isolinux/menu.c32 -> Xen -> Debian dom0 -> probe initrd boot.
BIOS_BOOT = (
    "\r\nISOLINUX 6.04 20200816  Copyright (C) 1994-2015 H. Peter Anvin et al\r\n"
    "\x1b%@\x1b)0\x1b(B\x1b[0;37;40m\x1b[?25l\x1b[2J\x1b[1;11H\x1b[0;30;44mlqqqk\x1b[2;11H"
    "\x1b[0;1;36;44m   xcpimg bootkit   \x1b[0;31;40m\x1b[18;27HPress [Tab] to edit options"
    "\x1b[20;26H\x1b[0;37;40mAutomatic boot in \x1b[0;1;37;40m5\x1b[0;37;40m seconds..."
    "\x1b[24;1H\x1b[0mLoading /boot/xen.gz... ok\r\n"
    " Xen 4.17.7\r\n"
    "(XEN) Xen version 4.17.7 (Debian 4.17.7+13-g2445b30a44-0+deb12u1) debug=n\r\n"
    "(XEN) Command line: com1=115200,8n1 console=com1,vga dom0_mem=768M,max:768M\r\n"
    "(XEN) *** Serial input to DOM0 (type 'CTRL-a' three times to switch input)\r\n"
    "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\r\n"
    "[   10.273099] Run /init as init process\r\n"
    "\r\n" + INIT_MARKER + "\r\n" + CMDLINE_PREFIX + "console=hvc0 console=tty0 xcpimg-bootkit\r\n"
)

# Abridged from OVMF -> GRUB (menu drawn with cursor moves) -> Xen.
UEFI_BOOT = (
    "BdsDxe: loading Boot0001 \"UEFI QEMU DVD-ROM QM00003 \" from PciRoot(0x0)/Pci(0x1,0x1)\r\n"
    "Welcome to GRUB!\r\n\r\n"
    "\x1b[0m\x1b[30m\x1b[40m\x1b[2J\x1b[01;01H\x1b[0m\x1b[37m\x1b[40m  GNU GRUB  version 2.06-13+deb12u2\r\n"
    "error: no suitable video mode found.\r\n"
    "\x1b[05;:0H *Xen + Debian dom0 + probe initrd   "
    "The highlighted entry will be executed automatically in 5s.   \r\n"
    "(XEN) Xen version 4.17.7 (Debian 4.17.7) debug=n\r\n"
)


class Clock:
    """A fake clock advanced by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed_lines(watcher: ConsoleWatcher, clock: Clock, text: str, step: float = 1.0) -> None:
    for line in text.splitlines(keepends=True):
        clock.now += step
        watcher.feed(line)


def test_bios_boot_reaches_every_stage_in_order_with_times() -> None:
    clock = Clock()
    w = ConsoleWatcher(clock=clock)
    feed_lines(w, clock, BIOS_BOOT)
    assert list(w.reached) == list(STAGES[:4])
    times = [w.reached[s] for s in STAGES[:4]]
    assert times == sorted(times) and times[0] == 2.0
    assert w.failure is None and not w.implied
    assert w.cmdline == "console=hvc0 console=tty0 xcpimg-bootkit"


def test_stage_split_across_chunks_and_escape_sequence_split() -> None:
    w = ConsoleWatcher(clock=Clock())
    for piece in ("[ 0.0] Lin", "ux ver", "sion 6.1.0\r", "\n\x1b[0;3", "7mxcpimg-in", "it: reached\r\n"):
        w.feed(piece)
    assert set(w.reached) == set(STAGES[:4])
    assert w.implied == {"bootloader", "hypervisor"}  # implied by the kernel line
    assert "\x1b" not in w.tail() and "xcpimg-init: reached" in w.tail()


def test_uefi_grub_benign_video_error_is_not_a_failure() -> None:
    clock = Clock()
    w = ConsoleWatcher(clock=clock)
    feed_lines(w, clock, UEFI_BOOT)
    assert w.failure is None
    assert list(w.reached) == ["bootloader", "hypervisor"]


def test_enter_prompts_reported_once_per_line_and_only_in_bootloader() -> None:
    w = ConsoleWatcher(clock=Clock())
    assert w.feed("boot: ").prompts == ["isolinux"]
    assert w.feed(" ").prompts == []          # same unfinished line: not again
    assert w.feed("\r\n").prompts == []       # the line completes: still the same prompt
    assert w.feed("  GNU GRUB  version 2.06\r\n").prompts == ["grub"]
    w.feed("(XEN) Xen version 4.17.7\r\n")
    assert w.feed("Automatic boot in 5 seconds...\r\n").prompts == []


@pytest.mark.parametrize(("text", "reason", "line"), [
    ("[    1.2] Kernel panic - not syncing: VFS: Unable to mount root fs\n", "kernel panic",
     "Kernel panic - not syncing: VFS: Unable to mount root fs"),
    ("Boot failed: not a bootable disk\n", "firmware could not boot the media", None),
    ("error: file `/boot/xen.gz' not found.\n", "GRUB file not found", None),
    ("error: no such device: /install.img.\n", "GRUB found no such device", None),
    ("error: you need to load the kernel first.\n", "GRUB error", None),
    ("grub rescue> ", "GRUB rescue prompt", None),         # a prompt: no newline ever comes
    ("Failed to load ldlinux.c32\n", "isolinux could not load a module", None),
    ("Loading /boot/xen.gz... failed!\n", "mboot.c32 could not load a file", None),
    ("(XEN) Panic on CPU 0:\n", "Xen panic", "Panic on CPU 0:"),
    ("(XEN) Hardware Dom0 crashed: rebooting machine in 5 seconds.\n", "Xen dom0 crashed",
     "Hardware Dom0 crashed: rebooting machine in 5 seconds."),
    ("KVM internal error. Suberror: 1\n", "KVM failed", None),
    ("BdsDxe: No bootable option or device was found.\n", "firmware found no bootable device",
     "No bootable option or device was found."),
    ("a command-line.     *Xen + Debian dom0    The highlighted entry will be executed automatically"
     " in 5s.     error: file `/boot/xen.gz' not found.\n", "GRUB file not found",
     "error: file `/boot/xen.gz' not found."),
])
def test_failure_patterns(text: str, reason: str, line: str | None) -> None:
    w = ConsoleWatcher(clock=Clock())
    update = w.feed("some earlier line\r\n" + text)
    assert update.failure is not None and w.failure is update.failure
    assert w.failure.reason == reason
    assert w.failure.line == (line or text.strip())
    assert str(w.failure) == f"{reason}: {line or text.strip()}"


def test_real_grub_error_on_same_line_as_benign_one_still_fails() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("error: no suitable video mode found.   error: file `/boot/vmlinuz' not found.\n")
    assert w.failure is not None and w.failure.line == "error: file `/boot/vmlinuz' not found."


def test_bootloader_failure_patterns_stop_applying_once_xen_runs() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("(XEN) Xen version 4.17.7\n[    2.0] Failed to load firmware blob\n")
    assert w.failure is None
    w.feed("[    3.0] Kernel panic - not syncing: Attempted to kill init!\n")
    assert w.failure is not None and w.failure.reason == "kernel panic"


def test_only_first_failure_is_kept_and_fail_records_external_reason() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.fail("timed out", "")
    w.feed("Kernel panic - not syncing: x\n")
    assert w.failure is not None and w.failure.reason == "timed out"


def test_cmdline_needs_a_complete_line() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed(INIT_MARKER + "\n" + CMDLINE_PREFIX + "a b")
    assert w.has_reached("init") and w.cmdline is None
    w.feed(" c\r\n")
    assert w.cmdline == "a b c"


def test_parse_cmdline_and_clean() -> None:
    assert parse_cmdline(BIOS_BOOT) == "console=hvc0 console=tty0 xcpimg-bootkit"
    assert parse_cmdline("no marker here\n") is None
    assert clean("\x1b[1;1H\x1b[0;37;40mab\x1b(Bc\x07") == "abc"


def test_tail_squeezes_long_lines() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("x" * 1000 + "END\n" + "a     b\n")
    lines = w.tail().splitlines()
    assert lines[0].endswith("END") and len(lines[0]) <= 203
    assert lines[1] == "a  b"


def test_stage_index_rejects_unknown_stage() -> None:
    assert stage_index("kernel") == 2
    with pytest.raises(ValueError, match="unknown boot stage 'dom0'"):
        stage_index("dom0")


# -- the probe initrd -------------------------------------------------------------------------

def test_newc_archive_extracts_with_gnu_cpio(tmp_path: Path) -> None:
    entries = [Entry("sub/file", stat.S_IFREG | 0o640, b"hello\n"), Entry("sub", stat.S_IFDIR | 0o755),
               Entry("link", stat.S_IFLNK | 0o777, b"sub/file")]
    data = newc_archive(entries, 1704067200)
    assert len(data) % 512 == 0 and data.startswith(b"070701")
    assert data == newc_archive(list(reversed(entries)), 1704067200)  # order-independent
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data, cwd=out, check=True)
    assert (out / "sub/file").read_bytes() == b"hello\n"
    assert stat.S_IMODE((out / "sub/file").stat().st_mode) == 0o640
    assert (out / "sub/file").stat().st_mtime == 1704067200
    assert os.readlink(out / "link") == "sub/file"


@pytest.mark.timeout(300)
def test_probe_initrd_is_reproducible_and_prints_the_marker(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    build_probe_initrd(tmp_path / "a.img")
    build_probe_initrd(tmp_path / "b.img")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        build_probe_initrd(tmp_path / "a.img")
    raw = gzip.decompress((tmp_path / "a.img").read_bytes())
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=raw, capture_output=True, check=True).stdout
    lines = listing.decode().splitlines()
    names = [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines]
    assert names == sorted(names) and {"init", "bin/busybox", "bin/sh", "dev/console"} <= set(names)
    assert all(" root     root " in ln and "Jan  1  2024" in ln for ln in lines)
    assert any(ln.startswith("crw-------") and "5,   1" in ln and ln.endswith("dev/console") for ln in lines)
    out = tmp_path / "root"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=raw, cwd=out, check=True,
                   env={**os.environ, "PATH": "/usr/bin:/bin"})
    init = (out / "init").read_text()
    assert INIT_MARKER in init and CMDLINE_PREFIX in init and "/dev/hvc0" in init and "poweroff -f" in init
    # The script itself, run by the host's sh with the marker lines sent to a file.
    script = init.replace("/dev/hvc0 /dev/console", str(tmp_path / "tty"))
    script = "\n".join(ln for ln in script.splitlines()
                       if not ln.startswith(("mount ", "poweroff", "sleep", "export PATH")))
    script = script.replace("cat /proc/cmdline", "echo root=x console=hvc0").replace('[ -c "$tty" ]', "true")
    subprocess.run(["sh", "-c", script], check=True)
    printed = (tmp_path / "tty").read_text()
    assert f"{INIT_MARKER}\n{CMDLINE_PREFIX}root=x console=hvc0\n" in printed
    assert parse_cmdline(printed) == "root=x console=hvc0"


@pytest.mark.parametrize("line", [
    "error: file '/EFI/xenserver/x86_64-efi/ext2.mod' not found.",   # insmod of a module not built in
    "error: disk `hd0,msdos2' not found.",
    "error: can't find command `background_image'.",
])
def test_grub_errors_it_recovers_from_are_warnings(line: str) -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("Welcome to GRUB!\r\n" + line + "\r\n  GNU GRUB  version 2.06\r\n")
    assert w.failure is None
    assert w.warnings == [line]
    w.feed("(XEN) Xen version 4.17.7\r\n[    1.0] error: nothing to do with GRUB\r\n")
    assert w.warnings == [line]  # once Xen runs, "error:" lines are not GRUB's


def test_kernel_cmdline_comes_from_the_kernel_not_from_xen() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("(XEN) Command line: dom0_mem=max:8192M com1=115200,8n1 console=com1,vga\r\n")
    assert w.cmdline is None
    w.feed("[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org)\r\n"
           "[    0.000000] Command line: console=hvc0 console=tty0 no-repo-gpgcheck\r\n"
           "[    0.120000] Kernel command line: something else\r\n")
    assert w.cmdline == w.kernel_cmdline == "console=hvc0 console=tty0 no-repo-gpgcheck"
    # the init marker's /proc/cmdline, when printed, is what init saw: it wins
    w.feed(INIT_MARKER + "\r\n" + CMDLINE_PREFIX + "console=hvc0 console=tty0 no-repo-gpgcheck x\r\n")
    assert w.cmdline == "console=hvc0 console=tty0 no-repo-gpgcheck x"
    assert parse_cmdline("(XEN) Command line: a\n[ 0.0] Command line: b c\n") == "b c"


# Abridged from a boot of an xcpimg-built 8.3 install.img (fixture: Debian's systemd 252 as
# PID 1, the fixture host-installer's preinit starting an installer per console with agetty).
SYSTEMD_INSTALLER_BOOT = (
    "(XEN) Xen version 4.17.7 (Debian 4.17.7+13-g2445b30a44-0+deb12u1) debug=y\r\n"
    "[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org)\r\n"
    "[    0.000000] Command line: console=hvc0 console=tty0 no-repo-gpgcheck\r\n"
    "[    9.863211] Run /init as init process\r\n"
    "[   10.412345] systemd[1]: systemd 252.31-1~deb12u1 running in system mode (+PAM +AUDIT +SELINUX"
    " +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS)\r\n"
    "[   10.501122] systemd[1]: Detected virtualization xen.\r\n"
    "[   10.530000] systemd[1]: Hostname set to <localhost>.\r\n"
    "\x1b[?25l\x1b[1;1H\x1b[0;37;44m\x1b[2J\x1b[1;1HWelcome to XCP-ng - Version 8.3 (Kernel 6.1.0-28-amd64)"
    "\x1b[8;20H\x1b[0;30;47mSelect Keymap\x1b[10;22HPlease select the keymap you would like to use:"
)


def test_systemd_boot_reaches_init_then_the_installer_screen() -> None:
    clock = Clock()
    w = ConsoleWatcher(clock=clock)
    feed_lines(w, clock, SYSTEMD_INSTALLER_BOOT)
    assert list(w.reached) == list(STAGES)
    assert w.reached["init"] < w.reached["installer"]
    assert w.implied == {"bootloader"}
    assert w.installer == ("XCP-ng", "8.3", "6.1.0-28-amd64")
    assert w.cmdline == "console=hvc0 console=tty0 no-repo-gpgcheck"
    assert w.failure is None


def test_installer_stage_needs_the_welcome_line() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("[   10.4] systemd[1]: systemd 252.31-1~deb12u1 running in system mode (+PAM)\r\n"
           "[   12.0] systemd[1]: Starting installer.service...\r\nWelcome to GRUB!\r\n")
    assert w.has_reached("init") and not w.has_reached("installer")
    assert w.deepest() == "init"


def test_installer_screen_cut_by_a_chunk_is_read_whole() -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("\x1b[2J\x1b[1;1HWelcome to XCP-ng - Version 8")
    assert not w.has_reached("installer")  # "8" may be the start of "8.3"
    w.feed(".3 (Kernel 4.19.0+1)\x1b[K")
    assert w.has_reached("installer") and w.installer == ("XCP-ng", "8.3", "4.19.0+1")
    w2 = ConsoleWatcher(clock=Clock())
    w2.feed("Welcome to XCP-ng - Version 8.2.1\r\n")  # a screen without the kernel part, line complete
    assert w2.installer == ("XCP-ng", "8.2.1", "")


@pytest.mark.parametrize("cut", ["Version 8.3", "Version 8.3 (Ker", "Version 8.3 (Kernel 6.1.0-5"])
def test_installer_screen_waits_for_the_kernel_part(cut: str) -> None:
    w = ConsoleWatcher(clock=Clock())
    w.feed("Welcome to XCP-ng - " + cut)
    assert not w.has_reached("installer")
    w.feed("Version 8.3 (Kernel 6.1.0-57-amd64)"[len(cut):] + "\x1b[K")
    assert w.installer == ("XCP-ng", "8.3", "6.1.0-57-amd64")
