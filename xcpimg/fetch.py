"""Fetch the packages dnf chose, through the shared package cache.

dnf resolves (``dnf download --url``); this module gets the files. Each package is
known by its URL and by what its repository's ``primary.xml`` says of it (size and
checksum, from the metadata dnf itself downloaded). A package found in the cache is
hard-linked (else copied) into place; one that is not is downloaded over HTTP(S)
by a pool of connections (xcpimg.mirror's transfer layer: retries, stall timeouts,
checked redirects), verified, inserted into the cache and then linked. Packages of
``file://`` repositories are copied from the repository and verified, without
caching (reading them is as cheap as reading the cache).

Signatures are not this module's business: the caller checks every file it returns
(xcpimg.verify), cached or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from . import progress
from .cache import PackageCache, link_or_copy
from .errors import BuildError
from .mirror.repodata import Expect, file_matches, parse_primary, parse_repomd
from .mirror.transfer import _Http, _Permanent, _Retryable, _Stopped

log = logging.getLogger("xcpimg.fetch")

#: parallel downloads (each its own keep-alive connection)
JOBS = 8


@dataclass
class FetchStats:
    """What one fetch did."""

    downloaded: int = 0
    downloaded_bytes: int = 0
    cached: int = 0
    local: int = 0
    paths: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.downloaded} downloaded ({progress.human(self.downloaded_bytes)}), {self.cached} from the "
                f"package cache, {self.local} copied from local repositories")


def repo_expectations(cachedir: Path, repo_ids: list[str], baseurls: dict[str, str]) -> dict[str, Expect]:
    """Package URL -> Expect, from the primary.xml of each repository in dnf's *cachedir*.

    dnf keeps each repository's metadata in ``<cachedir>/<repoid>-<hash>/repodata``;
    a ``file://`` repository's metadata is read in place when dnf did not copy it.
    """
    out: dict[str, Expect] = {}
    for repo in repo_ids:
        base = baseurls.get(repo)
        if not base:
            continue
        dirs = sorted(cachedir.glob(f"{repo}-*/repodata/repomd.xml"))
        local = urllib.parse.urlsplit(base)
        if not dirs and local.scheme == "file":
            dirs = [Path(urllib.parse.unquote(local.path)) / "repodata/repomd.xml"]
        for repomd in dirs:
            if not repomd.is_file():
                continue
            meta = parse_repomd(repomd.read_bytes())
            if "primary" not in meta:
                continue
            primary = repomd.parent / Path(meta["primary"][0]).name
            if not primary.is_file() and local.scheme == "file":
                primary = Path(urllib.parse.unquote(local.path)) / meta["primary"][0]
            if not primary.is_file():
                continue
            prefix = base.rstrip("/") + "/"
            for href, exp in parse_primary(primary).items():
                out[prefix + href] = exp
    return out


def _name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1]


def _lookup(expects: dict[str, Expect], url: str) -> Expect | None:
    """*url*'s entry; failing an exact match (a baseurl with dnf variables, a mirror dnf picked),
    the one entry whose repository path (``Packages/x.rpm``) ends the URL, if only one does."""
    parts = urllib.parse.urlsplit(url)
    plain = urllib.parse.urlunsplit(parts._replace(path=urllib.parse.unquote(parts.path)))
    for candidate in (url, plain):
        if candidate in expects:
            return expects[candidate]
    tail = urllib.parse.unquote(parts.path)
    found = {exp for key, exp in expects.items() if _same_tail(tail, key)}
    return found.pop() if len(found) == 1 else None


def _same_tail(path: str, key_url: str) -> bool:
    """Whether *path* ends with the part of *key_url* after its repository's base (two components:
    ``Packages/name.rpm``)."""
    key_path = urllib.parse.urlsplit(key_url).path.rstrip("/").split("/")
    return path.rstrip("/").split("/")[-2:] == key_path[-2:]


def fetch_packages(urls: list[str], expects: dict[str, Expect], dest: Path,
                   cache: PackageCache | None, jobs: int = JOBS) -> FetchStats:
    """Put the package at each of *urls* into *dest* (named as in the URL); return what it took.

    *expects* gives each URL's size and checksum (:func:`repo_expectations`); a package
    without them cannot be verified or cached and is refused.
    """
    dest.mkdir(parents=True, exist_ok=True)
    stats = FetchStats()
    todo: list[tuple[str, Expect, Path]] = []
    for url in dict.fromkeys(urls):
        exp = _lookup(expects, url)
        if exp is None or not PackageCache.keyable(exp):
            raise BuildError(f"package {url} has no size and checksum in its repository's metadata: "
                             f"cannot verify it")
        target = dest / _name(url)
        stats.paths.append(target)
        if os.path.lexists(target):
            if file_matches(target, exp):
                stats.local += 1
                continue
            os.unlink(target)
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "file":
            _copy_local(url, exp, target)
            stats.local += 1
        elif scheme not in ("http", "https"):
            raise BuildError(f"cannot fetch package {url}: unsupported URL scheme {scheme!r}")
        elif cache is not None and (hit := cache.get(exp)) is not None:
            _place(hit, target, cache, exp)
            stats.cached += 1
        else:
            todo.append((url, exp, target))
    if todo:
        todo.sort(key=lambda item: item[1].size or 0, reverse=True)  # the biggest never start last
        _download_all(todo, cache, stats, jobs)
    log.info("packages: %s", stats.summary())
    return stats


def _copy_local(url: str, exp: Expect, target: Path) -> None:
    src = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    try:
        shutil.copyfile(src, target)
    except OSError as exc:
        raise BuildError(f"cannot read package {src}: {exc.strerror or exc}") from None
    if not file_matches(target, exp):
        raise BuildError(f"package {src} does not match the size and {exp.algo} checksum of its "
                         f"repository's metadata")


def _place(entry: Path, target: Path, cache: PackageCache, exp: Expect) -> None:
    """Link a cache entry into place; an entry pruned meanwhile is fetched by the caller again."""
    try:
        link_or_copy(entry, target)
    except FileNotFoundError:
        again = cache.get(exp)
        if again is None:
            raise BuildError(f"cache entry {entry} vanished (pruned by another process?): run again") from None
        link_or_copy(again, target)


def _download_all(todo: list[tuple[str, Expect, Path]], cache: PackageCache | None, stats: FetchStats,
                  jobs: int) -> None:
    stop = threading.Event()
    http = _Http(stop)
    lock = threading.Lock()
    total = sum(exp.size or 0 for _u, exp, _t in todo)
    bar = progress.bar(f"downloading {len(todo)} package(s)", total)

    def one(url: str, exp: Expect, target: Path) -> None:
        try:
            if cache is None:
                http.download(url, target, exp, bar.update)
            else:
                def fill(tmp: Path) -> bool:
                    http.download(url, tmp, exp, bar.update)  # checks size and checksum as it writes
                    return True
                entry = cache.put(target.name, exp, fill)
                _place(entry, target, cache, exp)
        except (_Permanent, _Retryable) as exc:
            raise BuildError(f"cannot download package {url}: {exc}") from None
        with lock:
            stats.downloaded += 1
            stats.downloaded_bytes += exp.size or 0

    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="fetch")
    try:
        futures = [pool.submit(one, *item) for item in todo]
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in done:
            exc = fut.exception()
            if exc is not None and not isinstance(exc, _Stopped):
                raise exc
    except BaseException:
        http.abort()  # transfers in flight stop at once; queued ones are cancelled
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        http.close()
        bar.close()
