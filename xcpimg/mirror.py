"""Mirror XCP-ng yum repositories over HTTP(S) (mirror-repos.sh).

``xcpimg mirror 8.3 DEST`` mirrors ``https://updates.xcp-ng.org/8/8.3`` into
``DEST/8.3``; ``xcpimg mirror URL DEST`` mirrors any browsable tree into DEST.

How it works: the directory listings are crawled (only links to direct
children are followed, so ``..``, absolute paths, other hosts and query strings
are never taken), the upstream exclusions and ``--exclude`` filter the tree,
then every file is synced by a pool of threads, each with its own HTTP session.
Inside a yum repository (a directory holding ``repodata/repomd.xml``) packages
are verified against the sizes and checksums of ``primary.xml``; other files are
compared by size and Last-Modified time. A download goes to a hidden temporary
name (``.xcpimg-*``) and is renamed into place once whole and verified. New
repodata is staged beside the repo and swapped in only after all the repo's
packages are in place; files gone upstream are deleted last.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import email.utils
import fcntl
import gzip
import hashlib
import html.parser
import logging
import lzma
import os
import re
import shutil
import socket
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
from typing import IO, Any

import requests
import urllib3

from .errors import UsageError, XcpimgError
from .fsutil import private_tempdir, publish_file, publish_tree, remove_tree

log = logging.getLogger("xcpimg.mirror")

#: Where ``xcpimg mirror <version>`` mirrors from.
UPDATES_URL = "https://updates.xcp-ng.org"

#: The exclusions of the original mirror-repos.sh, matched against "/" + the relative path.
UPSTREAM_EXCLUDES = (r"/Source/", r"-debuginfo-", r"-debug-", r"-devel[-_]", r"/xs-opam-repo", r"/ocaml",
                     r"/golang")

#: Prefix of every temporary name the mirror creates inside the destination.
TEMP_PREFIX = ".xcpimg-"

RETRIES = 5            # attempts per request
BACKOFF = 0.5          # seconds before the second attempt, doubled each time (capped at 8 s)
CONNECT_TIMEOUT = 15   # seconds
STALL_SECONDS = 30.0   # a read waits at most this long; a body must bring STALL_BYTES in this time
STALL_BYTES = 1024
MAX_REDIRECTS = 5
MAX_SMALL = 256 << 20  # bytes of a listing or repomd.xml
MAX_DEPTH = 24         # directory levels below the source
NAME_MAX = 255         # bytes of a file name on Linux file systems
CHUNK = 64 * 1024
USER_AGENT = "xcpimg-mirror/1"

_REPO_NS = "{http://linux.duke.edu/metadata/repo}"
_COMMON_NS = "{http://linux.duke.edu/metadata/common}"
_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


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
        text = (f"{verb} {self.fetched} files ({_human(self.bytes)}), {dverb} {self.deleted}, "
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


class _Retryable(Exception):
    """A transient failure: try again after a pause."""


class _Permanent(Exception):
    """A failure retrying will not fix (404, refused path...)."""


class _Stopped(Exception):
    """The run is being interrupted."""


@dataclass(frozen=True)
class Expect:
    """What a file must be: its size and/or checksum, when known."""

    size: int | None = None
    algo: str | None = None
    digest: str | None = None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and the exceptions it wraps (requests -> urllib3 -> socket)."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in cur.args if isinstance(a, BaseException)), None)
        cur = nxt or cur.__cause__ or cur.__context__
    return chain


def _unknown_host(exc: BaseException) -> bool:
    """A name that does not resolve at all (retrying will not help; a temporary DNS failure might)."""
    return any(isinstance(e, socket.gaierror) and e.errno == socket.EAI_NONAME for e in _chain(exc))


def _describe(exc: BaseException) -> str:
    """One short line for a network error (requests' own texts are a screenful)."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host ({e.strerror})"
        if isinstance(e, OSError) and e.strerror and not isinstance(e, TimeoutError):
            return e.strerror
    if any(isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)) for e in chain):
        return "timed out"
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    if any(isinstance(e, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError))
           for e in chain):
        return "connection broken mid-transfer"
    return text.splitlines()[0] if text else type(exc).__name__


def decimal(text: str | None, what: str = "size") -> int | None:
    """A size written in ASCII digits (a header, repodata), None when absent or empty.

    Anything else (digits of other scripts such as '١٢', superscripts, signs) is a ValueError:
    ``int()`` would take some of them, ``str.isdigit()`` even more.
    """
    if text is None or not text.strip():
        return None
    if not re.fullmatch(r"[0-9]{1,20}", text.strip()):
        raise ValueError(f"bad {what} {text.strip()[:40]!r} (not a decimal number)")
    return int(text)


def split_url(url: str) -> urllib.parse.SplitResult:
    """The one URL parser of the mirror: an http(s) URL with a host and a valid port.

    Raises ValueError, with a message naming the URL, for anything else (``http://[::1``,
    ``file:///``, a port out of range...).
    """
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - parses the port, raising ValueError when it is bad
    except ValueError as exc:
        raise ValueError(f"malformed URL {url!r} ({exc})") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"unsupported URL {url!r} (expected http:// or https://)")
    return u


def join_url(base: str, href: str) -> str:
    """*href* resolved against *base*, checked by :func:`split_url`."""
    try:
        joined = urllib.parse.urljoin(base, href.strip())
    except ValueError as exc:
        raise ValueError(f"malformed URL {href!r} ({exc})") from None
    return split_url(joined).geturl()


# ---------------------------------------------------------------------------------------------
# source, destination, exclusions

def resolve_source(source: str, dest: Path) -> tuple[str, Path]:
    """(base URL, local directory) for a version like 8.3 or a URL."""
    if "://" in source:
        try:
            u = split_url(source)
        except ValueError as exc:
            raise UsageError(f"source: {exc}") from None
        if u.query or u.fragment:
            raise UsageError(f"source URL {source!r} must not have a query or fragment")
        return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path or "/", "", "")), Path(dest)
    m = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", source)
    if not m:
        raise UsageError(f"expected an XCP-ng version like 8.3 or a URL, got {source!r}")
    major, minor = m.group(1), m.group(2)
    return f"{UPDATES_URL.rstrip('/')}/{major}/{major}.{minor}/", Path(dest) / source


def compile_excludes(extra: Iterable[str] = ()) -> list[re.Pattern[str]]:
    """The upstream exclusions plus *extra* regexes."""
    out = []
    for rx in (*UPSTREAM_EXCLUDES, *extra):
        try:
            out.append(re.compile(rx))
        except re.error as exc:
            raise UsageError(f"bad --exclude regex {rx!r}: {exc}") from None
    return out


def is_excluded(rel: str, excludes: list[re.Pattern[str]]) -> bool:
    """Whether relative path *rel* (directories end in "/") is excluded."""
    probe = "/" + rel
    return any(rx.search(probe) for rx in excludes)


def _check_dest(dest: Path) -> None:
    """Fail early when *dest* cannot be created or written."""
    p = dest
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    if not p.is_dir():
        where = "" if p == dest else f" ({p} is not a directory)"
        raise XcpimgError(f"destination {dest} is not a directory{where}")
    if not os.access(p, os.W_OK | os.X_OK):
        raise XcpimgError(f"destination {dest} is not writable")


# ---------------------------------------------------------------------------------------------
# listings

class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for k, v in attrs:
                if k == "href" and v:
                    self.hrefs.append(v)


def _safe_name(name: str) -> bool:
    return (name not in ("", ".", "..") and not name.startswith(TEMP_PREFIX)
            and not any(c in name for c in "/\\") and all(ord(c) >= 0x20 and c != "\x7f" for c in name))


def child_links(dir_url: str, text: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of the direct children a listing page links to; everything else is dropped."""
    parser = _Links()
    parser.feed(text)
    base = urllib.parse.urlsplit(dir_url)
    out: dict[str, bool] = {}
    for href in parser.hrefs:
        try:
            u = urllib.parse.urlsplit(join_url(dir_url, href))
        except ValueError:
            log.debug("ignoring listing entry %r of %s", href, dir_url)
            continue
        if (u.scheme, u.netloc) != (base.scheme, base.netloc) or u.query or u.fragment:
            continue
        if not u.path.startswith(base.path):
            continue
        rest = u.path[len(base.path):]
        is_dir = rest.endswith("/")
        seg = rest[:-1] if is_dir else rest
        if not seg or "/" in seg:
            continue
        name = urllib.parse.unquote(seg)
        if not _safe_name(name):
            log.debug("ignoring listing entry %r of %s", href, dir_url)
            continue
        out[name] = is_dir
    return sorted(out.items())


# ---------------------------------------------------------------------------------------------
# repodata

def _open_maybe_compressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw)  # type: ignore[return-value]
    return raw


def _checksum(elem: ET.Element | None) -> tuple[str | None, str | None]:
    if elem is None or not (elem.text or "").strip():
        return None, None
    algo = (elem.get("type") or "").lower()
    algo = {"sha": "sha1"}.get(algo, algo)
    if algo not in hashlib.algorithms_available:
        return None, None
    return algo, elem.text.strip().lower()  # type: ignore[union-attr]


def _rel_href(href: str | None) -> str | None:
    """A metadata location href, if it is a plain relative path without "..": else None."""
    if not href or "://" in href or href.startswith("/") or "\\" in href:
        return None
    parts = href.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return href


def parse_repomd(data: bytes) -> dict[str, tuple[str, Expect]]:
    """type -> (href relative to the repo, Expect) for each metadata file of a repomd.xml."""
    root = ET.fromstring(data)
    out: dict[str, tuple[str, Expect]] = {}
    for d in root.findall(f"{_REPO_NS}data"):
        loc = d.find(f"{_REPO_NS}location")
        if loc is None or loc.get(_XML_BASE):
            continue
        href = _rel_href(loc.get("href"))
        if href is None:
            continue
        algo, digest = _checksum(d.find(f"{_REPO_NS}checksum"))
        size = decimal(d.findtext(f"{_REPO_NS}size"))
        out[d.get("type") or href] = (href, Expect(size, algo, digest))
    return out


def parse_primary(path: Path) -> dict[str, Expect]:
    """href relative to the repo -> Expect, for every package of a primary.xml (any compression)."""
    out: dict[str, Expect] = {}
    with open(path, "rb") as raw, _open_maybe_compressed(raw) as stream:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag != f"{_COMMON_NS}package":
                continue
            loc = elem.find(f"{_COMMON_NS}location")
            href = _rel_href(loc.get("href")) if loc is not None and not loc.get(_XML_BASE) else None
            if href is not None:
                algo, digest = _checksum(elem.find(f"{_COMMON_NS}checksum"))
                size_el = elem.find(f"{_COMMON_NS}size")
                size = decimal(size_el.get("package")) if size_el is not None else None
                out[href] = Expect(size, algo, digest)
            elem.clear()
    return out


def _sized_file(path: Path, expect: Expect) -> os.stat_result | None:
    """lstat of *path* if it is a regular file (never a symlink) of the expected size."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or (expect.size is not None and st.st_size != expect.size):
        return None
    return st


def _file_matches(path: Path, expect: Expect) -> bool:
    """Whether the regular file *path* (never a symlink) has the expected size and checksum."""
    return _sized_file(path, expect) is not None and _digest_matches(path, expect)


def _digest_matches(path: Path, expect: Expect) -> bool:
    """Whether *path* hashes to the expected checksum (without one, only a known size counts)."""
    if not expect.algo:
        return expect.size is not None
    h = hashlib.new(expect.algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == expect.digest


@dataclass
class _Repo:
    rel: str                                   # "" or "base/x86_64/"
    packages: dict[str, Expect] = field(default_factory=dict)   # full rel path -> Expect (new)
    trusted: dict[str, Expect] = field(default_factory=dict)    # from the live local repodata
    trusted_until: float = 0.0                 # mtime of the live repomd.xml
    metadata: dict[str, Expect] = field(default_factory=dict)   # repodata files -> Expect (new)
    stage: Path | None = None                  # new repodata, to be swapped in
    failed: bool = False


# ---------------------------------------------------------------------------------------------
# HTTP

@dataclass(frozen=True)
class _Page:
    """A small document read whole: its final URL (after redirects), headers and body."""

    url: str
    headers: Any
    content: bytes

    @property
    def text(self) -> str:
        charset = re.search(r"charset=([\w.:-]+)", self.headers.get("Content-Type", ""))
        try:
            return self.content.decode(charset.group(1) if charset else "utf-8", errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


class _Session(requests.Session):
    """A session that leaves redirects to :meth:`_Http.request` (requests would parse a
    hostile Location itself, even with allow_redirects=False, and raise ValueError)."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class _Http:
    """Thread-local requests sessions with retries, checked redirects and stall timeouts."""

    def __init__(self, stop: threading.Event) -> None:
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._active: set[requests.Response] = set()
        self._lock = threading.Lock()
        self.stop = stop

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = _Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=2, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers["User-Agent"] = USER_AGENT
            s.headers["Accept-Encoding"] = "identity"
            self._local.session = s
            with self._lock:
                self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()

    def abort(self) -> None:
        """Interrupt every transfer in flight now (shut their sockets down): for a prompt Ctrl-C."""
        self.stop.set()
        with self._lock:
            active = list(self._active)
        for r in active:
            conn = getattr(r.raw, "_connection", None)
            sock = getattr(conn, "sock", None)
            if sock is None:
                sock = getattr(getattr(getattr(getattr(r.raw, "_fp", None), "fp", None), "raw", None), "_sock", None)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def retrying(self, what: str, attempt_fn: Callable[[], Any]) -> Any:
        """Call *attempt_fn* until it succeeds, retrying transient failures with backoff."""
        last: BaseException | None = None
        for attempt in range(RETRIES):
            if self.stop.is_set():
                raise _Stopped
            if attempt:
                delay = min(BACKOFF * 2 ** (attempt - 1), 8.0)
                log.debug("retrying %s in %.1f s: %s", what, delay, last)
                if self.stop.wait(delay):
                    raise _Stopped
            try:
                return attempt_fn()
            except _Retryable as exc:
                last = exc
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError, ConnectionError) as exc:
                if self.stop.is_set():
                    raise _Stopped from None
                if _unknown_host(exc):
                    raise _Permanent(_describe(exc)) from None
                last = _Retryable(_describe(exc))
            except requests.RequestException as exc:  # invalid URL, bad header...: retrying will not help
                raise _Permanent(_describe(exc)) from None
        raise _Permanent(f"{last} (after {RETRIES} attempts)")

    @contextlib.contextmanager
    def request(self, method: str, url: str, within: str | None = None) -> Iterator[requests.Response]:
        """The response to *method* on *url*, streamed, after following at most MAX_REDIRECTS
        checked redirects (http(s) only, never back to a URL already on the way; with
        *within*, only to URLs under it)."""
        seen = [url]
        while True:
            r = self.session().request(method, url, timeout=(CONNECT_TIMEOUT, STALL_SECONDS), stream=True,
                                       allow_redirects=False)
            with self._lock:
                self._active.add(r)
            try:
                if r.status_code not in (301, 302, 303, 307, 308):
                    yield r
                    return
                location = r.headers.get("Location")
            finally:
                with self._lock:
                    self._active.discard(r)
                r.close()
            if not location:
                raise _Permanent(f"HTTP {r.status_code} redirect without a Location")
            try:
                url = join_url(url, location)
            except ValueError as exc:
                raise _Permanent(f"redirected to {exc}") from None
            if url in seen:
                raise _Permanent(f"redirect loop: {url} again")
            if within is not None and not url.startswith(within):
                raise _Permanent(f"redirected out of the tree, to {url}")
            if len(seen) > MAX_REDIRECTS:
                raise _Permanent(f"more than {MAX_REDIRECTS} redirects")
            seen.append(url)
            if self.stop.is_set():
                raise _Stopped

    def body(self, r: requests.Response, limit: int | None = None) -> Iterator[bytes]:
        """The body of *r* in pieces as they arrive. A body slower than STALL_BYTES per
        STALL_SECONDS is a transient failure; an interrupt stops it at once."""
        window, got, total = time.monotonic(), 0, 0
        while True:
            if self.stop.is_set():
                raise _Stopped
            piece = r.raw.read1(CHUNK, decode_content=False)
            if self.stop.is_set():
                raise _Stopped  # the socket was shut down under us: not the end of the body
            if not piece:
                return
            got += len(piece)
            total += len(piece)
            if limit is not None and total > limit:
                raise _Permanent(f"larger than {limit} bytes")
            now = time.monotonic()
            if now - window >= STALL_SECONDS:
                if got < STALL_BYTES:
                    raise _Retryable(f"stalled: {got} bytes in {now - window:.0f} s")
                window, got = now, 0
            yield piece

    @staticmethod
    def _status(r: requests.Response) -> None:
        if r.status_code >= 500 or r.status_code == 429:
            raise _Retryable(f"HTTP {r.status_code} {r.reason}")
        if r.status_code != 200:
            raise _Permanent(f"HTTP {r.status_code} {r.reason}")

    def get_small(self, url: str, within: str | None = None) -> _Page:
        """GET a small document (a listing, repomd.xml), retrying; any non-200 is an error."""
        def attempt() -> _Page:
            with self.request("GET", url, within) as r:
                self._status(r)
                content = b"".join(self.body(r, limit=MAX_SMALL))
                declared = _content_length(r)
                if declared is not None and declared != len(content):
                    raise _Retryable("truncated response")
                return _Page(r.url, r.headers, content)
        return self.retrying(url, attempt)

    def head(self, url: str) -> tuple[int | None, float | None]:
        """(Content-Length, Last-Modified) of *url*, either None when the server does not say."""
        def attempt() -> tuple[int | None, float | None]:
            with self.request("HEAD", url) as r:
                if r.status_code >= 500 or r.status_code == 429:
                    raise _Retryable(f"HTTP {r.status_code} {r.reason}")
                if r.status_code != 200:
                    return None, None
                return _content_length(r), _last_modified(r)
        return self.retrying(url, attempt)

    def download(self, url: str, target: Path, expect: Expect | None, on_bytes: Callable[[int], None]) -> int:
        """Fetch *url* into *target* atomically, verified against *expect*; return its size."""
        def attempt() -> int:
            with self.request("GET", url) as r:
                self._status(r)
                return self._write(r, target, expect, on_bytes)
        return self.retrying(url, attempt)

    def _write(self, r: requests.Response, target: Path, expect: Expect | None,
               on_bytes: Callable[[int], None]) -> int:
        declared = _content_length(r)
        h = hashlib.new(expect.algo) if expect and expect.algo else None
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            n = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in self.body(r):
                    f.write(chunk)
                    if h:
                        h.update(chunk)
                    n += len(chunk)
                    on_bytes(len(chunk))
            if declared is not None and n != declared:
                raise _Retryable(f"truncated: got {n} of {declared} bytes")
            if expect and expect.size is not None and n != expect.size:
                raise _Retryable(f"size mismatch: got {n} bytes, repodata says {expect.size}")
            if h and expect and h.hexdigest() != expect.digest:
                raise _Retryable(f"{expect.algo} checksum mismatch")
            mtime = _last_modified(r)
            os.chmod(tmp, 0o644)
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            publish_file(tmp, target, force=True)  # a mirror replaces its own files
            return n
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def _content_length(r: requests.Response) -> int | None:
    try:
        return decimal(r.headers.get("Content-Length"), "Content-Length")
    except ValueError as exc:
        raise _Permanent(str(exc)) from None


def _last_modified(r: requests.Response | _Page) -> float | None:
    value = r.headers.get("Last-Modified")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _ipv4_only(enabled: bool) -> Iterator[None]:
    """Make urllib3 resolve names to IPv4 addresses only (for the duration of the block)."""
    if not enabled:
        yield
        return
    import urllib3.util.connection as conn
    saved = conn.allowed_gai_family
    conn.allowed_gai_family = lambda: socket.AF_INET
    try:
        yield
    finally:
        conn.allowed_gai_family = saved


# ---------------------------------------------------------------------------------------------
# progress

class _Progress:
    """A one-line progress display on stderr (only when enabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.nbytes = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.nbytes += n
        self._draw()

    def file_done(self) -> None:
        with self._lock:
            self.done += 1
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        rate = self.nbytes / max(now - self._t0, 1e-3)
        width = 30
        filled = int(width * self.done / self.total) if self.total else 0
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} files  {_human(self.nbytes)}"
                         f"  {_human(rate)}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


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
        return child_links(final, r.text)

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
    run.progress.total = len(todo)
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


# ---------------------------------------------------------------------------------------------
# CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="an XCP-ng version (8.3: mirrors updates.xcp-ng.org/8/8.3 into DEST/8.3) "
                                  "or the URL of a browsable tree (mirrored into DEST)")
    p.add_argument("dest", type=Path, help="destination directory")
    p.add_argument("-j", "--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="also skip paths matching REGEX (matched against /RELATIVE/PATH; repeatable)")
    p.add_argument("--no-delete", action="store_true", help="keep local files that are gone upstream")
    p.add_argument("--dry-run", action="store_true", help="list what would change, change nothing")
    p.add_argument("-4", "--ipv4", action="store_true", help="connect over IPv4 only")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every local package against the repodata checksums; fetch corrupt ones "
                        "again (with --dry-run: list them)")


def command(args: argparse.Namespace) -> int:
    try:
        stats = mirror(args.source, args.dest, jobs=args.jobs, excludes=args.exclude,
                       delete=not args.no_delete, dry_run=args.dry_run, ipv4=args.ipv4, verify=args.verify)
    except MirrorError as exc:  # the report on stdout, the error as one line on stderr
        for line in exc.stats.failed:
            print(f"failed {line}")
        print(f"mirror: {exc.stats.summary()} (nothing deleted)")
        raise
    if args.dry_run:
        for line in stats.changes:
            print(line)
    for rel in stats.corrupt:
        print(f"corrupt {rel}")
    print(f"mirror: {stats.summary()}")
    return 0


__all__ = ["MirrorStats", "MirrorError", "Expect", "mirror", "resolve_source", "compile_excludes",
           "is_excluded", "child_links", "parse_repomd", "parse_primary", "UPSTREAM_EXCLUDES", "UPDATES_URL"]
