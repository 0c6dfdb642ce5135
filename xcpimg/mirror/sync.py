"""A mirror run: crawl, stage repodata, sync files in a thread pool, swap repodata in, prune."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import lzma
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .. import progress as progress_display
from ..errors import UsageError, XcpimgError
from ..fsutil import private_tempdir, publish_tree, remove_tree
from .listing import (
    MAX_DEPTH,
    NAME_MAX,
    TEMP_PREFIX,
    _check_dest,
    _safe_name,
    child_links,
    compile_excludes,
    is_excluded,
    resolve_source,
)
from .repodata import Expect, _digest_matches, _file_matches, _Repo, _sized_file, parse_primary, parse_repomd
from .transfer import _describe, _Http, _ipv4_only, _last_modified, _Permanent, _Retryable, _Stopped

log = logging.getLogger("xcpimg.mirror")

# ---------------------------------------------------------------------------------------------
# results and errors

@dataclass
class MirrorStats:
    """What a mirror run did (or, with dry_run, would do)."""

    fetched: int = 0
    bytes: int = 0
    deleted: int = 0
    skipped: int = 0
    excluded: int = 0
    verified: int = 0      # local packages hashed and found right
    corrupt: list[str] = field(default_factory=list)  # local packages that did not match repodata
    failed: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # "fetch X", "delete Y", "update Z/repodata/"
    seconds: float = 0.0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would fetch" if self.dry_run else "fetched"
        dverb = "would delete" if self.dry_run else "deleted"
        text = (f"{verb} {self.fetched} files ({progress_display.human(self.bytes)}), {dverb} {self.deleted}, "
                f"skipped {self.skipped} unchanged, excluded {self.excluded}")
        if self.corrupt:
            text += f", {len(self.corrupt)} corrupt ({'reported' if self.dry_run else 'fetched again'})"
        if self.failed:
            text += f", {len(self.failed)} failed"
        return f"{text} in {self.seconds:.1f} s"


class MirrorError(XcpimgError):
    """Some files could not be mirrored; ``stats`` tells what was done."""

    def __init__(self, message: str, stats: MirrorStats) -> None:
        super().__init__(message)
        self.stats = stats


class _Progress:
    """Files done out of the total as a bar, bytes and rate after it (xcpimg.progress, on request)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.nbytes = 0
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._bar = progress_display.bar("", unit="file", show=False)

    def start(self, total: int) -> None:
        self._bar = progress_display.bar("", total, unit="file", show=self.enabled, ascii="-#",
                                         bar_format="[{bar:30}] {n_fmt}/{total_fmt} files  {postfix}")

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.nbytes += n
            rate = self.nbytes / max(time.monotonic() - self._t0, 1e-3)
            human = progress_display.human
            self._bar.set_postfix_str(f"{human(self.nbytes)}  {human(rate)}/s", refresh=False)

    def file_done(self) -> None:
        with self._lock:
            self._bar.update(1)

    def close(self) -> None:
        was_shown = not self._bar.disable
        self._bar.close()
        if was_shown and self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.enabled = False


# ---------------------------------------------------------------------------------------------
# the mirror run

#: a unit of work for the pool: (function, arguments)
_Task = tuple[Callable[..., Any], tuple[Any, ...]]


class _Run:
    def __init__(self, base_url: str, dest: Path, jobs: int, excludes: list[re.Pattern[str]],
                 delete: bool, dry_run: bool, progress: bool, verify: bool = False) -> None:
        self.base_url = base_url
        self.verify = verify  # hash every local package, even those the live repodata vouches for
        self.dest = dest
        self.jobs = jobs
        self.excludes = excludes
        self.delete = delete
        self.dry_run = dry_run
        self.stats = MirrorStats(dry_run=dry_run)
        self.stop = threading.Event()
        self.http = _Http(self.stop)
        self.progress = _Progress(progress)
        self.files: dict[str, str] = {}   # rel -> url
        self.dirs: set[str] = set()       # rel of each directory, ending in "/"
        self.crawl_complete = True
        self.repos: dict[str, _Repo] = {}
        self.real_dest = ""
        self._made_dirs: set[str] = set()
        self._listed: set[str] = set()    # listing URLs read (after redirects): loop detection
        self._lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------
    def fail(self, rel: str, message: str) -> None:
        with self._lock:
            self.stats.failed.append(f"{rel or '/'}: {message}")
        log.debug("mirror: %s: %s", rel or "/", message)  # all are listed on stdout at the end

    def change(self, line: str) -> None:
        with self._lock:
            self.stats.changes.append(line)
        log.debug("mirror: %s", line)

    def local(self, rel: str) -> Path:
        return self.dest / rel

    def make_dirs(self, rel_dir: str) -> Path:
        """Create dest/rel_dir, refusing any existing component that leads outside dest."""
        path = self.dest
        done = ""
        for part in [p for p in rel_dir.split("/") if p]:
            path = path / part
            done += part + "/"
            if done in self._made_dirs:
                continue
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([real, self.real_dest]) != self.real_dest:
                    raise _Permanent(f"refusing to write through symlink {path} (points outside {self.dest})")
            if os.path.lexists(path) and not os.path.isdir(path):
                raise _Permanent(f"{path} exists and is not a directory")
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
                os.chmod(path, 0o755)  # readable by a web server whatever the umask
            with self._lock:
                self._made_dirs.add(done)
        return path

    def run_pool(self, pool: ThreadPoolExecutor, tasks: Iterable[_Task],
                 on_done: Callable[[Future[Any]], Iterable[_Task]]) -> None:
        """Run tasks in *pool*; *on_done* may return follow-up tasks. Stops cleanly on interrupt."""
        pending = {pool.submit(fn, *args) for fn, args in tasks}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    for fn, args in on_done(fut):
                        pending.add(pool.submit(fn, *args))
        except BaseException:
            self.http.abort()  # stops every worker at its next read, or at once if it is blocked in one
            for fut in pending:
                fut.cancel()
            wait(pending)
            raise

    # -- crawl ---------------------------------------------------------------------------
    def list_dir(self, rel: str) -> list[tuple[str, bool]]:
        """The children of directory *rel*. Refuses a directory deeper than MAX_DEPTH and one
        whose listing is (after redirects) a listing already read or outside the tree."""
        if rel.count("/") > MAX_DEPTH:
            raise _Permanent(f"deeper than {MAX_DEPTH} levels (an endless directory tree?)")
        url = self.base_url + urllib.parse.quote(rel)
        r = self.http.get_small(url, within=self.base_url if rel else None)
        ctype = r.headers.get("Content-Type", "")
        if "html" not in ctype.lower():
            raise _Permanent(f"not a browsable directory listing (Content-Type {ctype or 'missing'})")
        final = r.url
        if not rel:  # the root as given: follow its redirect, and treat it as a directory
            self.base_url = final if final.endswith("/") else final + "/"
            final = self.base_url
        with self._lock:
            if final in self._listed:
                raise _Permanent(f"listing redirects to {final}, already listed (a loop)")
            self._listed.add(final)
        malformed: list[str] = []
        children = child_links(final, r.text, malformed)
        if malformed:  # the good entries are still mirrored; the run fails and deletes nothing
            self.fail(rel, f"listing links to a {malformed[0]}")
        return children

    def crawl(self, pool: ThreadPoolExecutor) -> None:
        try:
            root = self.list_dir("")
        except _Permanent as exc:
            raise XcpimgError(f"cannot mirror {self.base_url}: {exc}") from None
        except requests.RequestException as exc:
            raise XcpimgError(f"cannot mirror {self.base_url}: {_describe(exc)}") from None
        if not root:
            raise XcpimgError(f"cannot mirror {self.base_url}: no browsable directory listing there "
                              "(the page links to no files or directories)")

        def children(rel: str, entries: list[tuple[str, bool]]) -> list[_Task]:
            follow = []
            for name, is_dir in entries:
                child = rel + name + ("/" if is_dir else "")
                if len(os.fsencode(name)) > NAME_MAX:
                    self.fail(child, f"name longer than {NAME_MAX} bytes: cannot be stored locally")
                    continue
                if is_excluded(child, self.excludes):
                    self.stats.excluded += 1  # only the main thread crawls
                    continue
                if is_dir:
                    self.dirs.add(child)
                    follow.append((self._list_task, (child,)))
                else:
                    self.files[child] = self.base_url + urllib.parse.quote(child)
            return follow

        def on_done(fut: Future[Any]) -> list[_Task]:
            rel, entries = fut.result()
            if entries is None:
                self.crawl_complete = False
                return []
            return children(rel, entries)

        self.run_pool(pool, children("", root), on_done)

    def _list_task(self, rel: str) -> tuple[str, list[tuple[str, bool]] | None]:
        try:
            return rel, self.list_dir(rel)
        except _Permanent as exc:
            self.fail(rel, f"cannot list: {exc}")
            return rel, None

    # -- repodata ------------------------------------------------------------------------
    def prepare_repo(self, repo: _Repo, tmp_root: Path) -> None:
        """Read the new repodata (staging it when it changed) and the live one."""
        md_rel = repo.rel + "repodata/"
        url = self.base_url + urllib.parse.quote(md_rel + "repomd.xml")
        resp = self.http.get_small(url)
        new = resp.content
        try:
            entries = parse_repomd(new)
        except (ET.ParseError, ValueError) as exc:
            raise _Permanent(f"bad repomd.xml: {exc}") from None
        live = self.local(md_rel)
        live_repomd = live / "repomd.xml"
        old_bytes = b""
        if os.path.isfile(live_repomd) and not os.path.islink(live_repomd):
            old_bytes = live_repomd.read_bytes()
        # the packages the live repodata lists were verified against it when it was put in place
        # (a file modified locally since then has a newer mtime, so it is checked again)
        if old_bytes:
            repo.trusted_until = os.lstat(live_repomd).st_mtime
            with contextlib.suppress(ET.ParseError, OSError, EOFError, lzma.LZMAError, ValueError):
                old = parse_repomd(old_bytes)
                if "primary" in old:
                    prim = self.local(repo.rel + old["primary"][0])
                    if _file_matches(prim, old["primary"][1]):
                        repo.trusted = {repo.rel + k: v for k, v in parse_primary(prim).items()}
        for href, exp in entries.values():
            repo.metadata[repo.rel + href] = exp
        unchanged = new == old_bytes and all(_file_matches(self.local(rel), exp)
                                             for rel, exp in repo.metadata.items())
        if unchanged:
            repo.metadata[md_rel + "repomd.xml"] = Expect(len(new), "sha256", hashlib.sha256(new).hexdigest())
        else:
            parent = tmp_root if self.dry_run else self.make_dirs(repo.rel)
            repo.stage = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "repodata-", dir=parent))
            self.stage_repodata(repo, new, _last_modified(resp))
            self.change(f"update {md_rel}")
        if "primary" not in entries:
            log.warning("mirror: %srepodata/repomd.xml lists no primary metadata", repo.rel)
            return
        prim_href = entries["primary"][0]
        if repo.stage is None:
            prim_path: Path | None = self.local(repo.rel + prim_href)
        elif prim_href.startswith("repodata/"):
            prim_path = repo.stage / prim_href[len("repodata/"):]
        else:
            prim_path = None
        if prim_path is None or not prim_path.is_file():
            raise _Permanent(f"primary metadata {prim_href} is not under repodata/")
        try:
            repo.packages = {repo.rel + k: v for k, v in parse_primary(prim_path).items()}
        except (ET.ParseError, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            raise _Permanent(f"cannot read primary metadata: {exc}") from None

    def stage_repodata(self, repo: _Repo, repomd: bytes, mtime: float | None) -> None:
        """Fill repo.stage with the new repodata/: reuse verified local files, fetch the rest."""
        assert repo.stage is not None
        md_rel = repo.rel + "repodata/"
        wanted = {rel for rel in self.files if rel.startswith(md_rel)}
        wanted |= {rel for rel in repo.metadata if rel.startswith(md_rel)}
        for rel in sorted(wanted):
            sub = rel[len(md_rel):]
            if any(not _safe_name(p) for p in sub.split("/")):
                continue
            target = repo.stage / sub
            target.parent.mkdir(parents=True, exist_ok=True)
            exp = repo.metadata.get(rel)
            if sub == "repomd.xml":
                target.write_bytes(repomd)
                if mtime is not None:
                    os.utime(target, (mtime, mtime))
                self.count(fetched=1, nbytes=len(repomd))
                continue
            if exp is not None and _file_matches(self.local(rel), exp):
                shutil.copy2(self.local(rel), target)
                continue
            url = self.files.get(rel) or self.base_url + urllib.parse.quote(rel)
            n = self.http.download(url, target, exp, self.progress.add_bytes)
            self.count(fetched=1, nbytes=n)
        _publishable(repo.stage)

    def swap_repodata(self, repo: _Repo) -> None:
        assert repo.stage is not None
        live = self.local(repo.rel + "repodata")
        if os.path.islink(live) or (os.path.lexists(live) and not os.path.isdir(live)):
            os.unlink(live)
        publish_tree(repo.stage, live, force=True)  # swapped atomically, the old one removed
        repo.stage = None

    # -- files ---------------------------------------------------------------------------
    def repo_of(self, rel: str) -> _Repo | None:
        best = None
        for r in self.repos.values():
            if rel.startswith(r.rel) and (best is None or len(r.rel) > len(best.rel)):
                best = r
        return best

    def sync_file(self, rel: str) -> None:
        """Bring one file up to date (or say what would change)."""
        try:
            self._sync_file(rel)
        except _Stopped:
            raise
        except (_Permanent, _Retryable) as exc:
            self.fail(rel, str(exc))
        except OSError as exc:
            self.fail(rel, exc.strerror or str(exc))
        finally:
            self.progress.file_done()

    def expected_size(self, rel: str) -> int:
        """The size the repodata gives *rel* (0 when it gives none)."""
        repo = self.repo_of(rel)
        exp = repo.packages.get(rel) if repo else None
        return exp.size or 0 if exp else 0

    def count(self, fetched: int = 0, nbytes: int = 0, skipped: int = 0, verified: int = 0) -> None:
        with self._lock:
            self.stats.fetched += fetched
            self.stats.bytes += nbytes
            self.stats.skipped += skipped
            self.stats.verified += verified

    def _sync_file(self, rel: str) -> None:
        path = self.local(rel)
        url = self.files[rel]
        repo = self.repo_of(rel)
        exp = repo.packages.get(rel) if repo else None
        if exp is None and repo is not None and repo.stage is None and rel.startswith(repo.rel + "repodata/"):
            exp = repo.metadata.get(rel)
        size = exp.size if exp else None
        if exp is not None:
            if repo is not None and self._covered_ok(rel, exp, repo):
                self.count(skipped=1)
                return
        else:
            try:
                st: os.stat_result | None = os.lstat(path)
            except FileNotFoundError:
                st = None
            if (st is not None and stat.S_ISREG(st.st_mode)) or self.dry_run:
                size, mtime = self.http.head(url)
                if st is not None and stat.S_ISREG(st.st_mode) and size == st.st_size \
                        and (mtime is None or int(mtime) == int(st.st_mtime)):
                    self.count(skipped=1)
                    return
        if self.dry_run:
            self.count(fetched=1, nbytes=size or 0)
            self.change(f"fetch {rel}")
            return
        parent = self.make_dirs(rel.rpartition("/")[0])
        n = self.http.download(url, parent / path.name, exp, self.progress.add_bytes)
        self.count(fetched=1, nbytes=n)
        self.change(f"fetch {rel}")

    def _covered_ok(self, rel: str, exp: Expect, repo: _Repo) -> bool:
        """Whether the local copy of a repodata-listed file is the expected one."""
        path = self.local(rel)
        st = _sized_file(path, exp)
        if st is None:
            return False
        trusted = repo.trusted.get(rel)
        if not self.verify and trusted is not None and exp.algo \
                and (trusted.algo, trusted.digest) == (exp.algo, exp.digest) and st.st_mtime <= repo.trusted_until:
            return True  # verified when the live repodata was put in place, untouched since
        if _digest_matches(path, exp):
            self.count(verified=1)
            return True
        with self._lock:
            self.stats.corrupt.append(rel)
        log.debug("mirror: %s does not match its repodata %s checksum%s", rel, exp.algo or "size",
                    "" if self.dry_run else ": fetching it again")
        return False

    # -- deletion ------------------------------------------------------------------------
    def clean_temps(self) -> None:
        """Remove what an interrupted earlier run left behind (our .xcpimg-* names only)."""
        for top, dirs, files in os.walk(self.dest):
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(top, d))):
                if name.startswith(TEMP_PREFIX):
                    self._remove(Path(top) / name, stale=True)
            for name in sorted(d for d in dirs if d.startswith(TEMP_PREFIX)):
                if not os.path.islink(os.path.join(top, name)):
                    self._remove(Path(top) / name, stale=True)
            dirs[:] = sorted(d for d in dirs if not d.startswith(TEMP_PREFIX))

    def _remove(self, path: Path, stale: bool = False) -> None:
        rel = os.path.relpath(path, self.dest)
        if self.dry_run:
            if not stale:
                self.change(f"delete {rel}")
                self.stats.deleted += 1
            return
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink()
        if not stale:
            self.stats.deleted += 1
            self.change(f"delete {rel}")

    def prune(self) -> None:
        """Delete local files that are gone upstream (never excluded ones), then emptied directories."""
        gone_dirs: list[Path] = []
        for top, dirs, files in os.walk(self.dest):
            reltop = os.path.relpath(top, self.dest)
            reltop = "" if reltop == "." else reltop + "/"
            descend = []
            for name in sorted(dirs):
                rel = reltop + name + "/"
                path = Path(top) / name
                if name.startswith(TEMP_PREFIX) or is_excluded(rel, self.excludes):
                    continue
                if os.path.islink(path):
                    if rel not in self.dirs:
                        self._remove(path)
                    continue
                descend.append(name)
                if rel not in self.dirs:
                    gone_dirs.append(path)
            dirs[:] = descend
            for name in sorted(files):
                rel = reltop + name
                if rel in self.files or name.startswith(TEMP_PREFIX) or is_excluded(rel, self.excludes):
                    continue
                self._remove(Path(top) / name)
        if not self.dry_run:
            for path in reversed(gone_dirs):
                with contextlib.suppress(OSError):
                    os.rmdir(path)  # only succeeds when empty (excluded files keep it)


def _publishable(top: Path) -> None:
    """Modes a web server can serve: directories 0755, files 0644 (mkdtemp made *top* 0700)."""
    os.chmod(top, 0o755)
    for dirpath, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on the destination directory (no two runs into one tree)."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XcpimgError(f"another mirror run is writing into {dest}") from None
        yield
    finally:
        os.close(fd)


def mirror(source: str, dest: Path, *, jobs: int = 8, excludes: Iterable[str] = (), delete: bool = True,
           dry_run: bool = False, ipv4: bool = False, progress: bool | None = None,
           verify: bool = False) -> MirrorStats:
    """Mirror *source* (an XCP-ng version like "8.3" or a URL) into *dest*.

    *verify* re-hashes every local package against the repodata checksums (a corrupted
    one is fetched again, or with *dry_run* reported). Raises XcpimgError for bad input
    (unreachable source, no listing, unwritable destination) and MirrorError, carrying the
    stats, when some files failed.
    """
    if not 1 <= jobs <= 64:
        raise UsageError(f"--jobs must be between 1 and 64, got {jobs}")
    base_url, target = resolve_source(source, Path(dest))
    rx = compile_excludes(excludes)
    _check_dest(target)
    if progress is None:
        progress = sys.stderr.isatty() and not dry_run
    t0 = time.monotonic()
    run = _Run(base_url, target, jobs, rx, delete, dry_run, progress, verify)
    with _ipv4_only(ipv4), ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mirror") as pool, \
            contextlib.ExitStack() as stack:
        stack.callback(run.http.close)
        try:
            run.crawl(pool)
            if not dry_run:
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise XcpimgError(f"cannot create destination {target}: {exc.strerror}") from None
            if target.is_dir():
                stack.enter_context(_locked(target))
                run.real_dest = os.path.realpath(target)
                run.dest = target
                run.clean_temps()
            _sync(run, pool, stack)
        except KeyboardInterrupt:
            run.http.abort()
            raise
        finally:
            run.progress.close()
    run.stats.seconds = time.monotonic() - t0
    run.stats.changes.sort(key=lambda line: line.split(" ", 1)[1])
    if run.stats.failed:
        raise MirrorError(f"{len(run.stats.failed)} file(s) could not be mirrored, first: "
                          f"{run.stats.failed[0]}", run.stats)
    return run.stats


def _big_and_small(rels: list[str], size: Callable[[str], int]) -> list[str]:
    """*rels* in the order largest, smallest, second largest, second smallest...: the big
    packages start at once (none is left to finish alone at the end) while small files
    complete from the start."""
    by_size = sorted(rels, key=size, reverse=True)
    big, small = by_size[: (len(by_size) + 1) // 2], by_size[(len(by_size) + 1) // 2:][::-1]
    out = [x for pair in zip(big, small, strict=False) for x in pair]
    return out + big[len(small):]


def _sync(run: _Run, pool: ThreadPoolExecutor, stack: contextlib.ExitStack) -> None:
    """Repodata, files, repodata swap, deletion: the body of a run once the tree is known."""
    tmp_root = stack.enter_context(private_tempdir("xcpimg-mirror-")) if run.dry_run else run.dest
    for rel in sorted(run.files):
        if rel.endswith("repodata/repomd.xml"):
            repo_rel = rel[: -len("repodata/repomd.xml")]
            run.repos[repo_rel] = _Repo(repo_rel)

    def drop_stages() -> None:
        for repo in run.repos.values():
            if repo.stage is not None and repo.stage.exists():
                remove_tree(repo.stage)
    stack.callback(drop_stages)

    def prepare(repo: _Repo) -> None:
        try:
            run.prepare_repo(repo, tmp_root)
        except _Stopped:
            raise
        except (_Permanent, _Retryable) as exc:
            repo.failed = True
            run.fail(repo.rel + "repodata/", str(exc))
        except OSError as exc:
            repo.failed = True
            run.fail(repo.rel + "repodata/", exc.strerror or str(exc))

    def check(fut: Future[Any]) -> list[Any]:
        fut.result()
        return []

    run.run_pool(pool, [(prepare, (r,)) for r in run.repos.values()], check)
    staged = [r.rel + "repodata/" for r in run.repos.values() if r.stage is not None]
    if not run.dry_run:
        for rel in sorted(run.dirs):  # empty upstream directories exist locally too
            if any(rel.startswith(s) for s in staged):
                continue
            try:
                run.make_dirs(rel)
            except _Permanent as exc:
                run.fail(rel, str(exc))
            except OSError as exc:
                run.fail(rel, exc.strerror or str(exc))
    # files: everything except repodata being replaced as a whole
    # (and a repo whose new repodata is unusable keeps its old repodata files)
    held = staged + [r.rel + "repodata/" for r in run.repos.values() if r.failed]
    todo = [rel for rel in sorted(run.files) if not any(rel.startswith(s) for s in held)]
    todo = _big_and_small(todo, run.expected_size)
    run.progress.start(len(todo))
    run.run_pool(pool, [(run.sync_file, (rel,)) for rel in todo], check)
    run.progress.close()
    failed_paths = [f.partition(": ")[0] for f in run.stats.failed]
    for repo in run.repos.values():
        if repo.stage is None or run.dry_run:
            continue
        if repo.failed or any(p.startswith(repo.rel) or p == "/" for p in failed_paths):
            log.debug("mirror: keeping the old %srepodata/: some of its files failed", repo.rel)
            continue
        run.swap_repodata(repo)
    if run.delete:
        if not run.crawl_complete or run.stats.failed:
            log.debug("mirror: not deleting anything: the upstream tree was not fully read or fetched")
        else:
            run.prune()
