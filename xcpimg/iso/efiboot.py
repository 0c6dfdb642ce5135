"""The EFI boot image (efiboot.img): a small FAT file system made with mtools.

Reproducible: mtools stamps files and directories from SOURCE_DATE_EPOCH in
TZ=UTC (both pinned by xcpimg.run) and ``-N 0`` pins the volume serial.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ..errors import BuildError, ToolError, UsageError
from ..fsutil import atomic_output
from ..run import run

#: Size of the image the original tool makes (a 2.88 MB floppy geometry).
DEFAULT_SIZE_KIB = 2880


def _image_path(name: str) -> PurePosixPath:
    """Check and normalise a path inside the image ("EFI/BOOT/BOOTX64.EFI")."""
    path = PurePosixPath(name.strip("/"))
    if not path.parts or any(part in ("", ".", "..") for part in path.parts) or "\\" in name:
        raise UsageError(f"invalid path inside efiboot.img: {name!r}")
    return path


def mformat_argv(image: Path, size_kib: int) -> list[str]:
    """The mformat command line creating an empty FAT image of *size_kib* KiB."""
    if size_kib == DEFAULT_SIZE_KIB:
        geometry = ["-f", "2880", "-L", "16"]  # exactly what the original tool runs
    else:
        geometry = ["-T", str(size_kib * 2), "-h", "64", "-s", "32"]
    return ["mformat", "-i", str(image), "-N", "0", "-C", *geometry, "::"]


def mtools_argvs(image: Path, files: Mapping[str, Path], size_kib: int) -> list[list[str]]:
    """Every mtools command line make_efiboot runs, in order (pure: runs nothing)."""
    targets = sorted((_image_path(name), Path(src)) for name, src in files.items())
    dirs = sorted({str(parent) for path, _ in targets for parent in path.parents if str(parent) != "."},
                  key=lambda d: (d.count("/"), d))
    argvs = [mformat_argv(image, size_kib)]
    if dirs:
        argvs.append(["mmd", "-i", str(image), *(f"::/{d}" for d in dirs)])
    for path, src in targets:
        argvs.append(["mcopy", "-i", str(image), "-D", "o", str(src), f"::/{path}"])
    return argvs


def make_efiboot(output: Path, files: Mapping[str, Path], size_kib: int = DEFAULT_SIZE_KIB) -> None:
    """Write a FAT image of *size_kib* KiB at *output* holding *files* (image path -> source).

    Output is written atomically (an existing file is replaced). Raises BuildError
    when a source file is missing or the files do not fit.
    """
    if size_kib < 64:
        raise UsageError(f"efiboot image size must be at least 64 KiB, got {size_kib}")
    total = 0
    for name, src in files.items():
        _image_path(name)
        src = Path(src)
        if not src.is_file():
            raise BuildError(f"file for efiboot.img:/{name.strip('/')} not found: {src}")
        if not os.access(src, os.R_OK):
            raise BuildError(f"file for efiboot.img:/{name.strip('/')} is not readable: {src}")
        total += src.stat().st_size
    if (total + 1023) // 1024 > size_kib:  # cannot fit; mcopy reports the closer cases
        raise BuildError(f"files for efiboot.img ({(total + 1023) // 1024} KiB) do not fit "
                         f"in a {size_kib} KiB image")
    with atomic_output(Path(output), force=True) as tmp:
        for argv in mtools_argvs(tmp, files, size_kib):
            try:
                run(argv, what="make efiboot.img")
            except ToolError as exc:
                if "disk full" in (exc.stderr_tail or "").lower():
                    raise BuildError(f"files for efiboot.img ({(total + 1023) // 1024} KiB) do not fit "
                                     f"in a {size_kib} KiB image") from None
                raise
