"""``boot()``: one verified boot, from the user's input to a BootResult.

Checks every argument before QEMU starts (a bad value is one UsageError line), prepares
the medium in a private scratch directory, starts the machine and watches it.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BootError, UsageError
from ..fsutil import private_tempdir
from ..stages import STAGES
from .accel import choose_accel
from .firmware import FIRMWARES
from .machine import DEFAULT_MEMORY, Machine, MachineConfig
from .media import boot_mode, medium_kind, prepare_medium
from .watch import BootResult, stage_budgets, watch

#: Smallest guest memory accepted (MiB).
MIN_MEMORY = 64


def check_timeout(timeout: float | None) -> None:
    """A whole-boot cap must be a positive, finite number of seconds."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")


def check_memory(memory: int) -> None:
    if not isinstance(memory, int) or memory < MIN_MEMORY:
        raise UsageError(f"memory must be at least {MIN_MEMORY} MiB, got {memory!r}")


def prepare_logdir(logdir: Path | None) -> Path:
    """*logdir*, created if needed (a new ``xcpimg-boot-*`` temp dir when None); a BootError
    naming it when it cannot be created or written."""
    if logdir is None:
        return Path(tempfile.mkdtemp(prefix="xcpimg-boot-"))
    logdir = Path(logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootError(f"cannot create log directory {logdir}: {exc.strerror or exc}") from None
    if not os.access(logdir, os.W_OK | os.X_OK):
        raise BootError(f"log directory {logdir} is not writable")
    return logdir


def boot(source: Path, firmware: str, media: str, until: str = "init", timeout: float | None = None,
         logdir: Path | None = None, no_eltorito: bool = False, *, memory: int = DEFAULT_MEMORY,
         accel: str | None = None, cpu: str | None = None, firmware_file: Path | None = None,
         vars_template: Path | None = None, on_stage: Callable[[str, float], None] | None = None,
         ) -> BootResult:
    """Boot *source* (an ISO; for ``pxe`` also a PXE tree) until *until* shows on the console.

    Each stage has its own budget (``watch.STAGE_BUDGETS``, scaled for TCG and the boot
    payload); *timeout*, when given, also caps the whole boot. Raises BootFailure (a
    BootError) naming the reason and the last console lines when a failure pattern shows,
    QEMU exits, or a budget runs out; the serial log, QEMU stderr and command line, and a
    screendump PNG are then in *logdir* (a new ``xcpimg-boot-*`` temp dir when not given).
    """
    if until not in STAGES:
        raise UsageError(f"unknown boot stage {until!r} (expected one of {', '.join(STAGES)})")
    if firmware not in FIRMWARES:
        raise UsageError(f"firmware must be one of {', '.join(FIRMWARES)}, got {firmware!r}")
    kind = medium_kind(media, no_eltorito)
    check_timeout(timeout)
    check_memory(memory)
    source = Path(source)
    if not source.exists():
        raise BootError(f"{'ISO or PXE tree' if kind == 'pxe' else 'ISO'} not found: {source}")
    for what, path in (("firmware file", firmware_file), ("OVMF VARS template", vars_template)):
        if path is not None and not Path(path).is_file():
            raise BootError(f"{what} not found: {path}")
    accel = accel or choose_accel()
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(private_tempdir("xcpimg-media-"))
        medium = prepare_medium(kind, source, firmware, work)
        logdir = prepare_logdir(logdir)
        cfg = MachineConfig(medium=medium, firmware=firmware, memory=memory, accel=accel, cpu=cpu,
                            firmware_file=firmware_file, vars_template=vars_template)
        machine = stack.enter_context(Machine(cfg, logdir))
        return watch(machine, until, stage_budgets(accel, medium.payload_bytes), on_stage, cap=timeout)
    raise AssertionError("unreachable")


def boot_in_mode(source: Path, mode: str, logdir: Path | None = None, until: str = "init",
                 **options: Any) -> BootResult:
    """boot() in a matrix mode (``bios-cd``, ``uefi-usb``, ``bios-pxe``...: see boot_mode()).
    *options* are boot()'s keyword options."""
    bm = boot_mode(mode)
    return boot(source, firmware=bm.firmware, media=bm.media, until=until, logdir=logdir,
                no_eltorito=bm.no_eltorito, **options)
