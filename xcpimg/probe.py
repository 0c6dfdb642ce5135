"""Write the probe initrd: a stand-in install.img whose /init reports the boot and powers off.

The initrd is a gzip-compressed newc cpio holding Debian's static busybox. Its ``/init``
mounts proc, sys and devtmpfs, prints the init marker and ``/proc/cmdline`` (see
``xcpimg.stages``; before them, when ``answerfile=file:///X`` is on the command line and X
exists, ``xcpimg-answerfile: /X <root element>``) on the console and on ``/dev/hvc0`` (the serial line under Xen), then
powers off. Same busybox, same epoch: same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import stat
from dataclasses import dataclass
from pathlib import Path

from . import cpio, debs
from .fsutil import atomic_output, private_tempdir
from .run import build_epoch
from .stages import ANSWERFILE_PREFIX, CMDLINE_PREFIX, INIT_MARKER

#: Debian package holding the static busybox.
BUSYBOX_PACKAGE = "busybox-static"
#: Applets /init uses (linked in /bin).
APPLETS = ("cat", "echo", "ls", "mkdir", "mount", "poweroff", "printf", "sed", "sh", "sleep", "tr")

INIT_SCRIPT = f"""#!/bin/sh
# xcpimg probe initrd: report that init runs, with the kernel command line, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
cmdline="$(cat /proc/cmdline)"
answer=""
for word in $cmdline; do
    case "$word" in
        answerfile=file://*)
            file="${{word#answerfile=file://}}"
            if [ -f "$file" ]; then
                # the first element that is not a declaration, comment or doctype
                root="$(tr '\\n' ' ' < "$file" | sed -e 's/<[?!][^>]*>//g' \\
                    -e 's/^[^<]*<\\([A-Za-z_][-A-Za-z0-9_.:]*\\).*/\\1/')"
                answer="{ANSWERFILE_PREFIX}$file $root"
            fi ;;
    esac
done
for tty in /dev/hvc0 /dev/console; do
    if [ -c "$tty" ]; then
        if [ -n "$answer" ]; then
            printf '\\n%s' "$answer" > "$tty" 2>/dev/null
        fi
        printf '\\n%s\\n%s%s\\n' '{INIT_MARKER}' '{CMDLINE_PREFIX}' "$cmdline" > "$tty" 2>/dev/null
    fi
done
sleep 1
poweroff -f
sleep 30
"""


@dataclass(frozen=True)
class Entry:
    """One cpio member: path without leading slash, mode (with file type), data, device."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[Entry], mtime: int) -> bytes:
    """A newc cpio of *entries* sorted by path: uid/gid 0, fixed mtime, inodes numbered in order."""
    out = io.BytesIO()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        out.write(cpio.header(ino=ino, mode=entry.mode, nlink=2 if stat.S_ISDIR(entry.mode) else 1,
                              mtime=mtime, size=len(entry.data), rdevmajor=entry.rdev[0],
                              rdevminor=entry.rdev[1], name=entry.path.encode()))
        out.write(entry.data + b"\0" * (-len(entry.data) % 4))
    out.write(cpio.header(ino=0, mode=0, nlink=1, mtime=0, size=0, name=cpio.TRAILER.encode()))
    return out.getvalue() + b"\0" * (-out.tell() % cpio.BLOCK)


def probe_entries(busybox: bytes) -> list[Entry]:
    """The members of the probe initrd around the given busybox binary."""
    dirs = ["bin", "dev", "proc", "sys", "tmp"]
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries += [Entry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in APPLETS]
    entries.append(Entry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()))
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    return entries


def busybox_binary() -> bytes:
    """The static busybox from Debian's busybox-static (fetched and cached by xcpimg.debs)."""
    deb = debs.fetch(BUSYBOX_PACKAGE)
    with private_tempdir("xcpimg-busybox-") as tmp:
        root = debs.extract(deb, tmp / "root")
        return (root / "bin" / "busybox").read_bytes()


def build_probe_initrd(output: Path, force: bool = False) -> None:
    """Write the probe initrd to *output* atomically (refusing to overwrite unless *force*)."""
    archive = newc_archive(probe_entries(busybox_binary()), build_epoch())
    with atomic_output(Path(output), force=force) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                   compresslevel=9, mtime=0) as gz:
            gz.write(archive)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, help="initrd file to write")
    parser.add_argument("--force-overwrite", action="store_true", help="replace an existing output")


def command(args: argparse.Namespace) -> int:
    build_probe_initrd(args.output, force=args.force_overwrite)
    print(args.output)
    return 0
