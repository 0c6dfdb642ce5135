"""Accelerator choice: KVM only when a probe guest really runs under it, TCG otherwise.

The machine this was written on has a ``/dev/kvm`` whose guests all die with
``KVM internal error`` (OVMF within 0.1 s) while QEMU stays up, paused (REFERENCE
section 3): the verdict comes from the CPU flags plus a probe guest's stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..errors import BootError, UsageError
from ..run import which
from .firmware import find_ovmf
from .media import qemu_value
from .process import kill_group, spawn

log = logging.getLogger("xcpimg.boot")

QEMU = "qemu-system-x86_64"
ACCELS = ("kvm", "tcg")
#: CPU model under TCG: `max` makes Debian's dom0 die under Xen (SMAP fault); Xen's CI uses qemu64.
TCG_CPU = "qemu64"


def cpu_has_virt(cpuinfo: str) -> bool:
    """True when a `flags` line of /proc/cpuinfo text lists vmx or svm."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            if {"vmx", "svm"} & set(line.partition(":")[2].split()):
                return True
    return False


def kvm_probe(seconds: float = 3.0) -> bool:
    """Run a tiny guest (OVMF, else SeaBIOS, no devices) under KVM; True when it keeps running."""
    try:
        code, _vars = find_ovmf()
        fw = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu_value(code)}"]
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
            kill_group(proc)
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
        if forced not in ACCELS:
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
