"""One QEMU VM: its command line, its process, serial console, QMP monitor and screen.

QEMU starts paused; the serial console (a unix socket read through pexpect) and QMP are
attached, then the VM runs. ``workdir`` (a private temp dir, removed on exit) holds the
sockets and the per-VM OVMF VARS copy; the log directory receives ``serial.log``,
``qemu-stderr.log`` and ``qemu-argv.txt``. No QEMU outlives its Machine.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import pexpect
import pexpect.fdpexpect
from qemu.qmp import ConnectError, ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import BootError, UsageError
from ..fsutil import remove_tree
from ..run import which
from .accel import ACCELS, QEMU, TCG_CPU
from .firmware import FIRMWARES, find_ovmf
from .media import Medium, qemu_value
from .process import kill_group, spawn
from .screen import ppm_to_png, vga_text

log = logging.getLogger("xcpimg.boot")
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)  # its INFO lines ("end-of-file") are noise

_T = TypeVar("_T")
DEFAULT_MEMORY = 2048
#: Seconds allowed for QEMU to create its sockets, and for it to exit after `quit`.
START_TIMEOUT = 15.0
QUIT_TIMEOUT = 5.0


@dataclass
class MachineConfig:
    """Everything that decides the QEMU command line."""

    medium: Medium
    firmware: str = "bios"
    memory: int = DEFAULT_MEMORY
    accel: str = "tcg"
    cpu: str | None = None
    firmware_file: Path | None = None   # OVMF code (uefi) or SeaBIOS image (bios)
    vars_template: Path | None = None   # OVMF VARS template (uefi)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARES:
            raise UsageError(f"firmware must be one of {', '.join(FIRMWARES)}, got {self.firmware!r}")
        if self.accel not in ACCELS:
            raise UsageError(f"accel must be kvm or tcg, got {self.accel!r}")

    @property
    def cpu_model(self) -> str:
        return self.cpu or ("host" if self.accel == "kvm" else TCG_CPU)


def build_argv(cfg: MachineConfig, sockdir: Path, vars_copy: Path | None, qemu: str = QEMU) -> list[str]:
    """The QEMU command line for *cfg*: paused, serial and QMP on unix sockets in *sockdir*,
    no default NIC (a network medium brings its own), then the medium's arguments."""
    argv = [qemu, "-name", f"xcpimg-{cfg.firmware}-{cfg.medium.kind}", "-machine", "pc",
            "-accel", cfg.accel, "-cpu", cfg.cpu_model, "-smp", "1" if cfg.accel == "tcg" else "2",
            "-m", str(cfg.memory), "-S", "-no-reboot", "-display", "none", "-vga", "std",
            "-nic", "none", "-monitor", "none", "-parallel", "none",
            "-chardev", f"socket,id=console,path={qemu_value(sockdir / 'serial.sock')},server=on,wait=off",
            "-serial", "chardev:console",
            "-qmp", f"unix:{qemu_value(sockdir / 'qmp.sock')},server=on,wait=off"]
    if cfg.firmware == "uefi":
        if cfg.firmware_file is None or vars_copy is None:
            raise UsageError("uefi needs the OVMF code file and a VARS copy")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_value(cfg.firmware_file)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={qemu_value(vars_copy)}"]
    elif cfg.firmware_file is not None:
        argv += ["-bios", str(cfg.firmware_file)]
    return argv + cfg.medium.qemu_args() + list(cfg.extra_args)


class Machine:
    """One QEMU VM, started paused, console and QMP attached, then running (context manager)."""

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

    def exit_code(self) -> int | None:
        """QEMU's exit code once it exited (None while it runs or before it started)."""
        return self.proc.poll() if self.proc is not None else None

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
            kill_group(self.proc)
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

