"""HTTP for the mirror: sessions, retries, checked redirects, stall timeouts, prompt abort.

One URL parser (:func:`split_url`) and one number parser (:func:`.repodata.decimal`) serve
the whole mirror: a hostile server's Location, listing href or Content-Length never reaches
``urllib``/``int()`` unchecked."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3

from ..fsutil import publish_file
from .repodata import Expect, decimal

log = logging.getLogger("xcpimg.mirror")

#: Prefix of every temporary name the mirror creates inside the destination.
TEMP_PREFIX = ".xcpimg-"

RETRIES = 5            # attempts per request
BACKOFF = 0.5          # seconds before the second attempt, doubled each time (capped at 8 s)
CONNECT_TIMEOUT = 15   # seconds
STALL_SECONDS = 30.0   # a read waits at most this long; a body must bring STALL_BYTES in this time
STALL_BYTES = 1024
MAX_REDIRECTS = 5
MAX_SMALL = 256 << 20  # bytes of a listing or repomd.xml
CHUNK = 64 * 1024
USER_AGENT = "xcpimg-mirror/1"


class _Retryable(Exception):
    """A transient failure: try again after a pause."""


class _Permanent(Exception):
    """A failure retrying will not fix (404, refused path...)."""


class _Stopped(Exception):
    """The run is being interrupted."""


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


class MalformedURL(ValueError):
    """Not a URL at all (``http://[::1``, a port out of range), as opposed to one of another scheme."""


def split_url(url: str) -> urllib.parse.SplitResult:
    """The one URL parser of the mirror: an http(s) URL with a host and a valid port.

    Raises MalformedURL for what does not parse (``http://[::1``, a bad port), ValueError
    for any other scheme (``file:///``, ``mailto:``), each with a message naming the URL.
    """
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - parses the port, raising ValueError when it is bad
    except ValueError as exc:
        raise MalformedURL(f"malformed URL {url!r} ({exc})") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"unsupported URL {url!r} (expected http:// or https://)")
    return u


def join_url(base: str, href: str) -> str:
    """*href* resolved against *base*, checked by :func:`split_url`."""
    try:
        joined = urllib.parse.urljoin(base, href.strip())
    except ValueError as exc:
        raise MalformedURL(f"malformed URL {href!r} ({exc})") from None
    return split_url(joined).geturl()


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
