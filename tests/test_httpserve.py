"""Tests of xcpimg.httpserve: the loopback tree server used by the mirror tests and benchmark."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
import requests

from xcpimg.httpserve import Faults, TreeServer, serve_directory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "sub dir").mkdir(parents=True)
    (root / "a" / "f.bin").write_bytes(bytes(range(256)) * 400)  # 102400 bytes
    (root / "a" / "sub dir" / "x.txt").write_text("x\n")
    os.utime(root / "a" / "f.bin", (1704067200, 1704067200))
    (tmp_path / "secret").write_text("outside")
    (root / "a" / "link").symlink_to(tmp_path / "secret")
    return root


def test_listing_file_and_headers(tree: Path) -> None:
    with serve_directory(tree) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        r = requests.get(url + "a/")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        hrefs = re.findall(r'href="([^"]+)"', r.text)
        assert hrefs == ["../", "f.bin", "link", "sub%20dir/"]
        assert re.search(r'>f\.bin</a> +01-Jan-2024 00:00 +102400\r\n', r.text)
        r = requests.get(url + "a/f.bin")
        assert r.content == (tree / "a" / "f.bin").read_bytes()
        assert r.headers["Content-Length"] == "102400"
        assert r.headers["Last-Modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
        h = requests.head(url + "a/f.bin")
        assert h.headers["Content-Length"] == "102400" and h.content == b""
        r = requests.get(url + "a/f.bin", headers={"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"})
        assert r.status_code == 304
        assert requests.get(url + "a/sub%20dir/x.txt").text == "x\n"
        r = requests.get(url + "a", allow_redirects=False)
        assert r.status_code == 301 and r.headers["Location"] == "/a/"
        assert requests.get(url + "a/f.bin/").status_code == 404
        assert requests.get(url + "nope").status_code == 404
        assert requests.get(url + "a/link").status_code == 404  # symlink leading outside the root


def test_path_escape_refused(tree: Path) -> None:
    with TreeServer(tree) as srv:
        with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1].strip("/")))) as s:
            s.sendall(b"GET /a/../../secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 404") and b"outside" not in data


def test_keep_alive_and_request_log(tree: Path) -> None:
    with TreeServer(tree) as srv, requests.Session() as s:
        for _ in range(3):
            assert s.get(srv.url + "a/f.bin").status_code == 200
        s.get(srv.url + "missing")
        assert srv.accepted == 1
        assert [(r.method, r.path, r.status) for r in srv.requests][-2:] == [("GET", "/a/f.bin", 200),
                                                                            ("GET", "/missing", 404)]
        assert srv.gets(".bin") == ["/a/f.bin"] * 3
        srv.clear()
        assert srv.requests == []


def test_latency_and_bandwidth(tree: Path) -> None:
    with TreeServer(tree, latency=0.1) as srv:
        t0 = time.monotonic()
        requests.get(srv.url + "a/sub%20dir/x.txt")
        assert time.monotonic() - t0 >= 0.1
    with TreeServer(tree, bandwidth=200_000) as srv:
        t0 = time.monotonic()
        assert len(requests.get(srv.url + "a/f.bin").content) == 102400
        assert 0.45 <= time.monotonic() - t0 < 2.0


def test_faults(tree: Path) -> None:
    path = "/a/f.bin"
    data = (tree / "a" / "f.bin").read_bytes()
    faults = Faults(error_once={path}, corrupt_once={path}, extra_hrefs={"/a/": ["../../etc/passwd"]})
    seen: list[tuple[str, str]] = []
    faults.on_request = lambda method, p: seen.append((method, p))
    with TreeServer(tree, faults=faults) as srv:
        url = srv.url + "a/f.bin"
        assert requests.get(url).status_code == 500
        bad = requests.get(url).content
        assert len(bad) == len(data) and bad != data
        assert requests.get(url).content == data
        faults.truncate_once.add(path)
        r = requests.get(url)
        assert r.headers["Content-Length"] == str(len(data) // 2) and r.content == data[: len(data) // 2]
        faults.drop_once.add(path)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(url).content  # noqa: B018
        assert requests.get(url).content == data
        assert '<a href="../../etc/passwd">' in requests.get(srv.url + "a/").text
        assert seen[0] == ("GET", path)


def test_stops_on_exit(tree: Path) -> None:
    with TreeServer(tree) as srv, requests.Session() as s:
        s.get(srv.url + "a/")  # leaves an idle keep-alive connection
        url = srv.url
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "a/", timeout=2)


def test_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        TreeServer(tmp_path / "missing")
