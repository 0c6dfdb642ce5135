"""The shared package cache: downloaded RPMs kept by the checksum their repodata gives.

Layout: ``<cache>/packages/<algo>/<2 hex>/<digest>/<name>.rpm`` (``<cache>`` is
$XCPIMG_CACHE, else ~/.cache/xcpimg). An entry is a directory holding one file;
it is filled in a private ``.<digest>.<owner>.part`` directory, checked against
the repodata's size and checksum, and published with the no-replace rename of
xcpimg.fsutil: readers never see a half-written entry, and when two processes
(or xdist workers) insert the same package at once, one wins and the other uses
its entry. No lock is needed.

An entry is checked again (size and checksum) every time it is used: a damaged
one is removed and fetched again. Using an entry sets its directory's mtime,
which is what least-recently-used pruning sorts by (file times cannot serve:
builds hard-link the file and set its times). Files are read-only (0444).

``xcpimg cache info`` shows the size, ``xcpimg cache prune [--max-size SIZE]``
trims it; builds prune to the default bound after each download.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .debs import cache_root
from .errors import BuildError, UsageError
from .fsutil import atomic_tree, remove_tree, uninterrupted
from .mirror.repodata import Expect, file_matches
from .progress import human

log = logging.getLogger("xcpimg.cache")

#: size bound applied after each build's downloads (``xcpimg cache prune --max-size`` for another)
DEFAULT_MAX_SIZE = 20 * 10**9
_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*\.rpm")
_ALGOS = ("sha256", "sha384", "sha512", "sha224", "sha1", "md5")


def cache_dir() -> Path:
    """Where the package cache lives (``packages/`` under xcpimg's cache directory)."""
    return cache_root() / "packages"


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5GiB``, ``123`` (bytes) -> bytes; UsageError otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not m:
        raise UsageError(f"invalid size {text!r} (e.g. 500M, 20G)")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


@dataclass(frozen=True)
class Entry:
    """One cached package."""

    path: Path      # the file
    size: int
    used: float     # last use (the entry directory's mtime)


class PackageCache:
    """The package cache rooted at *root* (default :func:`cache_dir`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir()
        self._checked: dict[Path, tuple[int, int, int]] = {}  # entries hashed by this object

    @staticmethod
    def keyable(expect: Expect) -> bool:
        """Whether a package with this repodata entry can be cached (a known checksum and size)."""
        return (expect.algo in _ALGOS and expect.size is not None and expect.digest is not None
                and re.fullmatch(r"[0-9a-f]{32,128}", expect.digest) is not None)

    def entry_dir(self, expect: Expect) -> Path:
        if not self.keyable(expect):
            raise BuildError("a package without a repodata checksum cannot be cached")
        assert expect.digest is not None and expect.algo is not None
        return self.root / expect.algo / expect.digest[:2] / expect.digest

    def get(self, expect: Expect) -> Path | None:
        """The cached file for *expect*, checked again; None if absent (a damaged entry is removed)."""
        d = self.entry_dir(expect)
        try:
            names = [n for n in os.listdir(d) if _NAME_RE.fullmatch(n)]
        except FileNotFoundError:
            return None
        path = d / names[0] if len(names) == 1 else None
        if path is None or not (self._unchanged(path) or file_matches(path, expect)):
            log.warning("warning: cache entry %s is damaged: removing it, the package is fetched again", d)
            uninterrupted(lambda: remove_tree(d))
            return None
        with contextlib.suppress(OSError):
            os.utime(d)  # last use, for pruning
            self._checked[path] = self._identity(path)
        return path

    @staticmethod
    def _identity(path: Path) -> tuple[int, int, int]:
        st = os.lstat(path)
        return st.st_ino, st.st_size, st.st_mtime_ns  # not ctime: hard-linking an entry changes it

    def _unchanged(self, path: Path) -> bool:
        """Whether *path* was checked by this object and its inode, size and times are the same since."""
        try:
            return self._checked.get(path) == self._identity(path)
        except OSError:
            return False

    def put(self, name: str, expect: Expect, fill: Callable[[Path], object]) -> Path:
        """Insert the package *name*: ``fill(path)`` writes it; it must match *expect*
        (checked here unless *fill* returns True: it checked the bytes as it wrote them).

        Returns the entry's file. If another process published the same entry first,
        that entry is used (and this one dropped).
        """
        if not _NAME_RE.fullmatch(name):
            raise BuildError(f"package file {name!r} has an unexpected name: refusing it")
        d = self.entry_dir(expect)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_tree(d) as tmp:
                if fill(tmp / name) is not True and not file_matches(tmp / name, expect):
                    raise BuildError(f"package {name} does not match the size and {expect.algo} checksum "
                                     f"its repository's metadata gives")
                os.chmod(tmp / name, 0o444)
            self._checked[d / name] = self._identity(d / name)
            return d / name
        except UsageError:  # "already exists": another process won the race
            pass
        found = self.get(expect)
        if found is None:
            raise BuildError(f"cache entry {d} vanished while it was being inserted")
        return found

    def entries(self) -> list[Entry]:
        """Every published entry (hidden ``.part`` directories are skipped)."""
        out: list[Entry] = []
        for algo in _ALGOS:
            top = self.root / algo
            if not top.is_dir():
                continue
            for shard in os.scandir(top):
                if not shard.is_dir(follow_symlinks=False) or shard.name.startswith("."):
                    continue
                for d in os.scandir(shard.path):
                    if d.name.startswith(".") or not d.is_dir(follow_symlinks=False):
                        continue
                    with contextlib.suppress(OSError):
                        for f in os.scandir(d.path):
                            if _NAME_RE.fullmatch(f.name):
                                out.append(Entry(Path(f.path), f.stat(follow_symlinks=False).st_size,
                                                 d.stat(follow_symlinks=False).st_mtime))
        return out

    def size(self) -> tuple[int, int]:
        """(number of entries, bytes)."""
        es = self.entries()
        return len(es), sum(e.size for e in es)

    def prune(self, max_size: int = DEFAULT_MAX_SIZE) -> tuple[int, int]:
        """Remove the least recently used entries until the cache holds at most *max_size* bytes;
        return (entries removed, bytes freed)."""
        kept = removed = freed = 0
        for e in sorted(self.entries(), key=lambda e: e.used, reverse=True):
            if kept + e.size <= max_size:
                kept += e.size
                continue
            with contextlib.suppress(FileNotFoundError):
                uninterrupted(lambda e=e: remove_tree(e.path.parent))  # type: ignore[misc]
                removed += 1
                freed += e.size
        if removed:
            log.info("cache: pruned %d package(s), %s (now %s)", removed, human(freed), human(kept))
        return removed, freed


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link *src* to *dest* (same file system), else copy it; *dest* must not exist."""
    try:
        os.link(src, dest)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
            raise
    import shutil
    shutil.copyfile(src, dest)


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_cmd", metavar="ACTION", required=True)
    sub.add_parser("info", help="show where the package cache is and how large")
    p = sub.add_parser("prune", help="remove the least recently used packages beyond a size")
    p.add_argument("--max-size", default=str(DEFAULT_MAX_SIZE), metavar="SIZE",
                   help="keep at most SIZE (e.g. 500M, 20G; 0 empties the cache; default 20G)")


def command(args: argparse.Namespace) -> int:
    cache = PackageCache()
    if args.cache_cmd == "info":
        n, size = cache.size()
        es = cache.entries()
        oldest = min((e.used for e in es), default=None)
        print(f"package cache: {cache.root}")
        print(f"packages: {n}, size: {human(size)} (bound {human(DEFAULT_MAX_SIZE)})")
        if oldest is not None:
            print(f"least recently used: {time.strftime('%Y-%m-%d %H:%M', time.localtime(oldest))}")
        return 0
    removed, freed = cache.prune(parse_size(args.max_size))
    n, size = cache.size()
    print(f"pruned {removed} package(s), {human(freed)}; {n} left, {human(size)}")
    return 0
