"""Host-facing pieces of boot verification: OVMF discovery, accel choice, QEMU processes
(die with the parent, no Python in the child), screen conversions. QEMU runs only in the
process test, briefly (no guest).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from xcpimg.boot import process, screen
from xcpimg.boot.accel import choose_accel, cpu_has_virt, kvm_probe
from xcpimg.boot.firmware import find_ovmf
from xcpimg.errors import BootError, UsageError

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
        assert choose_accel() == ("kvm" if kvm_probe() else "tcg")


# -- processes -------------------------------------------------------------------------------

def test_spawn_runs_no_python_in_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is setpriv exec'ing the program: no preexec_fn, same PID as the program."""
    seen: dict[str, object] = {}
    real = subprocess.Popen

    def popen(argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        seen.update(kw, argv=argv)
        return real(argv, **kw)  # type: ignore[call-overload, no-any-return]
    monkeypatch.setattr(subprocess, "Popen", popen)
    proc = process.spawn(["sleep", "30"], subprocess.DEVNULL)
    try:
        assert seen["argv"][:4] == ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"]  # type: ignore[index]
        assert seen.get("preexec_fn") is None and seen["start_new_session"] is True
        time.sleep(0.3)
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep"  # setpriv exec'd it
        assert proc.pid in process.live()
    finally:
        process.kill_group(proc)
    assert proc.returncode == -signal.SIGKILL and proc.pid not in process.live()


def test_spawned_process_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL (no atexit, no finally) still takes its child with it."""
    pidfile = tmp_path / "pid"
    code = ("import subprocess, sys, time\n"
            "from xcpimg.boot import process\n"
            f"p = process.spawn(['sleep', '60'], subprocess.DEVNULL)\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert Path(f"/proc/{child}").exists()
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# -- screens -------------------------------------------------------------------------------

def test_ppm_to_png_keeps_pixels() -> None:
    pixels = bytes(range(2 * 3 * 3))  # 2 wide, 3 high
    png = screen.ppm_to_png(b"P6\n# comment\n2 3\n255\n" + pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2, 3)
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    raw = zlib.decompress(png[41:41 + idat_len])
    assert raw == b"".join(b"\0" + pixels[y * 6:(y + 1) * 6] for y in range(3))
    with pytest.raises(ValueError):
        screen.ppm_to_png(b"P5\n2 3\n255\n" + pixels)


def test_vga_text_decodes_rows() -> None:
    text = "Booting from DVD/CD...".ljust(80) + "Failed to load ldlinux.c32".ljust(80) + " " * 80
    memory = b"".join(bytes([ord(c), 0x07]) for c in text)
    assert screen.vga_text(memory) == "Booting from DVD/CD...\nFailed to load ldlinux.c32"
