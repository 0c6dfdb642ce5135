"""A small threaded HTTP server for a directory tree, on loopback only.

It serves files and autoindex-style HTML listings (like nginx), speaks HTTP/1.1
with keep-alive, sends Content-Length and Last-Modified, and answers
If-Modified-Since. For tests and benchmarks it can add a per-request latency,
cap each connection's bandwidth and inject faults (see :class:`Faults`).

    with serve_directory(root, latency=0.02) as url:
        requests.get(url + "8/8.3/")

:class:`TreeServer` is the same thing as an object (``.url``, ``.requests``,
``.faults``), usable as a context manager or started/stopped by a pytest fixture.
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import os
import posixpath
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str  # URL path, percent-decoded
    status: int


@dataclass
class Faults:
    """Faults to inject, each keyed by URL path (``/8/8.3/base/x86_64/Packages/a.rpm``).

    The ``*_once`` sets are consumed: the fault fires on the next GET of that path
    only. ``corrupt`` and ``truncate`` fire on every GET. ``extra_hrefs`` adds raw
    href values to the listing of a directory path (ending in ``/``). ``on_request``
    is called with (method, path) before each request is answered.
    """

    drop_once: set[str] = field(default_factory=set)      # promise the full length, send half, close
    error_once: set[str] = field(default_factory=set)     # answer 500
    truncate_once: set[str] = field(default_factory=set)  # a consistent but short response
    truncate: set[str] = field(default_factory=set)
    corrupt_once: set[str] = field(default_factory=set)   # same length, flipped bytes
    corrupt: set[str] = field(default_factory=set)
    extra_hrefs: dict[str, list[str]] = field(default_factory=dict)
    on_request: object = None  # Callable[[str, str], None] | None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str, path: str) -> bool:
        """Consume a one-shot fault *name* for *path*; True if it was armed."""
        with self._lock:
            armed: set[str] = getattr(self, name)
            if path in armed:
                armed.discard(path)
                return True
            return False


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        # as nginx (tcp_nodelay on): a response's body is not held back behind its headers
        # waiting for the client's delayed ACK (40 ms per small keep-alive response otherwise)
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sent = 0
        self._t0 = time.monotonic()
        self._path = ""
        with self.server.log_lock:
            self.server.connections.add(self.connection)
            self.server.accepted += 1

    def finish(self) -> None:
        with self.server.log_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # -- throttled output ----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        bw = self.server.bandwidth
        view = memoryview(data)
        step = CHUNK if not bw else max(1024, min(CHUNK, bw // 50))
        for i in range(0, len(view), step):
            piece = view[i:i + step]
            self.wfile.write(piece)
            self._sent += len(piece)
            if bw:
                ahead = self._sent / bw - (time.monotonic() - self._t0)
                if ahead > 0:
                    time.sleep(ahead)

    def _record(self, status: int) -> None:
        with self.server.log_lock:
            self.server.requests.append(Request(self.command, self._path, status))

    def _simple(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
        body = (text or f"{status} {HTTPStatus(status).phrase}\n").encode()
        self._record(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self._write(body)

    # -- request handling ----------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.server.latency:
            time.sleep(self.server.latency)
        self._sent, self._t0 = 0, time.monotonic()  # the bandwidth cap applies to each response
        url = urllib.parse.urlsplit(self.path)
        self._path = urllib.parse.unquote(url.path)
        faults = self.server.faults
        if faults is not None and callable(faults.on_request):
            faults.on_request(self.command, self._path)
        local = self._translate(self._path)
        if local is None:
            return self._simple(404)
        if local.is_dir():
            if not self._path.endswith("/"):
                return self._simple(301, headers={"Location": url.path + "/"})
            return self._listing(local)
        if not local.is_file() or self._path.endswith("/"):
            return self._simple(404)
        if faults is not None and self.command == "GET" and faults.take("error_once", self._path):
            return self._simple(500)
        self._file(local)

    def _translate(self, path: str) -> Path | None:
        """Map a URL path to a file under the root, or None if it would leave it."""
        norm = posixpath.normpath(path)
        parts = [p for p in norm.split("/") if p]
        if any(p in (".", "..") or "\0" in p for p in parts):
            return None
        local = self.server.root.joinpath(*parts)
        real = Path(os.path.realpath(local))
        if real != self.server.real_root and self.server.real_root not in real.parents:
            return None
        return local

    def _file(self, local: Path) -> None:
        st = local.stat()
        ims = self.headers.get("If-Modified-Since")
        if ims:
            with contextlib.suppress(TypeError, ValueError):
                if int(st.st_mtime) <= email.utils.parsedate_to_datetime(ims).timestamp():
                    self._record(304)
                    self.send_response(304)
                    self.send_header("Last-Modified", _http_date(st.st_mtime))
                    self.end_headers()
                    return
        data = local.read_bytes() if self.command == "GET" else b""
        length = st.st_size
        drop = False
        faults = self.server.faults
        if faults is not None and self.command == "GET":
            if faults.take("truncate_once", self._path) or self._path in faults.truncate:
                data = data[: len(data) // 2]
                length = len(data)
            if faults.take("corrupt_once", self._path) or self._path in faults.corrupt:
                data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
            drop = faults.take("drop_once", self._path)
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", _http_date(st.st_mtime))
        self.end_headers()
        if self.command != "GET":
            return
        if drop:
            self._write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(data)

    def _listing(self, local: Path) -> None:
        rows = []
        entries = sorted(os.scandir(local), key=lambda e: e.name)
        width = 52
        for e in entries:
            try:
                st = e.stat()
            except OSError:
                continue
            isdir = e.is_dir()
            name = e.name + ("/" if isdir else "")
            size = "-" if isdir else str(st.st_size)
            when = time.strftime("%d-%b-%Y %H:%M", time.gmtime(st.st_mtime))
            href = urllib.parse.quote(name)
            pad = " " * max(1, width - len(name))
            rows.append(f'<a href="{html.escape(href)}">{html.escape(name)}</a>{pad}{when} {size:>19}')
        faults = self.server.faults
        if faults is not None:
            for href in faults.extra_hrefs.get(self._path, []):
                rows.append(f'<a href="{html.escape(href)}">{html.escape(href)}</a>'
                            f'{" " * 20}01-Jan-2024 00:00 {"1":>19}')
        title = html.escape(f"Index of {self._path}")
        body = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<h1>{title}</h1><hr><pre>"
                f'<a href="../">../</a>\r\n' + "\r\n".join(rows) + "\r\n</pre><hr></body>\r\n</html>\r\n")
        data = body.encode()
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self._write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # many parallel clients (lftp, the mirror) open connections at once
    request_queue_size = 64

    def __init__(self, root: Path, latency: float, bandwidth: int | None, faults: Faults | None) -> None:
        self.root = Path(root)
        self.real_root = Path(os.path.realpath(root))
        self.latency = latency
        self.bandwidth = bandwidth
        self.faults = faults
        self.requests: list[Request] = []
        self.connections: set[socket.socket] = set()
        self.accepted = 0
        self.log_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hanging up mid-response (the mirror's interrupt tests) are normal here."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class TreeServer:
    """Serve *root* on ``http://127.0.0.1:<free port>/`` from a background thread.

    ``latency`` (seconds) is added to every request; ``bandwidth`` (bytes/s) caps
    each connection. ``requests`` lists what was answered, for assertions.
    """

    def __init__(self, root: Path, *, latency: float = 0.0, bandwidth: int | None = None,
                 faults: Faults | None = None) -> None:
        if not Path(root).is_dir():
            raise NotADirectoryError(f"cannot serve {root}: not a directory")
        self._server = _Server(Path(root), latency, bandwidth, faults)
        self._thread: threading.Thread | None = None
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/"

    @property
    def requests(self) -> list[Request]:
        return self._server.requests

    @property
    def faults(self) -> Faults | None:
        return self._server.faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        self._server.faults = value

    @property
    def accepted(self) -> int:
        """How many TCP connections the server has accepted."""
        return self._server.accepted

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self._server.log_lock:
            self._server.requests.clear()

    def gets(self, suffix: str = "") -> list[str]:
        """Paths of successful GETs (status 200) ending with *suffix*."""
        return [r.path for r in self.requests if r.method == "GET" and r.status == 200
                and r.path.endswith(suffix)]

    def start(self) -> TreeServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"httpserve-{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        with self._server.log_lock:
            open_conns = list(self._server.connections)
        for conn in open_conns:  # idle keep-alive connections would keep their threads alive
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()

    def __enter__(self) -> TreeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_directory(root: Path, *, latency: float = 0.0, bandwidth: int | None = None,
                    faults: Faults | None = None) -> Iterator[str]:
    """Serve *root* on loopback for the duration of the block; yield its base URL."""
    with TreeServer(root, latency=latency, bandwidth=bandwidth, faults=faults) as srv:
        yield srv.url
