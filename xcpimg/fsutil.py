"""Atomic, never-clobbering outputs and private temporary directories.

One mechanism each:

* files: :func:`atomic_output` writes to a hidden ``.NAME.<owner>.part`` beside the
  target and publishes it with :func:`publish_file`, a no-replace primitive
  (``renameat2(RENAME_NOREPLACE)``, else ``link`` + ``unlink``, else an exclusive
  create + copy on file systems without hard links) unless *force*;
* trees: :func:`atomic_tree` / :func:`publish_tree` do the same for directories;
  with *force* the old tree is swapped out atomically (``RENAME_EXCHANGE``) or set
  aside under a name the next run restores, so it is never lost;
* temporary directories: :func:`private_tempdir` (0700, removed on any exit).

Cleanup runs with SIGINT/SIGTERM deferred (:func:`uninterrupted`), so an interrupt
cannot leave half a tree behind. Every temporary name carries its owner
(``p<pid>s<start time>-<random>``); names made outside the temp dir are also
registered there as ``xcpimg-reg-<owner>`` symlinks. :func:`sweep_leftovers`
(run by the CLI at start) removes whatever an owner that no longer runs (a
SIGKILLed run) left, and only names made here, owned by the current user.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import BuildError, UsageError

#: The owner part of every temporary name: pid, process start time (clock ticks), the pid
#: space it belongs to (machine + pid namespace), random.
_OWNER = r"p(?P<pid>\d+)s(?P<start>\d+)h(?P<space>[0-9a-f]{6})-[0-9a-f]{8}"
_TEMPDIR_RE = re.compile(r"xcpimg-.*?" + _OWNER)           # private_tempdir in the temp dir
_REGISTRY_RE = re.compile(r"xcpimg-reg-(?P<owner>" + _OWNER + ")")
_BESIDE_RE = re.compile(r"\.(?P<name>.+)\.(?P<owner>" + _OWNER + r")\.(?P<kind>part|old)")
_NAME_BYTES = 120  # of the target's name kept in a temporary name (NAME_MAX is 255)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


# ------------------------------------------------------------------------------------ owners

def _start_time(pid: int) -> int | None:
    """Start time of *pid* in clock ticks since boot (None: gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] == b"Z":
        return None
    return int(fields[19])


_space: str | None = None


def _pid_space() -> str:
    """Which pids a pid in a name refers to: this machine (machine id, else host name) and pid namespace.

    A name made in another container or on another host sharing the directory is never taken
    for a dead owner's: its pid means nothing here.
    """
    global _space
    if _space is None:
        ident = ""
        for source in ("/etc/machine-id", "/proc/self/ns/pid"):
            with contextlib.suppress(OSError):
                ident += (os.readlink(source) if source.startswith("/proc") else Path(source).read_text().strip())
        ident += os.uname().nodename
        _space = hashlib.sha256(ident.encode()).hexdigest()[:6]
    return _space


def owner_token() -> str:
    """A fresh owner tag for a temporary name of this process."""
    pid = os.getpid()
    return f"p{pid}s{_start_time(pid) or 0}h{_pid_space()}-{secrets.token_hex(4)}"


def _alive(pid: int, start: int, space: str) -> bool:
    """Whether the process that made a name (pid + start time, in pid space *space*) may still run."""
    if space != _pid_space():
        return True  # another machine's or container's: we cannot tell
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    if now is None:
        return not os.path.isdir("/proc/self")  # without /proc the signal probe is all we have
    return start == 0 or now == start


def _owner_alive(match: re.Match[str]) -> bool:
    return _alive(int(match.group("pid")), int(match.group("start")), match.group("space"))


def _tempdir() -> Path:
    return Path(tempfile.gettempdir())


def _register(path: Path, token: str) -> Path | None:
    """Record *path* (made outside the temp dir) so the next run can find it if we are killed."""
    link = _tempdir() / f"xcpimg-reg-{token}"
    try:
        os.symlink(os.path.abspath(path), link)
    except OSError:
        return None  # best effort: a full or read-only temp dir must not stop the build
    return link


def _unregister(link: Path | None) -> None:
    if link is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def _beside_name(target: Path, token: str, kind: str) -> Path:
    name = os.fsencode(target.name)[:_NAME_BYTES].decode(errors="ignore") or "x"
    return target.parent / f".{name}.{token}.{kind}"


# ------------------------------------------------------------------------------------ interrupts

_defer_lock = threading.Lock()
_deferring = {"depth": 0, "pending": 0}


def uninterrupted(fn: Callable[[], Any]) -> Any:
    """Run *fn* to its end with SIGINT/SIGTERM deferred; raise KeyboardInterrupt afterwards if one came.

    Only the main thread receives Python signal handlers, so elsewhere *fn* just runs.
    Nested calls defer to the outermost one.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    saved: dict[signal.Signals, Any] = {}
    interrupted = 0
    with _defer_lock:
        outer = _deferring["depth"] == 0
        _deferring["depth"] += 1
    try:
        if outer:
            def defer(_signo: int, _frame: object) -> None:
                _deferring["pending"] += 1
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if previous is not None:  # None: set outside Python, could not be put back
                    saved[sig] = signal.signal(sig, defer)
        result = fn()
    finally:
        with _defer_lock:
            _deferring["depth"] -= 1
        if outer:
            for signo, handler in saved.items():
                signal.signal(signo, handler)
            interrupted, _deferring["pending"] = _deferring["pending"], 0
    if outer and interrupted:
        raise KeyboardInterrupt
    return result


# ------------------------------------------------------------------------------------ renames

_libc: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) with *flags*; False when the kernel, libc or file system lacks it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018 - probe the symbol (glibc >= 2.28)
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        return False
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _exists_error(target: Path) -> UsageError:
    return UsageError(f"output {target} already exists (use --force-overwrite to replace it)")


def publish_file(tmp: Path, target: Path, force: bool = False) -> None:
    """Move the finished file *tmp* to *target* (same directory); never replace one unless *force*."""
    if force:
        if target.is_dir() and not target.is_symlink():
            raise UsageError(f"output {target} is a directory")
        os.replace(tmp, target)
        return
    try:
        if _renameat2(tmp, target, _RENAME_NOREPLACE):
            return
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise _exists_error(target) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        _copy_exclusive(tmp, target)  # no hard links here (FAT, some network file systems)
    os.unlink(tmp)


def _copy_exclusive(tmp: Path, target: Path) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, stat.S_IMODE(os.stat(tmp).st_mode))
    except FileExistsError:
        raise _exists_error(target) from None
    try:
        with open(tmp, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except BaseException:
        uninterrupted(lambda: os.unlink(target))
        raise


def publish_tree(tmp: Path, target: Path, force: bool = False) -> None:
    """Move the finished directory *tmp* to *target* (same parent); replace a tree only if *force*.

    With *force* the old tree is exchanged atomically and removed; where the kernel cannot
    exchange, it is renamed aside first, and a run killed between the two renames has it
    put back by the next run's :func:`sweep_leftovers`.
    """
    try:
        if _renameat2(tmp, target, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        if not force:
            raise _exists_error(target) from None
    else:  # no renameat2: rename(2) cannot replace a file or a non-empty directory, only an empty one
        if not os.path.lexists(target):
            os.rename(tmp, target)
            return
        if not force:
            raise _exists_error(target)
    if target.is_symlink() or not target.is_dir():
        raise UsageError(f"output {target} exists and is not a directory")

    def swap() -> None:
        if _renameat2(tmp, target, _RENAME_EXCHANGE):
            remove_tree(tmp)  # now the old tree
            return
        token = owner_token()
        aside = _beside_name(target, token, "old")
        link = _register(aside, token)
        os.rename(target, aside)
        os.rename(tmp, target)
        remove_tree(aside)
        _unregister(link)
    uninterrupted(swap)


# ------------------------------------------------------------------------------------ outputs

def check_output_path(target: Path, force: bool) -> None:
    """Refuse an output that exists (unless *force*), is a directory, or has no parent dir.

    An early, friendly check: the publishing step is what guarantees no clobbering.
    """
    if target.is_dir():
        raise UsageError(f"output {target} is a directory")
    if target.exists() or target.is_symlink():
        if not force:
            raise _exists_error(target)
    _check_parent(target)


def check_tree_output(target: Path, force: bool) -> None:
    """The same check for an output directory: it may exist only with *force*, and as a directory."""
    if os.path.lexists(target):
        if not force:
            raise _exists_error(target)
        if target.is_symlink() or not target.is_dir():
            raise UsageError(f"output {target} exists and is not a directory")
    _check_parent(target)


def _check_parent(target: Path) -> None:
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"directory of output {target} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"directory of output {target} is not writable")


def _name_output(exc: OSError, target: Path) -> None:
    """An OSError that names no file (a write on an open file: ENOSPC, EIO) is about the output."""
    if exc.filename is None and not isinstance(exc, shutil.Error):
        exc.filename = str(target)


@contextlib.contextmanager
def atomic_output(target: Path, force: bool = False, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside *target*; publish it onto *target* on success.

    Without *force* an existing *target* is never replaced, even one created while
    the output was being written (the publish then fails with the "already exists"
    error). On any exception the temporary file is removed and *target* is untouched.
    """
    target = Path(target)
    check_output_path(target, force)

    def create(tmp: Path) -> None:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    with _beside(target, create, publish_file, force, mode) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_tree(target: Path, force: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty private directory beside *target*; publish it as *target* on success.

    The same guarantees as :func:`atomic_output`, for a directory tree.
    """
    target = Path(target)
    check_tree_output(target, force)
    with _beside(target, lambda tmp: os.mkdir(tmp, 0o700), publish_tree, force, mode) as tmp:
        yield tmp


@contextlib.contextmanager
def _beside(target: Path, create: Callable[[Path], None], publish: Callable[[Path, Path, bool], None],
            force: bool, mode: int) -> Iterator[Path]:
    """The owner-tagged temporary *create*d beside *target*, published onto it with *publish* once
    the body succeeds (mode *mode*); removed, uninterruptibly, whatever happens."""
    sweep_dir(target.parent)
    token = owner_token()
    tmp = _beside_name(target, token, "part")
    link = _register(tmp, token)
    try:
        create(tmp)
        yield tmp
        os.chmod(tmp, mode)
        publish(tmp, target, force)
    except OSError as exc:
        _name_output(exc, target)
        raise
    finally:
        def cleanup() -> None:
            if os.path.lexists(tmp):
                remove_tree(tmp)
            _unregister(link)
        uninterrupted(cleanup)


# ------------------------------------------------------------------------------------ temp dirs

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
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=_make_writable)  # onerror works on 3.11 and 3.12


@contextlib.contextmanager
def private_tempdir(prefix: str = "xcpimg-", parent: Path | None = None) -> Iterator[Path]:
    """A private (0700) temporary directory, removed on exit whatever happens (even a Ctrl-C)."""
    top = Path(parent) if parent is not None else _tempdir()
    token = owner_token()
    path = top / f"{prefix}{token}"
    registered = not (_TEMPDIR_RE.fullmatch(path.name) and _same_dir(top, _tempdir()))
    link = _register(path, token) if registered else None
    try:
        os.mkdir(path, 0o700)
        yield path
    finally:
        def cleanup() -> None:
            remove_tree(path)
            _unregister(link)
        uninterrupted(cleanup)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------------ sweeping

def shown_path(path: str | os.PathLike[str]) -> str:
    """*path* as a user should read it: a temporary ``.NAME.<owner>.part`` shows as the NAME it becomes."""
    parts = os.fsdecode(path).split("/")
    for i, name in enumerate(parts):
        while m := _BESIDE_RE.fullmatch(name):
            name = m.group("name")
        parts[i] = name
    return "/".join(parts)


def _ours(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_uid == os.geteuid()
    except OSError:
        return False


def _sweep_beside(path: Path, match: re.Match[str]) -> None:
    """Remove a dead owner's ``.part`` file, or put back / drop a tree it had set aside."""
    if match.group("kind") == "old":
        original = path.parent / match.group("name")
        if not os.path.lexists(original) and len(os.fsencode(match.group("name"))) < _NAME_BYTES:
            os.rename(path, original)  # killed between the two renames: the old tree comes back
            return
    remove_tree(path)


def sweep_dir(directory: Path) -> None:
    """Remove the ``.NAME.<owner>.part`` / ``.old`` leftovers of dead owners in *directory*."""
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            m = _BESIDE_RE.fullmatch(entry.name)
            if m and _ours(entry) and not _owner_alive(m):
                with contextlib.suppress(OSError):
                    _sweep_beside(Path(entry.path), m)


def _sweep_registered(link: Path, owner: str) -> None:
    target = Path(os.readlink(link))
    m = _BESIDE_RE.fullmatch(target.name)
    if m and m.group("owner") == owner:
        with contextlib.suppress(FileNotFoundError):
            if os.lstat(target).st_uid == os.geteuid():
                _sweep_beside(target, m)
    elif target.is_absolute() and target.name.endswith(owner) and os.path.lexists(target):
        if os.lstat(target).st_uid == os.geteuid():
            remove_tree(target)  # a private_tempdir made elsewhere
    os.unlink(link)


def sweep_leftovers() -> None:
    """Remove what dead xcpimg runs of this user left: temp dirs, registered temp files and trees."""
    with contextlib.suppress(OSError), os.scandir(_tempdir()) as entries:
        for entry in list(entries):
            if not entry.name.startswith("xcpimg-") or not _ours(entry):
                continue
            with contextlib.suppress(OSError):
                reg = _REGISTRY_RE.fullmatch(entry.name)
                if reg:
                    if entry.is_symlink() and not _owner_alive(reg):
                        link, owner = Path(entry.path), reg.group("owner")
                        uninterrupted(lambda: _sweep_registered(link, owner))  # noqa: B023 - called at once
                    continue
                m = _TEMPDIR_RE.fullmatch(entry.name)
                if m and entry.is_dir(follow_symlinks=False) and not _owner_alive(m):
                    stale = Path(entry.path)
                    uninterrupted(lambda: remove_tree(stale))  # noqa: B023 - called at once


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
