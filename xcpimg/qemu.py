"""Boot an ISO in QEMU and report the boot stages reached on its serial console.

One VM per boot: firmware ``bios`` (SeaBIOS) or ``uefi`` (OVMF), media ``cd`` or ``usb``
(xhci + usb-storage). QEMU starts paused, the serial console (a unix socket read through
pexpect) and QMP are attached, then the VM runs; it is stopped the moment the requested
stage shows on the console. KVM is used only when a probe guest really runs under it,
otherwise TCG. On failure the serial log, QEMU's stderr, its command line and a
screendump (PNG) are kept in the log directory. No QEMU outlives its Machine.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fnmatch
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pexpect
import pexpect.fdpexpect
from qemu.qmp import ConnectError, ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from .errors import BootError, UsageError
from .fsutil import remove_tree
from .run import which
from .stages import STAGES, ConsoleWatcher, stage_index

log = logging.getLogger("xcpimg.qemu")
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)  # its INFO lines ("end-of-file") are noise

_T = TypeVar("_T")
FIRMWARES = ("bios", "uefi")
MEDIA = ("cd", "usb")
QEMU = "qemu-system-x86_64"
DEFAULT_MEMORY = 2048
#: the four ways the matrix and the demo boot an ISO
BOOT_MODES = ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb")


def boot_mode(mode: str) -> tuple[str, str, bool]:
    """(firmware, media, no_eltorito) of a boot mode name such as ``uefi-usb``.

    OVMF boots a USB stick through the El Torito EFI entry when there is one, which is the
    path uefi-cd already proves; uefi-usb disables it, so that it boots through the hybrid
    image's EFI partition, as firmware that ignores El Torito on disks does.
    """
    if mode not in BOOT_MODES:
        raise UsageError(f"unknown boot mode {mode!r} (known: {', '.join(BOOT_MODES)})")
    firmware, media = mode.split("-")
    return firmware, media, mode == "uefi-usb"
#: CPU model under TCG: `max` makes Debian's dom0 die under Xen (SMAP fault); Xen's CI uses qemu64.
TCG_CPU = "qemu64"
#: Seconds to reach each stage under KVM; TCG gets TCG_FACTOR times as long.
BASE_TIMEOUTS = {"bootloader": 15.0, "hypervisor": 25.0, "kernel": 30.0, "init": 75.0, "installer": 120.0}
TCG_FACTOR = 4.0
#: Seconds allowed for QEMU to create its sockets, and for it to exit after `quit`.
START_TIMEOUT = 15.0
QUIT_TIMEOUT = 5.0
#: Minimum seconds between two Enters sent to skip a bootloader menu.
ENTER_INTERVAL = 2.0
#: OVMF files when no firmware descriptor names them: (code, vars template).
OVMF_KNOWN_PATHS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
)
FIRMWARE_DESCRIPTOR_DIRS = ("/etc/qemu/firmware", "/usr/share/qemu/firmware")
_UNWANTED_FEATURES = {"secure-boot", "requires-smm", "enrolled-keys", "amd-sev-es", "intel-tdx"}


# -- firmware ----------------------------------------------------------------------------

def _descriptor_ok(desc: dict[str, Any]) -> bool:
    """A firmware descriptor for plain OVMF on x86_64 i440fx: flash with a VARS template,
    no Secure Boot, no SMM requirement."""
    mapping = desc.get("mapping") or {}
    features = set(desc.get("features") or [])
    x86 = any(t.get("architecture") == "x86_64"
              and any(fnmatch.fnmatch("pc-i440fx-7.2", m) for m in t.get("machines", []))
              for t in desc.get("targets") or [])
    return ("uefi" in (desc.get("interface-types") or []) and mapping.get("device") == "flash"
            and "nvram-template" in mapping and x86 and not (features & _UNWANTED_FEATURES))


def find_ovmf(descriptor_dirs: Sequence[str | Path] = FIRMWARE_DESCRIPTOR_DIRS,
              known: Sequence[tuple[str, str]] = OVMF_KNOWN_PATHS) -> tuple[Path, Path]:
    """(code, vars template) of a plain (no Secure Boot, no SMM) x86_64 OVMF.

    Firmware descriptors (``*.json``, earlier directories override later ones by file
    name, lowest name first) win over the list of known paths.
    """
    chosen: dict[str, Path] = {}
    for directory in reversed([Path(d) for d in descriptor_dirs]):
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            chosen[path.name] = path
    for name in sorted(chosen):
        try:
            desc = json.loads(chosen[name].read_text())
        except (OSError, ValueError):
            continue
        if isinstance(desc, dict) and _descriptor_ok(desc):
            code = Path(desc["mapping"]["executable"]["filename"])
            vars_ = Path(desc["mapping"]["nvram-template"]["filename"])
            if code.is_file() and vars_.is_file():
                return code, vars_
    for code_s, vars_s in known:
        if Path(code_s).is_file() and Path(vars_s).is_file():
            return Path(code_s), Path(vars_s)
    raise BootError("OVMF (UEFI firmware for QEMU) not found: install the Debian package 'ovmf'")


# -- accel -------------------------------------------------------------------------------

def cpu_has_virt(cpuinfo: str) -> bool:
    """True when a `flags` line of /proc/cpuinfo text lists vmx or svm."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            if {"vmx", "svm"} & set(line.partition(":")[2].split()):
                return True
    return False


def kvm_probe(seconds: float = 3.0) -> bool:
    """Run a tiny guest (OVMF, else SeaBIOS, no devices) under KVM; True when it keeps running.

    The machine this was written on has a `/dev/kvm` whose guests all die with
    ``KVM internal error`` (OVMF within 0.1 s) while QEMU stays up, paused: so the verdict
    comes from QEMU's stderr, not from its being alive.
    """
    try:
        code, _vars = find_ovmf()
        fw = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={opt_value(code)}"]
    except BootError:
        fw = []
    argv = [which(QEMU), "-accel", "kvm", "-machine", "pc", "-cpu", "host", "-m", "128", "-nodefaults",
            "-display", "none", "-monitor", "none", "-serial", "none", "-no-reboot", *fw]
    log.debug("kvm probe: %s", shlex.join(argv))
    with tempfile.TemporaryFile() as err:
        proc = spawn(argv, err)
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(proc)
        err.seek(0)
        text = err.read().decode(errors="replace")
    ok = proc.returncode in (0, -signal.SIGKILL) and "KVM internal error" not in text \
        and "failed to initialize" not in text.lower() and "Could not access KVM" not in text
    log.debug("kvm probe: %s (%s)", "usable" if ok else "unusable", text.strip()[-200:])
    return ok


def choose_accel(cpuinfo: str | None = None, probe: Callable[[], bool] | None = None,
                 kvm_device: str = "/dev/kvm") -> str:
    """"kvm" when the CPU has vmx/svm, /dev/kvm is usable and a probe guest runs; else "tcg".

    ``XCPIMG_ACCEL=kvm|tcg`` forces the choice. With default arguments the answer is
    computed once per process.
    """
    forced = os.environ.get("XCPIMG_ACCEL", "").strip()
    if forced:
        if forced not in ("kvm", "tcg"):
            raise UsageError(f"XCPIMG_ACCEL must be kvm or tcg, got {forced!r}")
        return forced
    if cpuinfo is None and probe is None and kvm_device == "/dev/kvm":
        return _default_accel()
    return _decide(cpuinfo if cpuinfo is not None else _read_cpuinfo(), probe or kvm_probe, kvm_device)


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _decide(cpuinfo: str, probe: Callable[[], bool], kvm_device: str) -> str:
    if not cpu_has_virt(cpuinfo) or not os.access(kvm_device, os.R_OK | os.W_OK):
        return "tcg"
    return "kvm" if probe() else "tcg"


@lru_cache(maxsize=1)
def _default_accel() -> str:
    accel = _decide(_read_cpuinfo(), kvm_probe, "/dev/kvm")
    log.debug("accel: %s", accel)
    return accel


def default_timeout(until: str, accel: str) -> float:
    """Seconds allowed to reach *until* with *accel* (TCG gets TCG_FACTOR times more)."""
    return BASE_TIMEOUTS[until] * (TCG_FACTOR if accel == "tcg" else 1.0)


# -- processes ---------------------------------------------------------------------------

_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (even by SIGKILL, where no
    finally or atexit runs). Linux only; a no-op elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], stderr: Any) -> subprocess.Popen[bytes]:
    """Start a QEMU in its own session (Ctrl-C on the terminal goes to us, not to it), killed
    if we die, tracked so that atexit kills it too. stdout and stderr go to *stderr*."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                            start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
    _LIVE[proc.pid] = proc
    return proc


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of *proc* (its own session) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    _LIVE.pop(proc.pid, None)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE.values()):
        _kill_group(proc)


# -- screendump --------------------------------------------------------------------------

def ppm_to_png(ppm: bytes) -> bytes:
    """Convert a binary PPM (P6, maxval 255) to PNG with zlib only."""
    parts: list[bytes] = []
    pos = 0
    while len(parts) < 4:  # magic, width, height, maxval; '#' comments allowed
        while ppm[pos:pos + 1].isspace():
            pos += 1
        if ppm[pos:pos + 1] == b"#":
            pos = ppm.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(ppm) and not ppm[end:end + 1].isspace():
            end += 1
        parts.append(ppm[pos:end])
        pos = end
    if parts[0] != b"P6" or parts[3] != b"255":
        raise ValueError("not a binary PPM with maxval 255")
    width, height = int(parts[1]), int(parts[2])
    pixels = ppm[pos + 1:pos + 1 + width * height * 3]
    stride = width * 3
    raw = b"".join(b"\0" + pixels[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def vga_text(memory: bytes, columns: int = 80) -> str:
    """Text of a VGA text-mode buffer (character, attribute pairs), one line per row."""
    chars = memory[0::2].decode("cp437", errors="replace")
    rows = [chars[i:i + columns].rstrip() for i in range(0, len(chars), columns)]
    return "\n".join(rows).rstrip("\n ")


# -- ISO helpers -------------------------------------------------------------------------

def disable_eltorito(iso: Path, copy: Path) -> Path:
    """Copy *iso* to *copy* with its El Torito boot record disabled (returns *copy*).

    The Boot Record Volume Descriptor (type 0, system id ``EL TORITO SPECIFICATION``)
    gets its boot system identifier blanked: firmware then ignores the boot catalog and a
    hybrid image can only boot through its MBR/GPT partitions.
    """
    shutil.copyfile(iso, copy)
    with open(copy, "r+b") as f:
        for sector in range(16, 64):
            f.seek(sector * 2048)
            desc = f.read(2048)
            if len(desc) < 2048 or desc[1:6] != b"CD001":
                break
            if desc[0] == 255:
                break
            if desc[0] == 0 and desc[7:30] == b"EL TORITO SPECIFICATION":
                f.seek(sector * 2048 + 7)
                f.write(b"\0" * 32)
                return copy
    raise BootError(f"{iso}: no El Torito boot record to disable")


# -- the machine -------------------------------------------------------------------------

@dataclass
class MachineConfig:
    """Everything that decides the QEMU command line."""

    image: Path
    firmware: str = "bios"
    media: str = "cd"
    memory: int = DEFAULT_MEMORY
    accel: str = "tcg"
    cpu: str | None = None
    firmware_file: Path | None = None   # OVMF code (uefi) or SeaBIOS image (bios)
    vars_template: Path | None = None   # OVMF VARS template (uefi)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARES:
            raise UsageError(f"firmware must be one of {', '.join(FIRMWARES)}, got {self.firmware!r}")
        if self.media not in MEDIA:
            raise UsageError(f"media must be one of {', '.join(MEDIA)}, got {self.media!r}")
        if self.accel not in ("kvm", "tcg"):
            raise UsageError(f"accel must be kvm or tcg, got {self.accel!r}")

    @property
    def cpu_model(self) -> str:
        return self.cpu or ("host" if self.accel == "kvm" else TCG_CPU)


def opt_value(value: object) -> str:
    """*value* (a path) inside a QEMU ``key=value,...`` option: commas doubled, so a file name
    like ``a.iso,if=pflash`` stays one value and never adds options."""
    return str(value).replace(",", ",,")


def build_argv(cfg: MachineConfig, sockdir: Path, vars_copy: Path | None, qemu: str = QEMU) -> list[str]:
    """The QEMU command line for *cfg*: paused, serial and QMP on unix sockets in *sockdir*."""
    argv = [qemu, "-name", f"xcpimg-{cfg.firmware}-{cfg.media}", "-machine", "pc",
            "-accel", cfg.accel, "-cpu", cfg.cpu_model, "-smp", "1" if cfg.accel == "tcg" else "2",
            "-m", str(cfg.memory), "-S", "-no-reboot", "-display", "none", "-vga", "std",
            "-nic", "none", "-monitor", "none", "-parallel", "none",
            "-chardev", f"socket,id=console,path={sockdir / 'serial.sock'},server=on,wait=off",
            "-serial", "chardev:console",
            "-qmp", f"unix:{sockdir / 'qmp.sock'},server=on,wait=off"]
    if cfg.firmware == "uefi":
        if cfg.firmware_file is None or vars_copy is None:
            raise UsageError("uefi needs the OVMF code file and a VARS copy")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={opt_value(cfg.firmware_file)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={opt_value(vars_copy)}"]
    elif cfg.firmware_file is not None:
        argv += ["-bios", str(cfg.firmware_file)]
    if cfg.media == "cd":
        argv += ["-drive", f"if=none,id=cd,media=cdrom,format=raw,readonly=on,file={opt_value(cfg.image)}",
                 "-device", "ide-cd,bus=ide.1,drive=cd,bootindex=0"]
    else:
        argv += ["-drive", f"if=none,id=stick,format=raw,readonly=on,file={opt_value(cfg.image)}",
                 "-device", "qemu-xhci,id=xhci",
                 "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0"]
    return argv + list(cfg.extra_args)


class Machine:
    """One QEMU VM, started paused, console and QMP attached, then running (context manager).

    ``workdir`` holds the sockets and the per-VM OVMF VARS copy (a private temp dir, removed
    on exit); ``logdir`` receives ``serial.log``, ``qemu-stderr.log`` and ``qemu-argv.txt``.
    """

    def __init__(self, cfg: MachineConfig, logdir: Path, qemu: str = QEMU) -> None:
        self.cfg = cfg
        self.logdir = Path(logdir)
        self.qemu = qemu
        self.serial_log = self.logdir / "serial.log"
        self.stderr_log = self.logdir / "qemu-stderr.log"
        self.argv_file = self.logdir / "qemu-argv.txt"
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: pexpect.fdpexpect.fdspawn | None = None
        self.qmp: QEMUMonitorProtocol | None = None
        self._sock: socket.socket | None = None
        self._serial_file: object = None
        self._stderr_file: object = None
        self._stderr_pos = 0
        self.started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Machine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _check_inputs(self) -> None:
        cfg = self.cfg
        if not cfg.image.is_file():
            raise BootError(f"image not found: {cfg.image}")
        if cfg.firmware_file is not None and not cfg.firmware_file.is_file():
            raise BootError(f"firmware file not found: {cfg.firmware_file}")
        if cfg.vars_template is not None and not cfg.vars_template.is_file():
            raise BootError(f"OVMF VARS template not found: {cfg.vars_template}")

    def start(self) -> None:
        """Launch QEMU paused, attach the serial console and QMP, then let the VM run."""
        cfg = self.cfg
        self._check_inputs()
        if cfg.firmware == "uefi" and (cfg.firmware_file is None or cfg.vars_template is None):
            code, vars_ = find_ovmf()
            cfg.firmware_file = cfg.firmware_file or code
            cfg.vars_template = cfg.vars_template or vars_
        self.logdir.mkdir(parents=True, exist_ok=True)
        # Short path: unix socket names are limited to 107 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix="xcpimg-vm-"))
        vars_copy = None
        if cfg.firmware == "uefi":
            assert cfg.vars_template is not None
            vars_copy = self.workdir / "OVMF_VARS.fd"
            shutil.copyfile(cfg.vars_template, vars_copy)
        argv = build_argv(cfg, self.workdir, vars_copy, self.qemu)
        argv[0] = which(argv[0]) if "/" not in argv[0] else argv[0]
        self.argv_file.write_text(shlex.join(argv) + "\n")
        log.debug("qemu: %s", shlex.join(argv))
        self._stderr_file = open(self.stderr_log, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = spawn(argv, self._stderr_file)
        except OSError as exc:
            raise BootError(f"cannot start {argv[0]}: {exc.strerror}") from None
        self._sock = self._connect(self.workdir / "serial.sock")
        self._serial_file = open(self.serial_log, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self.console = pexpect.fdpexpect.fdspawn(self._sock.fileno(), encoding="utf-8",
                                                 codec_errors="replace", timeout=1)
        self.console.logfile_read = self._serial_file
        self.qmp = self._connect_qmp(self.workdir / "qmp.sock")
        self.qmp.cmd("cont")
        self.started_at = time.monotonic()

    def _startup_error(self) -> BootError:
        lines = [ln for ln in self.stderr_text().splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {self.proc.returncode if self.proc else '?'}"
        return BootError(f"QEMU could not start: {why}")

    def _wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not path.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise self._startup_error()
            if time.monotonic() > deadline:
                raise BootError(f"QEMU did not create {path.name} within {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def _retry(self, path: Path, attempt: Callable[[], _T]) -> _T:
        """Call *attempt* until it stops raising ConnectionRefusedError (the socket file exists
        before QEMU listens on it), QEMU exits, or START_TIMEOUT passes."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._wait_for(path)
            try:
                return attempt()
            except (ConnectionRefusedError, ConnectError):
                if self.proc is None or self.proc.poll() is not None:
                    raise self._startup_error() from None
                if time.monotonic() > deadline:
                    raise BootError(f"QEMU did not accept a connection on {path.name}") from None
                time.sleep(0.05)

    def _connect(self, path: Path) -> socket.socket:
        def attempt() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except OSError:
                sock.close()
                raise
            return sock
        return self._retry(path, attempt)

    def _connect_qmp(self, path: Path) -> QEMUMonitorProtocol:
        def attempt() -> QEMUMonitorProtocol:
            qmp = QEMUMonitorProtocol(str(path))
            qmp.settimeout(10)
            qmp.connect()
            return qmp
        quiet = logging.getLogger("qemu.qmp.protocol")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # a refused attempt is logged as an ERROR with traceback
        try:
            return self._retry(path, attempt)
        finally:
            quiet.setLevel(level)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Quit QEMU (QMP ``quit``, then SIGKILL to its process group) and release everything."""
        if self.qmp is not None:
            if self.alive():
                with contextlib.suppress(Exception):
                    self.qmp.settimeout(2)
                    self.qmp.cmd("quit")
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(QUIT_TIMEOUT if self.alive() else 0.1)
            _kill_group(self.proc)
        if self.console is not None:
            with contextlib.suppress(Exception):
                self.drain()
            self.console = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for f in (self._serial_file, self._stderr_file):
            if f is not None:
                f.close()  # type: ignore[attr-defined]
        self._serial_file = self._stderr_file = None
        if self.workdir is not None:
            remove_tree(self.workdir)
            self.workdir = None

    # -- console and monitor -------------------------------------------------------------
    def read(self, timeout: float) -> str | None:
        """Console text that arrived within *timeout* s ('' if none); None once the console closed."""
        assert self.console is not None
        try:
            return self.console.read_nonblocking(65536, timeout=max(timeout, 0.0))
        except pexpect.TIMEOUT:
            return ""
        except (pexpect.EOF, OSError):
            return None

    def drain(self) -> str:
        """Whatever console text is already buffered (to complete the log)."""
        out = []
        while self.console is not None:
            chunk = self.read(0.05)
            if not chunk:
                break
            out.append(chunk)
        return "".join(out)

    def send(self, text: str) -> None:
        """Type *text* on the serial console."""
        assert self._sock is not None
        with contextlib.suppress(OSError):
            self._sock.sendall(text.encode())

    def stderr_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_log.read_text(errors="replace")
        return ""

    def new_stderr(self) -> str:
        """QEMU stderr written since the last call."""
        text = self.stderr_text()
        new, self._stderr_pos = text[self._stderr_pos:], len(text)
        return new

    def screendump(self, path: Path) -> Path | None:
        """Save the display as PNG at *path* (QEMU's PNG, else PPM converted); None if impossible."""
        if self.qmp is None or not self.alive():
            return None
        path = Path(path).resolve()
        try:
            self.qmp.cmd("screendump", filename=str(path), format="png")
            return path if path.is_file() else None
        except ExecuteError:
            pass  # older QEMU: PPM only
        except Exception as exc:  # noqa: BLE001 - a screendump is best effort
            log.debug("screendump failed: %s", exc)
            return None
        ppm = path.with_suffix(".ppm")
        try:
            self.qmp.cmd("screendump", filename=str(ppm))
            path.write_bytes(ppm_to_png(ppm.read_bytes()))
            return path
        except Exception as exc:  # noqa: BLE001
            log.debug("screendump failed: %s", exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                ppm.unlink()

    def vga_text(self) -> str:
        """The VGA text-mode screen (SeaBIOS, isolinux): text that never reaches the serial line."""
        if self.qmp is None or self.workdir is None or not self.alive():
            return ""
        dump = self.workdir / "vga.bin"
        try:
            self.qmp.cmd("pmemsave", val=0xB8000, size=4000, filename=str(dump))
            return vga_text(dump.read_bytes())
        except Exception as exc:  # noqa: BLE001 - best effort
            log.debug("vga text read failed: %s", exc)
            return ""


# -- boot --------------------------------------------------------------------------------

@dataclass
class BootResult:
    """What a boot reached, and where its logs are."""

    firmware: str
    media: str
    accel: str
    until: str
    reached: dict[str, float]          # stage -> seconds after the VM started running
    cmdline: str | None                # the kernel command line (init's /proc/cmdline, else the kernel's)
    seconds: float                     # wall time of the whole boot, QEMU start to stop
    logdir: Path
    serial_log: Path
    stderr_log: Path
    argv_file: Path
    screenshot: Path | None = None
    implied: set[str] = field(default_factory=set)  # stages not seen, implied by a later one
    reason: str | None = None          # why the boot failed (None on success)
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


def boot(iso: Path, firmware: str, media: str, until: str = "init", timeout: float | None = None,
         logdir: Path | None = None, no_eltorito: bool = False, *, memory: int = DEFAULT_MEMORY,
         accel: str | None = None, cpu: str | None = None, firmware_file: Path | None = None,
         vars_template: Path | None = None, on_stage: Callable[[str, float], None] | None = None,
         ) -> BootResult:
    """Boot *iso* until *until* is seen on the console; return the stages reached.

    Raises BootFailure (a BootError) naming the reason and the last console lines when a
    failure pattern shows, QEMU exits, or *timeout* (default: per stage, scaled for TCG)
    passes first; the serial log, QEMU stderr and command line, and a screendump PNG are
    then in *logdir* (a new ``xcpimg-boot-*`` temp dir when not given; it is kept).
    """
    stage_index(until)
    iso = Path(iso)
    accel = accel or choose_accel()
    timeout = timeout if timeout is not None else default_timeout(until, accel)
    if not iso.is_file():
        raise BootError(f"ISO not found: {iso}")
    for what, path in (("firmware file", firmware_file), ("OVMF VARS template", vars_template)):
        if path is not None and not Path(path).is_file():
            raise BootError(f"{what} not found: {path}")
    logdir = Path(logdir) if logdir is not None else Path(tempfile.mkdtemp(prefix="xcpimg-boot-"))
    logdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        image = iso
        if no_eltorito:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xcpimg-noet-")))
            image = disable_eltorito(iso, tmp / iso.name)
        cfg = MachineConfig(image=image, firmware=firmware, media=media, memory=memory, accel=accel,
                            cpu=cpu, firmware_file=firmware_file, vars_template=vars_template)
        machine = stack.enter_context(Machine(cfg, logdir))
        return _watch(machine, until, timeout, on_stage)
    raise AssertionError("unreachable")


def _watch(m: Machine, until: str, timeout: float, on_stage: Callable[[str, float], None] | None,
           ) -> BootResult:
    cfg = m.cfg
    watcher = ConsoleWatcher(start=m.started_at)
    deadline = m.started_at + timeout
    last_enter = -1e9
    last_vga = m.started_at
    vga_seen = ""
    reason: str | None = None
    cmdline_wait: float | None = None
    while True:
        now = time.monotonic()
        chunk = m.read(min(0.25, max(deadline - now, 0.0)))
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
        if (watcher.failure is None and cfg.firmware == "bios" and not watcher.has_reached("hypervisor")
                and time.monotonic() - last_vga > 3.0):
            # SeaBIOS and isolinux errors show only on VGA: look at the text screen.
            last_vga = time.monotonic()
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
            cmdline_wait = cmdline_wait or time.monotonic() + 10.0
            if time.monotonic() > cmdline_wait:
                break
        if chunk is None or not m.alive():
            rest = m.drain()  # the last words may explain the exit (or hold the stage)
            if rest:
                watcher.feed(rest + "\n")
            if watcher.failure is not None:
                reason = str(watcher.failure)
            elif not watcher.has_reached(until):
                reason = f"QEMU exited (code {m.proc.returncode if m.proc else '?'}) before {until!r}"
                if m.alive():
                    reason = f"the serial console closed before {until!r}"
            break
        if time.monotonic() > deadline:
            reason = f"timed out after {timeout:g} s waiting for {until!r}"
            break
    screenshot = m.screendump(m.logdir / "screen.png") if reason else None
    seconds = round(time.monotonic() - m.started_at, 3)
    result = BootResult(firmware=cfg.firmware, media=cfg.media, accel=cfg.accel, until=until,
                        reached=dict(watcher.reached), cmdline=watcher.cmdline, seconds=seconds,
                        logdir=m.logdir, serial_log=m.serial_log, stderr_log=m.stderr_log,
                        argv_file=m.argv_file, screenshot=screenshot, implied=set(watcher.implied),
                        reason=reason, tail=watcher.tail(20), warnings=list(watcher.warnings),
                        installer=watcher.installer)
    if reason is None:
        return result
    if vga_seen and cfg.firmware == "bios" and not watcher.has_reached("hypervisor"):
        (m.logdir / "vga.txt").write_text(vga_seen + "\n")
    reached = ", ".join(f"{s} {t:.1f}s" for s, t in watcher.reached.items()) or "none"
    tail = f"--- last console lines ---\n{result.tail}" if result.tail.strip() else \
        f"--- VGA screen ---\n{vga_seen}" if vga_seen else "(no console output)"
    message = (f"{cfg.firmware}/{cfg.media} boot failed: {reason} (stages reached: {reached}; "
               f"logs in {m.logdir})\n{tail}")
    raise BootFailure(message, result)


# -- CLI ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("iso", type=Path, help="ISO image to boot")
    parser.add_argument("--firmware", choices=FIRMWARES, default="bios")
    parser.add_argument("--media", choices=MEDIA, default="cd")
    parser.add_argument("--until", choices=STAGES, default="init", help="deepest stage to reach")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds (default: per stage and accel)")
    parser.add_argument("--logdir", type=Path, help="where to keep serial log, QEMU stderr/argv, screendump")
    parser.add_argument("--no-eltorito", action="store_true",
                        help="boot a copy with El Torito disabled (tests the hybrid MBR/GPT path)")
    parser.add_argument("--memory", type=int, default=DEFAULT_MEMORY, metavar="MIB")
    parser.add_argument("--accel", choices=("kvm", "tcg"), help="default: kvm only if a probe guest runs")
    parser.add_argument("--cpu", help=f"QEMU CPU model (default: host under KVM, {TCG_CPU} under TCG)")
    parser.add_argument("--firmware-file", type=Path, help="OVMF code (uefi) or SeaBIOS image (bios)")
    parser.add_argument("--firmware-vars", type=Path, help="OVMF VARS template (uefi)")


def command(args: argparse.Namespace) -> int:
    def show(stage: str, seconds: float) -> None:
        print(f"{stage:<10} {seconds:7.1f} s", flush=True)

    accel = args.accel or choose_accel()
    print(f"booting {args.iso} ({args.firmware}/{args.media}, {accel}) until {args.until}", flush=True)
    result = boot(args.iso, args.firmware, args.media, until=args.until, timeout=args.timeout,
                  logdir=args.logdir, no_eltorito=args.no_eltorito, memory=args.memory, accel=accel,
                  cpu=args.cpu, firmware_file=args.firmware_file, vars_template=args.firmware_vars,
                  on_stage=show)
    if result.cmdline is not None:
        print(f"cmdline    {result.cmdline}")
    if result.installer is not None:
        print(f"installer  {result.installer[0]} {result.installer[1]} (kernel {result.installer[2]})")
    for warning in result.warnings:
        print(f"warning    {warning}")
    print(f"logs       {result.logdir}", file=sys.stderr)
    return 0
