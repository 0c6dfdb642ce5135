"""A small hostile HTTP server for the mirror's tests: loopback only, bounded in time.

Each route maps a URL path to a behaviour (a function of the request handler). Every loop a
behaviour runs is bounded in count and in time, and the whole server shuts itself down after
*lifetime* seconds, so a test that goes wrong cannot hang on it.

    with HostileServer({"/": listing("a/")}, lifetime=20) as srv:
        ... srv.url ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Behaviour = Callable[[BaseHTTPRequestHandler], None]


def send(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
         ctype: str = "application/octet-stream") -> None:
    """A whole response: status, headers (Content-Length unless given), body."""
    h.send_response(status)
    headers = dict(headers or {})
    headers.setdefault("Content-Type", ctype)
    headers.setdefault("Content-Length", str(len(body)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def listing(*hrefs: str) -> Behaviour:
    """An autoindex-style page linking to *hrefs*."""
    rows = "".join(f'<a href="{href}">{href}</a>\r\n' for href in hrefs)
    page = f"<html><body><pre>{rows}</pre></body></html>\r\n".encode()
    return lambda h: send(h, 200, page, ctype="text/html")


def file(data: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    return lambda h: send(h, 200, data, headers)


def redirect(location: str) -> Behaviour:
    return lambda h: send(h, 301, b"", {"Location": location}, ctype="text/plain")


def trickle(size: int, every: float, max_seconds: float = 30.0) -> Behaviour:
    """Promise *size* bytes, then send one byte every *every* seconds (at most *max_seconds*)."""
    def run(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(size))
        h.end_headers()
        end = time.monotonic() + max_seconds
        for _ in range(size):
            if time.monotonic() > end or h.server.stopping.is_set():  # type: ignore[attr-defined]
                break
            h.wfile.write(b"x")
            h.wfile.flush()
            h.server.stopping.wait(every)  # type: ignore[attr-defined]
        h.close_connection = True
    return run


def infinite_tree(h: BaseHTTPRequestHandler) -> None:
    """Every directory holds a directory ``a/`` (and every path is a directory)."""
    if not h.path.endswith("/"):
        return redirect(h.path + "/")(h)
    return listing("a/")(h)


class HostileServer:
    """Serve *routes* (path -> behaviour; *default* for the rest) on 127.0.0.1 for at most *lifetime* s."""

    def __init__(self, routes: dict[str, Behaviour], default: Behaviour | None = None,
                 lifetime: float = 60.0) -> None:
        self.routes = routes
        self.default = default
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with outer.lock:
                    outer.paths.append(path)
                    many = len(outer.paths) > 10_000
                behaviour = outer.routes.get(path, outer.default)
                if behaviour is None or many:
                    send(self, 404, b"not found\n", ctype="text/plain")
                else:
                    behaviour(self)

            do_HEAD = do_GET

        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.stopping = threading.Event()  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._lifetime = lifetime
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)

    def count(self, path: str) -> int:
        with self.lock:
            return self.paths.count(path)

    def start(self) -> HostileServer:
        self._thread.start()
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()  # type: ignore[attr-defined]
        self._timer.cancel()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)
        self._server.server_close()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
