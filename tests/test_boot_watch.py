"""The watch loop against a scripted fake machine and a fake clock: stages, Enter at
bootloader prompts, failures (console, QEMU stderr, VGA text), and per-stage budgets.
No QEMU runs; a test that waits does so on the fake clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from xcpimg.boot import BootFailure
from xcpimg.boot.machine import MachineConfig
from xcpimg.boot.media import Cd, Pxe
from xcpimg.boot.watch import STAGE_BUDGETS, TCG_FACTOR, stage_budgets, watch
from xcpimg.stages import STAGES, ConsoleWatcher

BUDGETS = {"bootloader": 30.0, "hypervisor": 40.0, "kernel": 30.0, "init": 80.0, "installer": 120.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMachine:
    """Stands in for Machine: scripted console chunks (each read takes *step* seconds of the
    fake clock; ``("wait", S)`` lets S seconds pass in silence), recorded keystrokes."""

    def __init__(self, tmp: Path, chunks: list[object], firmware: str = "bios", stderr: str = "",
                 vga: str = "", exits_after_script: bool = False, medium: object = None,
                 step: float = 0.25) -> None:
        self.cfg = MachineConfig(medium=medium or Cd(tmp / "a.iso"), firmware=firmware)  # type: ignore[arg-type]
        self.logdir = tmp
        self.serial_log, self.stderr_log, self.argv_file = tmp / "s.log", tmp / "e.log", tmp / "argv"
        self.clock = Clock()
        self.started_at = self.clock.now
        self.chunks, self.sent, self.stderr, self.vga = list(chunks), [], stderr, vga
        self.exits, self.step = exits_after_script, step
        self.dumps: list[Path] = []

    def read(self, timeout: float) -> str | None:
        if self.chunks and isinstance(self.chunks[0], tuple):
            _, seconds = self.chunks.pop(0)
            self.clock.now += seconds
            return ""
        self.clock.now += self.step
        return self.chunks.pop(0) if self.chunks else ""  # type: ignore[return-value]

    def alive(self) -> bool:
        return bool(self.chunks) or not self.exits

    def exit_code(self) -> int | None:
        return 0 if not self.alive() else None

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


def _watch(m: FakeMachine, until: str = "init", budgets: dict[str, float] | None = None,
           **kw: object) -> object:
    return watch(m, until, budgets or BUDGETS, clock=m.clock, **kw)  # type: ignore[arg-type]


def test_watch_sends_enter_at_menus_and_stops_at_init(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["ISOLINUX 6.04\r\n", "boot: ", "", "(XEN) Xen version 4.17\r\n",
                               "Automatic boot in 5 seconds\r\n", "[0.0] Linux version 6.1\r\n",
                               "xcpimg-init: reached\r\nxcpimg-cmdline: a b\r\n", "never read"])
    seen: list[str] = []
    result = _watch(m, on_stage=lambda stage, _t: seen.append(stage))
    assert result.ok and result.cmdline == "a b" and seen == ["bootloader", "hypervisor", "kernel", "init"]  # type: ignore[attr-defined]
    assert result.reached == {"bootloader": 0.25, "hypervisor": 1.0, "kernel": 1.5, "init": 1.75}  # type: ignore[attr-defined]
    assert m.sent == ["\r"]            # at isolinux's prompt; not again once Xen runs
    assert m.chunks == ["never read"] and m.dumps == []


def test_watch_failure_names_reason_and_takes_screendump(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["Welcome to GRUB!\r\n", "error: file `/boot/xen.gz' not found.\r\n"],
                    firmware="uefi")
    with pytest.raises(BootFailure) as err:
        _watch(m)
    assert err.value.result.reason == "GRUB file not found: error: file `/boot/xen.gz' not found."
    assert "stages reached: bootloader" in str(err.value) and "Welcome to GRUB!" in str(err.value)
    assert m.dumps == [tmp_path / "screen.png"] and err.value.result.screenshot == tmp_path / "screen.png"


def test_watch_kvm_internal_error_on_stderr_fails(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, [""] * 5, stderr="KVM internal error. Suberror: 1\nemulation failure\n")
    with pytest.raises(BootFailure, match="KVM failed: KVM internal error. Suberror: 1"):
        _watch(m)


def test_watch_reads_bios_failures_from_vga_text(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, [""] * 40, vga="PXELINUX 6.04 PXE\n\nFailed to load ldlinux.c32\nBoot failed")
    with pytest.raises(BootFailure) as err:
        _watch(m)
    assert err.value.result.reason == "isolinux could not load a module (VGA): Failed to load ldlinux.c32"
    assert "--- VGA screen ---" in str(err.value) and (tmp_path / "vga.txt").is_file()
    assert err.value.result.seconds < 5  # the screen is looked at every 3 s


def test_watch_qemu_exit_before_stage(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["(XEN) Xen version 4.17\r\n"], exits_after_script=True)
    with pytest.raises(BootFailure, match=r"QEMU exited \(code 0\) before 'init'"):
        _watch(m)


def test_watch_cap_bounds_the_whole_boot(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, ["ISOLINUX 6.04\r\n"])
    with pytest.raises(BootFailure, match="timed out after 5 s waiting for 'kernel'") as err:
        _watch(m, "kernel", cap=5)
    assert err.value.result.stalled == "hypervisor" and 5 < err.value.result.seconds < 5.5


# -- per-stage budgets -----------------------------------------------------------------------

def test_hung_bootloader_fails_after_its_stage_budget(tmp_path: Path) -> None:
    """A bootloader that never starts Xen fails once the hypervisor budget after the
    bootloader is spent: not after the sum of all budgets."""
    m = FakeMachine(tmp_path, [("wait", 4.0), "Welcome to GRUB!\r\n"], firmware="uefi")
    with pytest.raises(BootFailure) as err:
        _watch(m)
    result = err.value.result
    assert result.stalled == "hypervisor" and result.reached == {"bootloader": 4.25}
    assert result.reason == "timed out: no 'hypervisor' within 40 s after 'bootloader' (reached at 4.2 s)"
    assert 44.25 < result.seconds <= 44.75
    assert "stages reached: bootloader 4.2s" in str(err.value) and m.dumps


def test_silent_firmware_fails_after_the_bootloader_budget(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path, [], firmware="uefi")
    with pytest.raises(BootFailure) as err:
        _watch(m)
    assert err.value.result.reason == "timed out: no 'bootloader' within 30 s after the VM started"
    assert err.value.result.stalled == "bootloader" and 30 < err.value.result.seconds <= 30.5


def test_each_stage_budget_counts_from_the_previous_stage(tmp_path: Path) -> None:
    """Slow but steady: every stage arrives within its own budget, the total exceeds any one."""
    m = FakeMachine(tmp_path, [("wait", 25.0), "Welcome to GRUB!\r\n", ("wait", 35.0),
                               "(XEN) Xen version 4.17\r\n", ("wait", 25.0), "Linux version 6.1\r\n",
                               ("wait", 75.0), "xcpimg-init: reached\r\nxcpimg-cmdline: x\r\n"], firmware="uefi")
    result = _watch(m)
    assert result.ok and result.reached["init"] > max(BUDGETS.values())  # type: ignore[attr-defined]
    m = FakeMachine(tmp_path, [("wait", 25.0), "Welcome to GRUB!\r\n", ("wait", 35.0),
                               "(XEN) Xen version 4.17\r\n", ("wait", 31.0), "Linux version 6.1\r\n"],
                    firmware="uefi")
    with pytest.raises(BootFailure, match=r"no 'kernel' within 30 s after 'hypervisor' \(reached at 60.5 s\)"):
        _watch(m)


def test_an_implied_stage_restarts_the_budget(tmp_path: Path) -> None:
    """A bootloader silent on serial: the Xen banner implies it, and the kernel budget runs from it."""
    m = FakeMachine(tmp_path, [("wait", 50.0), "(XEN) Xen version 4.17\r\n"],
                    firmware="bios")
    with pytest.raises(BootFailure, match="timed out: no 'bootloader' within 30 s"):
        _watch(m)
    m = FakeMachine(tmp_path, [("wait", 20.0), "(XEN) Xen version 4.17\r\n", ("wait", 20.0),
                               "Linux version 6.1\r\n"])
    result = _watch(m, "kernel")
    assert result.ok and result.implied == {"bootloader"}  # type: ignore[attr-defined]


def test_budget_table_covers_every_stage_and_scales() -> None:
    assert list(STAGE_BUDGETS) == list(STAGES)
    kvm, tcg = stage_budgets("kvm"), stage_budgets("tcg")
    assert all(tcg[s] == pytest.approx(kvm[s] * TCG_FACTOR) for s in STAGES)
    assert tcg["bootloader"] + tcg["hypervisor"] < 90 and tcg["hypervisor"] < 60  # a hung loader fails fast
    big = stage_budgets("tcg", payload_bytes=300 * 2**20)  # a real install.img over TFTP
    assert big["hypervisor"] > tcg["hypervisor"] + 60 and big["init"] > tcg["init"] + 200
    assert big["bootloader"] == tcg["bootloader"] and big["kernel"] == tcg["kernel"]


def test_budgets_from_the_medium_payload(tmp_path: Path) -> None:
    budgets = stage_budgets("tcg", Pxe(tmp_path, "pxelinux.0", 100 * 2**20).payload_bytes)
    m = FakeMachine(tmp_path, [("wait", 2.0), "boot: ", ("wait", 60.0), "(XEN) Xen version 4.17\r\n",
                               "Linux version 6.1\r\n"])
    assert _watch(m, "kernel", budgets).ok  # type: ignore[attr-defined]


# -- failure patterns of network boots -------------------------------------------------------

@pytest.mark.parametrize(("console", "reason"), [
    ("Welcome to GRUB!\r\n\r\n   Minimal BASH-like line editing is supported. For the first word, TAB\r\n",
     "GRUB read no grub.cfg and stopped at its command line (over PXE: efinet and tftp missing from the "
     "GRUB image?)"),
    ("tftp://10.0.2.2/pxelinux.0... No such file or directory (http://ipxe.org/2d12618e)\r\n",
     "network boot program not found on the TFTP server"),
    ("  NBP filesize is 0 Bytes\r\n  PXE-E23: Client received TFTP error from server.\r\n",
     "network boot program not found on the TFTP server"),
    ("  PXE-E16: No valid offer received.\r\n", "firmware network boot failed"),
    ("No more network devices\r\n", "network boot found no server or boot program"),
    ("Unable to locate configuration file\r\n", "pxelinux found no pxelinux.cfg"),
])
def test_network_boot_failures_are_named(console: str, reason: str) -> None:
    watcher = ConsoleWatcher()
    watcher.feed(console)
    assert watcher.failure is not None and watcher.failure.reason == reason
