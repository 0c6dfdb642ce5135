"""What each boot stage looks like on the serial console, and a watcher that tracks them.

Stages, in order: ``bootloader`` (isolinux/menu.c32 or GRUB), ``hypervisor`` (the Xen
banner), ``kernel`` (``Linux version``), ``init`` (the marker printed by the probe initrd,
or a real init system's first kernel-log line) and ``installer`` (the installer's first
screen, ``Welcome to XCP-ng - Version ...``, which a real install.img shows on hvc0 when
booted interactively). The kernel command line is read from the kernel's own
``Command line:`` line (or the init marker's report of /proc/cmdline), so it is known for
any image. Known failure patterns end a boot at once; GRUB errors it recovers from are
kept as warnings. Everything here is pure: feed text, read results; no QEMU involved.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STAGES: tuple[str, ...] = ("bootloader", "hypervisor", "kernel", "init", "installer")

#: The line printed by the probe initrd and the fixture install.img once /init runs.
INIT_MARKER = "xcpimg-init: reached"
#: Prefix of the next line; the rest of that line is the contents of /proc/cmdline.
CMDLINE_PREFIX = "xcpimg-cmdline: "
#: The dom0 kernel's report of its command line (``Command line:`` from setup_arch, or
#: ``Kernel command line:``); Xen's own ``(XEN) Command line:`` is not the kernel's.
KERNEL_CMDLINE = re.compile(r"^(?:\[\s*\d+\.\d+\]\s*)?(?:Kernel c|C)ommand line: ?(.*)$")
#: The installer's first screen (host-installer: "Welcome to %s - Version %s (Kernel %s)").
INSTALLER_WELCOME = re.compile(r"Welcome to (\S.*?) - Version (\S+)(?: \(Kernel ([^)\s]+)\))?")
#: Line printed before the init marker when ``answerfile=file:///X`` is on the command line and X
#: exists: ``xcpimg-answerfile: /X <root element name>``.
ANSWERFILE_PREFIX = "xcpimg-answerfile: "

#: stage -> console regexes meaning the stage was reached.
STAGE_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "bootloader": tuple(re.compile(p) for p in (
        r"\bISOLINUX \d",                                # banner (when it reaches serial)
        r"\bSYSLINUX \d",
        r"(?:^|\s)boot: ?$",                             # isolinux prompt
        r"Automatic boot in \d+ seconds?",               # menu.c32
        r"Press \[Tab\] to edit options",                # menu.c32
        r"Welcome to GRUB!",                             # GRUB EFI image started
        r"GNU GRUB +version",                            # GRUB menu header
        r"highlighted entry will be executed automatically",
        r"Use the [\^v\w ]+ keys to select which entry",  # GRUB menu help
    )),
    "hypervisor": tuple(re.compile(p) for p in (
        r"\(XEN\) Xen version \d",
        r"\bXen version \d+\.\d+",
    )),
    "kernel": (re.compile(r"\bLinux version \d"),),
    "init": (
        re.compile(re.escape(INIT_MARKER)),
        re.compile(r"\bsystemd\[1\]: systemd \d+\S* running in system mode"),  # systemd as PID 1
        re.compile(r"\binit: version \d\S* booting"),                         # sysvinit
    ),
    "installer": (INSTALLER_WELCOME,),
}

#: Console text after which an Enter skips a bootloader timeout: kind -> regex.
ENTER_PROMPTS: dict[str, re.Pattern[str]] = {
    "isolinux": re.compile(r"(?:^|\s)boot: ?$"),
    "menu.c32": re.compile(r"Automatic boot in \d+ seconds?|Press \[Tab\] to edit options"),
    "grub": re.compile(r"highlighted entry will be executed automatically|GNU GRUB +version"),
}

#: (description, regex, stage) of console lines that end a boot as failed, matched on whole
#: lines; a pattern with a stage applies only until that stage is reached (firmware and
#: bootloader messages mean nothing once Xen runs: dom0 may print "Failed to load ...").
#: GRUB goes on after most ``error:`` lines (a module missing for ``insmod``, an unknown
#: command): only those it cannot recover from are here, the others are warnings.
FAILURE_PATTERNS: tuple[tuple[str, re.Pattern[str], str | None], ...] = tuple(
    (d, re.compile(p), until) for d, p, until in (
        ("kernel panic", r"Kernel panic - not syncing", None),
        ("firmware could not boot the media", r"\bBoot failed\b", "hypervisor"),
        ("firmware found no bootable device",
         r"No bootable device|No bootable option or device was found", "hypervisor"),
        ("firmware dropped to the UEFI shell", r"UEFI Interactive Shell", "hypervisor"),
        ("isolinux could not load a module", r"Failed to load (?:COM32 file )?\S+", "hypervisor"),
        ("isolinux could not find the kernel", r"Could not find kernel image", "hypervisor"),
        ("mboot.c32 could not load a file", r"Loading \S+\.\.\. failed", "hypervisor"),
        ("mboot.c32 could not load a file", r"No files found!", "hypervisor"),
        ("GRUB file not found", r"error: file [`'](?![^`']*\.mod')[^`']*' not found", "hypervisor"),
        ("GRUB found no such device", r"error: no such device", "hypervisor"),
        ("GRUB error", r"error: you need to load the kernel first", "hypervisor"),
        ("GRUB error", r"error: (?:invalid magic number|out of memory)", "hypervisor"),
        ("GRUB rescue prompt", r"grub rescue>", "hypervisor"),
        # GRUB's command line (normal mode without a grub.cfg): what a GRUB image without
        # efinet/tftp shows after a network boot, as it cannot read (tftp)/EFI/xenserver/grub.cfg
        ("GRUB read no grub.cfg and stopped at its command line (over PXE: efinet and tftp "
         "missing from the GRUB image?)", r"Minimal BASH-like line editing is supported", "hypervisor"),
        # network boot (iPXE ROMs, pxelinux)
        ("network boot program not found on the TFTP server",
         r"tftp://\S+\.\.\. ?(?:No such file|Permission denied|Operation not permitted)", "bootloader"),
        ("network boot program not found on the TFTP server", r"PXE-E23: Client received TFTP error", "bootloader"),
        ("network boot found no server or boot program", r"No more network devices", "bootloader"),
        ("firmware network boot failed", r"PXE-E\d\d: .+", "bootloader"),
        ("pxelinux found no pxelinux.cfg", r"Unable to locate configuration file", "hypervisor"),
        ("Xen panic", r"Panic on CPU \d+", None),
        ("Xen dom0 crashed", r"Hardware Dom0 crashed", None),
        ("KVM failed", r"KVM internal error", None),
    ))

#: GRUB error lines that are not failures: kept as warnings of the boot (until Xen runs).
GRUB_WARNING = re.compile(r"\berror: .+")

#: Failure patterns that are prompts (no newline follows): also matched on the unfinished line.
_PROMPT_FAILURES = tuple(f for f in FAILURE_PATTERNS if f[0] == "GRUB rescue prompt")

#: Console noise that looks like an error but is not (checked before FAILURE_PATTERNS).
BENIGN_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"error: no suitable video mode found\.?"),
)

# CSI sequences, two-byte escapes (charset selection, keypad mode, reset), then other controls.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()*+][0-9A-Za-z]|\x1b[@-Z\\-_]|\x1b[=>c78]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ESC_PREFIX = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|[()*+])?$")


def shorten(line: str, width: int = 200) -> str:
    """*line* with runs of blanks squeezed and, past *width* characters, only its end kept."""
    line = re.sub(r"\s{3,}", "  ", line.strip())
    return line if len(line) <= width else "..." + line[-width:]


def clean(text: str) -> str:
    """Console text without terminal escape sequences and control characters (keeps newlines)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def _without_benign(line: str) -> str:
    """*line* without the console noise that looks like an error (BENIGN_PATTERNS)."""
    for benign in BENIGN_PATTERNS:
        line = benign.sub("", line)
    return line


def kernel_cmdline(line: str) -> str | None:
    """The dom0 kernel's command line if *line* is its ``Command line:`` report (not Xen's)."""
    found = KERNEL_CMDLINE.match(line.strip())
    return found.group(1).strip() if found else None


def parse_cmdline(text: str) -> str | None:
    """The kernel command line in *text*: the init marker's report of /proc/cmdline, else the
    kernel's own ``Command line:`` line; None when neither is there."""
    lines = clean(text.replace("\r\n", "\n")).splitlines()
    for line in lines:
        idx = line.find(CMDLINE_PREFIX)
        if idx >= 0:
            return line[idx + len(CMDLINE_PREFIX):].strip()
    for line in lines:
        found = kernel_cmdline(line)
        if found is not None:
            return found
    return None


def stage_index(stage: str) -> int:
    """Position of *stage* in STAGES (ValueError naming the valid stages otherwise)."""
    try:
        return STAGES.index(stage)
    except ValueError:
        raise ValueError(f"unknown boot stage {stage!r} (expected one of {', '.join(STAGES)})") from None


@dataclass
class Failure:
    """A known failure seen on the console: what it means and the line that showed it."""

    reason: str
    line: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.line}"


@dataclass
class Update:
    """What one feed() call found: stages newly reached, prompts wanting Enter, a failure."""

    stages: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    failure: Failure | None = None


class ConsoleWatcher:
    """Feed console text chunks; tracks stages reached (seconds since start), the init
    command line and the first failure seen.

    Reaching a stage implies the earlier ones (a bootloader silent on serial is still a
    bootloader that worked): those are recorded at the same time and listed in ``implied``.
    ``cmdline`` is the init marker's /proc/cmdline when it reports one, else the kernel's
    ``Command line:``; ``warnings`` holds GRUB errors it recovered from; ``installer`` the
    (brand, version, kernel) of the installer's first screen once seen.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, start: float | None = None) -> None:
        self.clock = clock
        self.start = clock() if start is None else start
        self.reached: dict[str, float] = {}
        self.implied: set[str] = set()
        self.cmdline: str | None = None
        self.kernel_cmdline: str | None = None
        self.installer: tuple[str, str, str] | None = None
        self.warnings: list[str] = []
        self.failure: Failure | None = None
        self._raw_tail = ""
        self._partial = ""
        self._line_no = 0
        self._partial_prompts: set[str] = set()
        self._lines: list[str] = []

    # -- results -------------------------------------------------------------------------
    def has_reached(self, stage: str) -> bool:
        return stage in self.reached

    def deepest(self) -> str | None:
        """The deepest stage reached so far, or None."""
        done = [s for s in STAGES if s in self.reached]
        return done[-1] if done else None

    def tail(self, lines: int = 25) -> str:
        """The last *lines* lines of cleaned console text (including the unfinished one)."""
        out = self._lines[-lines:] + ([self._partial] if self._partial else [])
        return "\n".join(shorten(line) for line in out[-lines:])

    # -- input ---------------------------------------------------------------------------
    def feed(self, chunk: str) -> Update:
        """Consume a chunk of raw console text; return what it revealed."""
        update = Update()
        raw = self._raw_tail + chunk
        hold = _ESC_PREFIX.search(raw[-32:]) if "\x1b" in raw[-32:] else None
        if hold:
            cut = len(raw) - (len(raw[-32:]) - hold.start())
            raw, self._raw_tail = raw[:cut], raw[cut:]
        else:
            self._raw_tail = ""
        text = self._partial + clean(raw.replace("\r\n", "\n"))
        parts = text.split("\n")
        self._partial = parts.pop()
        for line in parts:
            self._scan(line, update, complete=True)
            self._line_no += 1
            self._partial_prompts = set()
            self._lines.append(line)
        if len(self._lines) > 2000:
            del self._lines[:-1000]
        if self._partial:
            self._scan(self._partial, update, complete=False)
        return update

    def fail(self, reason: str, line: str = "") -> Failure:
        """Record a failure found outside the console (QEMU stderr, timeout...)."""
        if self.failure is None:
            self.failure = Failure(reason, line)
        return self.failure

    def _mark(self, stage: str, update: Update) -> None:
        now = round(self.clock() - self.start, 3)
        for earlier in STAGES[:stage_index(stage)]:
            if earlier not in self.reached:
                self.reached[earlier] = now
                self.implied.add(earlier)
                update.stages.append(earlier)
        self.reached[stage] = now
        update.stages.append(stage)

    def _scan(self, line: str, update: Update, complete: bool) -> None:
        for stage in STAGES:
            if stage not in self.reached and any(self._seen(p, line, complete) for p in STAGE_PATTERNS[stage]):
                self._mark(stage, update)
        if complete and CMDLINE_PREFIX in line and (self.cmdline is None or self.cmdline == self.kernel_cmdline):
            self.cmdline = line[line.index(CMDLINE_PREFIX) + len(CMDLINE_PREFIX):].strip()
        if complete and self.kernel_cmdline is None:
            kernel_line = kernel_cmdline(line)
            if kernel_line is not None:
                self.kernel_cmdline = kernel_line
                self.cmdline = self.cmdline or kernel_line
        if "installer" in self.reached and self.installer is None:
            welcome = INSTALLER_WELCOME.search(line)  # whole: _seen waits for the rest of a cut line
            if welcome:
                self.installer = (welcome.group(1), welcome.group(2), welcome.group(3) or "")
        if not any(s in self.reached for s in STAGES[1:]):
            for kind, rx in ENTER_PROMPTS.items():
                if kind not in self._partial_prompts and rx.search(line):
                    update.prompts.append(kind)
                    if not complete:
                        self._partial_prompts.add(kind)
        if self.failure is None:
            failure = self._failure_in(line, complete, self.reached)
            if failure:
                self.failure = failure
                update.failure = failure
            elif complete and "hypervisor" not in self.reached:
                self._warn(line)

    @staticmethod
    def _seen(pattern: re.Pattern[str], line: str, complete: bool) -> bool:
        """*pattern* matches *line*; the installer's first screen only once its text is whole (a
        chunk may end in the middle of the version: "Version 8" of "Version 8.3 (Kernel ...)")."""
        found = pattern.search(line)
        if found is None or complete or pattern is not INSTALLER_WELCOME:
            return found is not None
        if found.group(3) is not None:
            return True
        rest = line[found.end():]
        kernel = " (Kernel "
        if kernel.startswith(rest) or (rest.startswith(kernel) and ")" not in rest):
            return False  # the "(Kernel ...)" part may still be coming
        return True

    def _warn(self, line: str) -> None:
        found = GRUB_WARNING.search(_without_benign(line))
        if found and len(self.warnings) < 50:
            self.warnings.append(shorten(found.group(0)))

    @staticmethod
    def _failure_in(line: str, complete: bool, reached: dict[str, float]) -> Failure | None:
        line = _without_benign(line)
        for reason, rx, until in (FAILURE_PATTERNS if complete else _PROMPT_FAILURES):
            if until is not None and until in reached:
                continue
            found = rx.search(line)
            if found:  # from the match on: GRUB menus leave screen junk earlier on the line
                return Failure(reason, shorten(line[found.start():]))
        return None
