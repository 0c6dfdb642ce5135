"""The single way xcpimg runs external programs.

Every command line is logged at DEBUG level, the environment is pinned
(TZ=UTC, LC_ALL=C, SOURCE_DATE_EPOCH) and a failure becomes a ToolError that
names the program, its exit code and the tail of its stderr.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ToolError

log = logging.getLogger("xcpimg.run")

#: Default build epoch: 2024-01-01T00:00:00Z, used when SOURCE_DATE_EPOCH is unset.
DEFAULT_EPOCH = 1704067200

#: Debian package that provides each tool, for the "not installed" hint.
TOOL_PACKAGES = {
    "dnf": "dnf", "createrepo_c": "createrepo-c", "rpm": "rpm", "rpmbuild": "rpm",
    "rpmsign": "rpm", "grub-mkimage": "grub-common", "mformat": "mtools", "mcopy": "mtools",
    "mmd": "mtools", "qemu-system-x86_64": "qemu-system-x86", "gpg": "gnupg",
    "genisoimage": "genisoimage", "isohybrid": "syslinux-utils", "xorriso": "xorriso",
    "sgdisk": "gdisk", "lftp": "lftp", "depmod": "kmod", "systemctl": "systemd",
    "apt-get": "apt", "dpkg-deb": "dpkg", "cpio": "cpio", "bzip2": "bzip2", "pbzip2": "pbzip2",
    "xz": "xz-utils", "zstd": "zstd", "isoinfo": "genisoimage", "patch": "patch", "setpriv": "util-linux",
}


#: The epochs every output format can store: efiboot.img's FAT dates start on 1980-01-01;
#: a cpio newc header (install.img, the probe initrd) holds a 32-bit mtime, up to
#: 2106-02-07T06:28:15Z (ISO9660 directory records end in 2155, FAT in 2107: both later).
EPOCH_MIN = 315532800
EPOCH_MAX = 0xFFFFFFFF


def build_epoch() -> int:
    """The epoch every timestamp of a build comes from (SOURCE_DATE_EPOCH, checked, or the default)."""
    from .errors import UsageError
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return DEFAULT_EPOCH
    if not value.isascii() or not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a number of seconds, got {value[:40]!r}")
    epoch = int(value)
    if not EPOCH_MIN <= epoch <= EPOCH_MAX:
        raise UsageError(f"SOURCE_DATE_EPOCH {value[:40]} is out of range: it must be between {EPOCH_MIN} "
                         f"(1980-01-01, the first FAT date of efiboot.img) and {EPOCH_MAX} "
                         "(2106-02-07T06:28:15Z, the last mtime a cpio newc header holds)")
    return epoch


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment external programs run in: the caller's, pinned for reproducibility."""
    env = dict(os.environ)
    env.update({"TZ": "UTC", "LC_ALL": "C", "LANG": "C", "SOURCE_DATE_EPOCH": str(build_epoch())})
    if extra:
        env.update(extra)
    return env


def which(tool: str) -> str:
    """Absolute path of *tool*, or a ToolError saying which Debian package provides it."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pkg = TOOL_PACKAGES.get(tool)
        hint = f" (install the Debian package {pkg!r})" if pkg else ""
        raise ToolError(f"{tool} is not installed{hint}", [tool])
    return path


def _tail(data: bytes | str | None, lines: int = 15) -> str:
    if not data:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(argv: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        stdout: int | None = subprocess.PIPE, stdin: int | None = None,
        check: bool = True, timeout: float | None = None, what: str | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    """Run *argv*; return the CompletedProcess, or raise ToolError on failure.

    stderr is always captured (its tail goes into the error). *what* is a short
    description of the step ("download packages") used in the error message.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s%s", shlex.join(args), f"  (cwd={cwd})" if cwd else "")
    try:
        proc = subprocess.run(args, cwd=cwd, env=tool_env(env), input=input, stdout=stdout,
                              stdin=stdin if input is None else None,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{what or Path(args[0]).name} timed out after {timeout:g} s: "
                        f"{shlex.join(args)}", args, None, _tail(exc.stderr)) from None
    except OSError as exc:
        raise ToolError(f"cannot start {args[0]}: {exc.strerror}", args) from None
    if check and proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout)
        last = tail.splitlines()[-1] if tail else "no output"
        name = Path(args[0]).name
        raise ToolError(f"{what + ': ' if what else ''}{name} failed (exit {proc.returncode}): {last}",
                        args, proc.returncode, tail)
    if proc.stderr:
        log.debug("stderr of %s:\n%s", Path(args[0]).name, _tail(proc.stderr, 40))
    return proc


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: object) -> str:
    """Run *argv* and return its stdout as text."""
    return run(argv, **kwargs).stdout.decode(errors="replace")  # type: ignore[arg-type]
