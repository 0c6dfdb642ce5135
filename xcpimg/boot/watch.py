"""The watch loop: read a running VM's console until the wanted stage, a failure, or a stall.

Every stage has its own time budget, counted from the moment the previous stage was
reached (the first one from the VM starting to run), so a boot that stops anywhere fails
after that stage's budget, not after a whole-boot deadline: a hung bootloader fails within
a minute under TCG. Budgets grow with the bytes the bootloader must load (install.img)
where loading or unpacking them is the stage's work. Enter is sent at bootloader
prompts; under SeaBIOS the VGA text screen is read too, where SeaBIOS and syslinux print
their errors. A failure keeps a screendump beside the serial log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import BootError
from ..stages import STAGES, ConsoleWatcher, stage_index
from .machine import MachineConfig

#: Per stage: (seconds under KVM, more seconds per MiB of boot payload) it may take after
#: the previous stage was reached. TCG gets TCG_FACTOR times as long.
STAGE_BUDGETS: dict[str, tuple[float, float]] = {
    "bootloader": (8.0, 0.0),    # firmware start (for PXE: DHCP, TFTP of the boot program)
    "hypervisor": (6.0, 0.1),    # menu (Enter skips it), loading Xen, dom0 kernel, install.img
    "kernel": (8.0, 0.0),        # Xen up to the dom0 kernel's banner
    "init": (20.0, 0.25),        # dom0 boot, unpacking install.img, init starting
    "installer": (30.0, 0.0),    # init up to the installer's first screen (fixture: about 16 s under TCG)
}
TCG_FACTOR = 4.0
#: Minimum seconds between two Enters sent to skip a bootloader menu.
ENTER_INTERVAL = 2.0
#: Seconds between two looks at the VGA text screen (SeaBIOS boots, before Xen).
VGA_INTERVAL = 3.0
#: Seconds to wait for the init marker's command line once init is reached.
CMDLINE_WAIT = 10.0


def stage_budgets(accel: str, payload_bytes: int = 0) -> dict[str, float]:
    """Seconds each stage may take after the previous one, for *accel* and a boot payload."""
    factor = TCG_FACTOR if accel == "tcg" else 1.0
    mib = payload_bytes / 2**20
    return {stage: round((base + per_mib * mib) * factor, 1) for stage, (base, per_mib) in STAGE_BUDGETS.items()}


@dataclass
class BootResult:
    """What a boot reached, and where its logs are."""

    firmware: str
    media: str                         # the medium kind: cd, usb, usb-noeltorito, pxe
    accel: str
    until: str
    reached: dict[str, float]          # stage -> seconds after the VM started running
    cmdline: str | None                # the kernel command line (init's /proc/cmdline, else the kernel's)
    seconds: float                     # wall time of the whole boot, VM start to stop
    logdir: Path
    serial_log: Path
    stderr_log: Path
    argv_file: Path
    screenshot: Path | None = None
    implied: set[str] = field(default_factory=set)  # stages not seen, implied by a later one
    reason: str | None = None          # why the boot failed (None on success)
    stalled: str | None = None         # the stage whose budget ran out, on a timeout
    tail: str = ""                     # last console lines
    warnings: list[str] = field(default_factory=list)  # GRUB errors it recovered from
    installer: tuple[str, str, str] | None = None      # (brand, version, kernel) of the first screen

    @property
    def ok(self) -> bool:
        return self.reason is None and self.until in self.reached


class BootFailure(BootError):
    """A boot that did not reach its stage; ``result`` holds the details and log paths."""

    def __init__(self, message: str, result: BootResult) -> None:
        super().__init__(message)
        self.result = result


class Console(Protocol):
    """What the watch loop needs of a Machine (tests pass a scripted fake)."""

    cfg: MachineConfig
    logdir: Path
    serial_log: Path
    stderr_log: Path
    argv_file: Path
    started_at: float

    def read(self, timeout: float) -> str | None: ...
    def alive(self) -> bool: ...
    def drain(self) -> str: ...
    def send(self, text: str) -> None: ...
    def new_stderr(self) -> str: ...
    def vga_text(self) -> str: ...
    def screendump(self, path: Path) -> Path | None: ...
    def exit_code(self) -> int | None: ...


def _overdue(watcher: ConsoleWatcher, until: str, budgets: Mapping[str, float], elapsed: float,
             ) -> tuple[str, str] | None:
    """(stage, reason) when the next stage up to *until* is past its budget; else None."""
    wanted = STAGES[:stage_index(until) + 1]
    pending = [s for s in wanted if s not in watcher.reached]
    if not pending:
        return None
    stage = pending[0]
    last = watcher.deepest()
    since = watcher.reached[last] if last else 0.0
    budget = budgets[stage]
    if elapsed - since <= budget:
        return None
    after = f"'{last}' (reached at {since:.1f} s)" if last else "the VM started"
    return stage, f"timed out: no {stage!r} within {budget:g} s after {after}"


def watch(m: Console, until: str, budgets: Mapping[str, float],
          on_stage: Callable[[str, float], None] | None = None, *, cap: float | None = None,
          clock: Callable[[], float] = time.monotonic) -> BootResult:
    """Watch the running machine *m* until *until* is reached; raise BootFailure otherwise.

    *budgets* gives each stage's seconds after the previous one (stage_budgets()); *cap*,
    when given, bounds the whole boot as well.
    """
    cfg = m.cfg
    watcher = ConsoleWatcher(clock=clock, start=m.started_at)
    last_enter = -math.inf
    last_vga = m.started_at
    vga_seen = ""
    reason: str | None = None
    stalled: str | None = None
    cmdline_wait: float | None = None
    bios_loader = cfg.firmware == "bios"
    while True:
        now = clock()
        chunk = m.read(0.25)
        if chunk:
            update = watcher.feed(chunk)
            for stage in update.stages:
                if on_stage:
                    on_stage(stage, watcher.reached[stage])
            if update.prompts and watcher.deepest() == "bootloader" and now - last_enter > ENTER_INTERVAL:
                m.send("\r")
                last_enter = now
        err = m.new_stderr()
        if "KVM internal error" in err:
            watcher.fail("KVM failed", next(ln for ln in err.splitlines() if "KVM internal error" in ln))
        if (watcher.failure is None and bios_loader and not watcher.has_reached("hypervisor")
                and clock() - last_vga > VGA_INTERVAL):
            # SeaBIOS, iPXE and syslinux errors show only on VGA: look at the text screen.
            last_vga = clock()
            screen = m.vga_text()
            if screen and screen != vga_seen:
                vga_seen = screen
                vga = ConsoleWatcher()
                vga.feed(screen + "\n")
                if vga.failure:
                    watcher.fail(vga.failure.reason + " (VGA)", vga.failure.line)
        if watcher.failure is not None:
            reason = str(watcher.failure)
            break
        if watcher.has_reached(until):
            if until != "init" or watcher.cmdline is not None:
                break
            cmdline_wait = cmdline_wait or clock() + CMDLINE_WAIT
            if clock() > cmdline_wait:
                break
        if chunk is None or not m.alive():
            rest = m.drain()  # the last words may explain the exit (or hold the stage)
            if rest:
                watcher.feed(rest + "\n")
            if watcher.failure is not None:
                reason = str(watcher.failure)
            elif not watcher.has_reached(until):
                code = m.exit_code()
                reason = f"QEMU exited (code {'?' if code is None else code}) before {until!r}"
                if m.alive():
                    reason = f"the serial console closed before {until!r}"
            break
        elapsed = clock() - m.started_at
        overdue = _overdue(watcher, until, budgets, elapsed)
        if overdue is not None:
            stalled, reason = overdue
            break
        if cap is not None and elapsed > cap:
            reason = f"timed out after {cap:g} s waiting for {until!r}"
            stalled = next(s for s in STAGES if s not in watcher.reached)
            break
    screenshot = m.screendump(m.logdir / "screen.png") if reason else None
    result = BootResult(firmware=cfg.firmware, media=cfg.medium.kind, accel=cfg.accel, until=until,
                        reached=dict(watcher.reached), cmdline=watcher.cmdline,
                        seconds=round(clock() - m.started_at, 3), logdir=m.logdir, serial_log=m.serial_log,
                        stderr_log=m.stderr_log, argv_file=m.argv_file, screenshot=screenshot,
                        implied=set(watcher.implied), reason=reason, stalled=stalled, tail=watcher.tail(20),
                        warnings=list(watcher.warnings), installer=watcher.installer)
    if reason is None:
        return result
    if vga_seen and bios_loader and not watcher.has_reached("hypervisor"):
        (m.logdir / "vga.txt").write_text(vga_seen + "\n")
    reached = ", ".join(f"{s} {t:.1f}s" for s, t in watcher.reached.items()) or "none"
    tail = f"--- last console lines ---\n{result.tail}" if result.tail.strip() else \
        f"--- VGA screen ---\n{vga_seen}" if vga_seen else "(no console output)"
    message = (f"{cfg.firmware}/{cfg.medium.kind} boot failed: {reason} (stages reached: {reached}; "
               f"logs in {m.logdir})\n{tail}")
    raise BootFailure(message, result)
