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

from .errors import BuildError, UsageError


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


# ---------------------------------------------------------------- copying untrusted trees

_MAX_HOPS = 40


def tree_link_target(link: Path, top: Path, *, rooted: bool = False, what: str | None = None) -> str:
    """The target of the symlink *link* of tree *top*, if resolving it never leaves *top*.

    The link is resolved inside the tree, never on the host: links it passes
    through are followed within the tree, and ``..`` above *top*, a loop or
    (unless *rooted*) an absolute target is a BuildError naming the link
    (and *what*, the tree, default its path). With *rooted* the tree is a root
    filesystem: an absolute target starts at *top*.
    """
    target = os.readlink(link)
    rel = link.relative_to(top)
    hops = [0]

    def refuse(why: str) -> BuildError:
        return BuildError(f"{what or top}: symlink {rel} -> {target} {why}: refusing to copy it")

    def resolve(current: list[str], path: str) -> list[str]:
        if path.startswith("/"):
            if not rooted:
                raise refuse("is absolute (it points outside its tree)")
            current = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise refuse("points outside its tree")
                current = current[:-1]
                continue
            candidate = top.joinpath(*current, part)
            if candidate.is_symlink():
                hops[0] += 1
                if hops[0] > _MAX_HOPS:
                    raise refuse("is part of a symlink loop")
                current = resolve(current, os.readlink(candidate))
            else:
                current = [*current, part]
        return current

    resolve(list(rel.parent.parts), target)
    return target


def copy_node(src: Path, dest: Path, top: Path, *, rooted: bool = False, what: str | None = None) -> None:
    """Copy one entry *src* of tree *top* to *dest*: a file (mode kept), a directory (created) or a
    symlink, as a link, if it stays inside *top* (tree_link_target). Nothing is ever followed."""
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = tree_link_target(src, top, rooted=rooted, what=what)
        if dest.is_symlink():
            dest.unlink()
        os.symlink(target, dest)
    elif stat.S_ISDIR(st.st_mode):
        dest.mkdir(mode=stat.S_IMODE(st.st_mode) | stat.S_IRWXU, exist_ok=True)
    elif stat.S_ISREG(st.st_mode):
        if dest.is_symlink():
            dest.unlink()
        shutil.copyfile(src, dest, follow_symlinks=False)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
    else:
        raise BuildError(f"{what or top}: {src.relative_to(top)} is not a regular file, directory or "
                         f"symlink: refusing to copy it")


def copy_tree(src: Path, dest: Path, *, rooted: bool = False, what: str | None = None) -> int:
    """Copy the tree *src* to *dest* with copy_node (links kept as links, never followed out).

    Returns the number of entries copied.
    """
    if src.is_symlink() or not src.is_dir():
        raise BuildError(f"{what or src}: not a directory (a symlink is never followed): refusing to copy it")
    count = 0
    dest.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):  # never descends into linked directories
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            copy_node(here / name, dest / here.relative_to(src) / name, src, rooted=rooted, what=what)
            count += 1
    return count
