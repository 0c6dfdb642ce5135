"""xcpimg mirror against hostile or broken servers (tests/hostile.py, on 127.0.0.1, bounded in time).

Every case runs the real CLI in a subprocess (except the stall timeout, which needs a short
timeout patched in) and checks: the exit code, exactly one error line and no traceback on
stderr, nothing written for the bad entry, no temporary file left.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile import HostileServer, file, infinite_tree, listing, redirect, send, trickle

from xcpimg import mirror
from xcpimg.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = b"a good file\n"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xcpimg.cli", "mirror", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xcpimg mirror: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def files_in(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*")) if top.exists() else []


def test_infinite_tree_stops_at_the_depth_limit(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    with HostileServer({}, default=infinite_tree, lifetime=60) as srv:
        t0 = time.monotonic()
        proc = cli(srv.url, str(dest), "-j", "2")
        elapsed = time.monotonic() - t0
        listed = len(srv.paths)
    one_error_line(proc, 1, "deeper than", str(mirror.MAX_DEPTH))
    assert listed <= mirror.MAX_DEPTH + 3 and elapsed < 30, (listed, elapsed)
    assert not any(p.name.startswith(mirror.TEMP_PREFIX) for p in dest.rglob("*"))


@pytest.mark.parametrize("location, words", [
    ("/sub/", ("redirect loop",)),               # to itself
    ("/", ("already listed",)),                  # back to the root: a loop through the tree
    ("file:///", ("unsupported URL", "file:///")),
    ("http://[::1", ("malformed URL",)),
    ("http://127.0.0.2:1/elsewhere/", ("out of the tree",)),
])
def test_subdirectory_redirect_is_refused(location: str, words: tuple[str, ...], tmp_path: Path) -> None:
    dest = tmp_path / "m"
    routes = {"/": listing("sub/", "good.txt"), "/sub/": redirect(location), "/good.txt": file(GOOD)}
    with HostileServer(routes, lifetime=30) as srv:
        if location.startswith("/"):
            routes["/sub/"] = redirect(srv.url.rstrip("/") + location)
        proc = cli(srv.url, str(dest))
        assert srv.count("/sub/") <= 2  # never followed round and round
    one_error_line(proc, 1, "sub/", *words)
    assert (dest / "good.txt").read_bytes() == GOOD
    assert not any(p.name.startswith(mirror.TEMP_PREFIX) for p in dest.rglob("*"))


def test_root_redirect_to_file_url(tmp_path: Path) -> None:
    with HostileServer({"/": redirect("file:///etc/")}, lifetime=30) as srv:
        proc = cli(srv.url, str(tmp_path / "m"))
    one_error_line(proc, 1, "cannot mirror", "file:///etc/")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("source", ["http://[::1", "http://[::1]:99999/", "http://:80/"])
def test_malformed_source_url(source: str, tmp_path: Path) -> None:
    one_error_line(cli(source, str(tmp_path / "m")), 2, source)
    assert not (tmp_path / "m").exists()
    with pytest.raises(UsageError):
        mirror.resolve_source(source, tmp_path)


@pytest.mark.parametrize("href", ["http://[::1", "http://127.0.0.1:99999/x.rpm"])
def test_malformed_url_in_a_listing(href: str, tmp_path: Path) -> None:
    """A broken server: the run fails (nothing deleted), the good entries are still mirrored;
    hrefs of other schemes are only dropped."""
    routes = {"/": listing(href, "mailto:root@localhost", "ftp://x/y.rpm", "good.txt"), "/good.txt": file(GOOD)}
    with HostileServer(routes, lifetime=30) as srv:
        proc = cli(srv.url, str(tmp_path / "m"))
    one_error_line(proc, 1, "listing links to a malformed URL", href)
    assert files_in(tmp_path / "m") == ["good.txt"]


def test_name_too_long_for_the_file_system(tmp_path: Path) -> None:
    long = "x" * 300 + ".rpm"
    routes = {"/": listing(long, "d" * 300 + "/", "good.txt"), f"/{long}": file(b"x"), "/good.txt": file(GOOD),
              "/" + "d" * 300 + "/": listing()}
    with HostileServer(routes, lifetime=30) as srv:
        proc = cli(srv.url, str(tmp_path / "m"))
    one_error_line(proc, 1, "longer than 255 bytes")
    assert files_in(tmp_path / "m") == ["good.txt"]


REPOMD = """<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo">
  <data type="primary"><location href="repodata/primary.xml"/><size>{size}</size></data>
</repomd>
"""


@pytest.mark.parametrize("size", ["١٢", "²", "12 3", "-1"])
def test_non_ascii_digits_in_repomd_size(size: str, tmp_path: Path) -> None:
    routes = {"/": listing("repodata/"), "/repodata/": listing("repomd.xml"),
              "/repodata/repomd.xml": file(REPOMD.format(size=size).encode())}
    with HostileServer(routes, lifetime=30) as srv:
        proc = cli(srv.url, str(tmp_path / "m"))
    one_error_line(proc, 1, "repomd.xml", "not a decimal number")
    assert [p for p in (tmp_path / "m").rglob("*") if not p.is_dir()] == []


@pytest.mark.parametrize("value", ["²".encode("latin-1"), "١٢".encode()])
def test_non_ascii_digits_in_content_length(value: bytes, tmp_path: Path) -> None:
    def bad_length(h) -> None:  # type: ignore[no-untyped-def]
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " + value
                      + b"\r\nConnection: close\r\n\r\n" + b"12")
        h.close_connection = True

    routes = {"/": listing("bad.bin", "good.txt"), "/bad.bin": bad_length, "/good.txt": file(GOOD)}
    with HostileServer(routes, lifetime=30) as srv:
        proc = cli(srv.url, str(tmp_path / "m"))
    one_error_line(proc, 1, "bad.bin", "Content-Length")
    assert files_in(tmp_path / "m") == ["good.txt"]


def test_trickling_body_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body of 1 byte every 0.4 s never trips the per-recv timeout: the stall check stops it."""
    monkeypatch.setattr(mirror.transfer, "STALL_SECONDS", 1.5)
    monkeypatch.setattr(mirror.transfer, "RETRIES", 2)
    monkeypatch.setattr(mirror.transfer, "BACKOFF", 0.01)
    routes = {"/": listing("slow.bin", "good.txt"), "/slow.bin": trickle(1000, 0.4, max_seconds=20),
              "/good.txt": file(GOOD)}
    with HostileServer(routes, lifetime=40) as srv:
        t0 = time.monotonic()
        with pytest.raises(mirror.MirrorError, match="slow.bin: stalled") as info:
            mirror.mirror(srv.url, tmp_path / "m", jobs=2)
        elapsed = time.monotonic() - t0
    assert elapsed < 12, elapsed
    assert info.value.stats.fetched == 1
    assert files_in(tmp_path / "m") == ["good.txt"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_a_trickle_is_prompt(sig: signal.Signals, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    routes = {"/": listing("slow.bin"), "/slow.bin": trickle(1000, 2.0, max_seconds=40)}
    with HostileServer(routes, lifetime=60) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "xcpimg.cli", "mirror", srv.url, str(dest)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            end = time.monotonic() + 20
            while srv.count("/slow.bin") == 0:
                assert time.monotonic() < end and proc.poll() is None, "the mirror never asked for slow.bin"
                time.sleep(0.05)
            time.sleep(0.5)  # inside the body now
            t0 = time.monotonic()
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=20)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130 and err.strip() == "xcpimg mirror: interrupted", err
    assert elapsed < 5, elapsed  # the trickle alone would hold it 2 s per byte, the server 40 s
    assert files_in(dest) == []


def test_server_that_sends_nothing_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers never come: the read timeout (STALL_SECONDS) ends each attempt."""
    monkeypatch.setattr(mirror.transfer, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(mirror.transfer, "RETRIES", 2)
    monkeypatch.setattr(mirror.transfer, "BACKOFF", 0.01)

    def silent(h) -> None:  # type: ignore[no-untyped-def]
        h.server.stopping.wait(15)
        send(h, 200, b"late")

    with HostileServer({"/": listing("mute.bin"), "/mute.bin": silent}, lifetime=30) as srv:
        t0 = time.monotonic()
        with pytest.raises(mirror.MirrorError, match="mute.bin: timed out"):
            mirror.mirror(srv.url, tmp_path / "m")
        assert time.monotonic() - t0 < 10
    assert files_in(tmp_path / "m") == []
