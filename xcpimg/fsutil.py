"""Atomic outputs and private temporary directories.

A build writes its result to a hidden temporary name beside the target and
renames it into place only when complete; temporary trees are removed on any
exit, including Ctrl-C and SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError


def check_output_path(target: Path, force: bool) -> None:
    """Refuse an output that exists (unless *force*), is a directory, or has no parent dir."""
    if target.is_dir():
        raise UsageError(f"output {target} is a directory")
    if target.exists() or target.is_symlink():
        if not force:
            raise UsageError(f"output {target} already exists (use --force-overwrite to replace it)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"directory of output {target} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"directory of output {target} is not writable")


@contextlib.contextmanager
def atomic_output(target: Path, force: bool = False, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside *target*; rename it onto *target* on success.

    On any exception the temporary file is removed and *target* is left untouched.
    """
    target = Path(target)
    check_output_path(target, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _make_writable(func: object, path: str, _exc: object) -> None:
    """rmtree onerror hook: give the owner write access to the parent and retry."""
    with contextlib.suppress(OSError):
        parent = os.path.dirname(path)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR | stat.S_IXUSR)
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def remove_tree(path: Path) -> None:
    """Remove *path* and everything under it, even read-only subdirectories."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_make_writable)  # noqa: PTH - onerror works on 3.11 and 3.12


@contextlib.contextmanager
def private_tempdir(prefix: str = "xcpimg-", parent: Path | None = None) -> Iterator[Path]:
    """A private (0700) temporary directory removed on exit, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        remove_tree(path)
