"""Tests of xcpimg.mirror against trees served on 127.0.0.1 by xcpimg.httpserve.

The synthetic upstream is built from real RPMs (rpmbuild) and real repodata
(createrepo_c), laid out like updates.xcp-ng.org: ROOT/8/8.3/<repo>/x86_64/...
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostkit import without_dac_override

from xcpimg import cli, mirror
from xcpimg.errors import UsageError, XcpimgError
from xcpimg.httpserve import Faults, TreeServer
from xcpimg.run import run

REPO_ROOT = Path(__file__).resolve().parent.parent

SPEC = """\
%define debug_package %{nil}
%define _binary_payload w0.ufdio
Name: foo
Version: 1.0
Release: 1
Summary: mirror test package
License: MIT
BuildArch: noarch
%description
Test package.
"""
# subpackages: (rpm name, payload bytes)
SUBPACKAGES = [("bar", 20_000), ("foo-devel", 1000), ("foo-debuginfo", 1000), ("foo-debug", 1000),
               ("ocaml-lib", 1000), ("golang-tool", 1000), ("xs-opam-repo", 1000), ("baz", 150_000)]

KEPT = {"foo", "bar", "baz"}


def _build_rpms(top: Path) -> dict[str, Path]:
    lines = [SPEC]
    for name, _size in SUBPACKAGES:
        lines += [f"%package -n {name}", f"Summary: {name}", f"%description -n {name}", name]
    lines += ["%install", "mkdir -p %{buildroot}/usr/share/t",
              "head -c 300000 /dev/urandom > %{buildroot}/usr/share/t/foo"]
    for name, size in SUBPACKAGES:
        lines.append(f"head -c {size} /dev/urandom > %{{buildroot}}/usr/share/t/{name}")
    lines += ["%files", "/usr/share/t/foo"]
    for name, _size in SUBPACKAGES:
        lines += [f"%files -n {name}", f"/usr/share/t/{name}"]
    spec = top / "foo.spec"
    top.mkdir(parents=True, exist_ok=True)
    spec.write_text("\n".join(lines) + "\n")
    run(["rpmbuild", "-ba", "--define", f"_topdir {top}", spec])
    out = {p.name.rsplit("-1.0-1", 1)[0]: p for p in (top / "RPMS" / "noarch").glob("*.rpm")}
    out["foo.src"] = next((top / "SRPMS").glob("*.src.rpm"))
    return out


@pytest.fixture(scope="session")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_rpms(tmp_path_factory.mktemp("rpmbuild"))


def createrepo(repo_dir: Path, *args: str) -> None:
    run(["createrepo_c", "--no-database", *args, str(repo_dir)])


def make_upstream(root: Path, rpms: dict[str, Path]) -> Path:
    """ROOT/8/8.3/{base,updates}/x86_64 with repodata, a Source dir, a README; return ROOT/8/8.3."""
    ver = root / "8" / "8.3"
    pkgs = ver / "base" / "x86_64" / "Packages"
    pkgs.mkdir(parents=True)
    for name, path in rpms.items():
        if name != "foo.src":
            shutil.copy(path, pkgs / path.name)
    createrepo(ver / "base" / "x86_64")
    src = ver / "base" / "Source" / "SPackages"
    src.mkdir(parents=True)
    shutil.copy(rpms["foo.src"], src)
    upd = ver / "updates" / "x86_64" / "Packages"
    upd.mkdir(parents=True)
    shutil.copy(rpms["bar"], upd)
    createrepo(ver / "updates" / "x86_64", "--general-compress-type=xz")
    (ver / "README").write_text("XCP-ng test tree\n")
    (ver / "empty").mkdir()
    return ver


def files_of(top: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under *top* (symlinks are an error)."""
    out = {}
    for dirpath, dirs, names in os.walk(top):
        for name in dirs + names:
            assert not os.path.islink(os.path.join(dirpath, name)), f"unexpected symlink {name}"
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(top))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def expected_of(ver: Path) -> dict[str, str]:
    """The upstream files minus the excluded ones, spelled out by name (not through mirror.is_excluded)."""
    excluded = ("/Source/", "-devel-", "-debuginfo-", "-debug-", "/ocaml-", "/golang-", "/xs-opam-repo-")
    return {rel: h for rel, h in files_of(ver).items() if not any(x in "/" + rel for x in excluded)}


@pytest.fixture
def upstream(tmp_path: Path, rpms: dict[str, Path]) -> Path:
    return make_upstream(tmp_path / "www", rpms)


@pytest.fixture
def server(upstream: Path):
    with TreeServer(upstream.parent.parent, faults=Faults()) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror.transfer, "BACKOFF", 0.01)


def url_of(server: TreeServer) -> str:
    return server.url + "8/8.3/"


def no_temps(top: Path) -> None:
    left = [p for p in top.rglob("*") if p.name.startswith(mirror.TEMP_PREFIX)]
    assert left == []


# ---------------------------------------------------------------------------------------------
# units

def test_resolve_source(tmp_path: Path) -> None:
    up = "https://updates.xcp-ng.org"
    assert mirror.resolve_source("8.3", tmp_path) == (f"{up}/8/8.3/", tmp_path / "8.3")
    assert mirror.resolve_source("8.2.1", tmp_path) == (f"{up}/8/8.2/", tmp_path / "8.2.1")
    assert mirror.resolve_source("http://h:81/a/b/", tmp_path) == ("http://h:81/a/b/", tmp_path)
    assert mirror.resolve_source("http://h", tmp_path) == ("http://h/", tmp_path)
    for bad in ("8", "latest", "ftp://h/x/", "http://h/x/?a=1", "http:///x"):
        with pytest.raises(UsageError):
            mirror.resolve_source(bad, tmp_path)


def test_exclusions_match_upstream_and_extra() -> None:
    rx = mirror.compile_excludes([r"\.iso$"])
    excluded = ["base/Source/", "base/x86_64/Packages/kernel-debuginfo-4.19-1.rpm",
                "x/Packages/xen-debug-1.rpm", "x/Packages/foo-devel-1.rpm", "x/Packages/foo-devel_x-1.rpm",
                "x/Packages/xs-opam-repo-6.7.rpm", "x/Packages/ocaml-foo-1.rpm", "x/Packages/golang-x-1.rpm",
                "Source/", "images/a.iso"]
    kept = ["base/x86_64/Packages/kernel-4.19-1.rpm", "x/Packages/foo-develop-1.rpm",
            "x/Packages/libocaml-1.rpm", "base/x86_64/repodata/repomd.xml", "images/a.iso.sha256"]
    assert [p for p in excluded if not mirror.is_excluded(p, rx)] == []
    assert [p for p in kept if mirror.is_excluded(p, rx)] == []
    with pytest.raises(UsageError):
        mirror.compile_excludes(["("])


def test_child_links_drop_hostile_hrefs() -> None:
    page = """<html><body><pre>
    <a href="../">../</a> <a href="?C=N;O=D">Name</a> <a href="#top">top</a>
    <a href="good.rpm">good.rpm</a> <a href="sub/">sub/</a> <a href="/8/8.3/base/abs.rpm">abs</a>
    <a href="../../evil.rpm">x</a> <a href="/etc/passwd">x</a> <a href="http://other.example/8/8.3/base/x.rpm">x</a>
    <a href="//other.example/x.rpm">x</a> <a href="q.rpm?x=1">x</a> <a href="%2e%2e/">x</a>
    <a href="a%2fb.rpm">x</a> <a href="sub/deeper.rpm">x</a> <a href=".xcpimg-x.part">x</a>
    <a href="sp%20ace.rpm">x</a> <a href="https://h/8/8.3/base/scheme.rpm">x</a>
    </pre></body></html>"""
    got = mirror.child_links("http://h/8/8.3/base/", page)
    assert got == [("abs.rpm", False), ("good.rpm", False), ("sp ace.rpm", False), ("sub", True)]


def test_parse_repodata(upstream: Path) -> None:
    for repo in ("base", "updates"):  # gzip and xz primary
        md = upstream / repo / "x86_64" / "repodata"
        entries = mirror.parse_repomd((md / "repomd.xml").read_bytes())
        href, exp = entries["primary"]
        prim = upstream / repo / "x86_64" / href
        assert exp.algo == "sha256" and exp.digest == hashlib.sha256(prim.read_bytes()).hexdigest()
        pkgs = mirror.parse_primary(prim)
        on_disk = sorted("Packages/" + p.name for p in (upstream / repo / "x86_64" / "Packages").iterdir())
        assert sorted(pkgs) == on_disk
        for href, exp in pkgs.items():
            data = (upstream / repo / "x86_64" / href).read_bytes()
            assert (exp.size, exp.digest) == (len(data), hashlib.sha256(data).hexdigest())


def test_parse_primary_any_compression(upstream: Path, tmp_path: Path) -> None:
    import gzip

    import zstandard
    base = upstream / "base" / "x86_64"
    href, _ = mirror.parse_repomd((base / "repodata" / "repomd.xml").read_bytes())["primary"]
    want = mirror.parse_primary(base / href)
    xml = gzip.decompress((base / href).read_bytes())
    (tmp_path / "p.xml").write_bytes(xml)
    (tmp_path / "p.xml.zst").write_bytes(zstandard.ZstdCompressor().compress(xml))
    assert len(want) == len(SUBPACKAGES) + 1
    assert mirror.parse_primary(tmp_path / "p.xml") == want
    assert mirror.parse_primary(tmp_path / "p.xml.zst") == want


# ---------------------------------------------------------------------------------------------
# mirroring

def test_mirror_exact_set_then_noop_rerun(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    stats = mirror.mirror(url_of(server), dest, jobs=4)
    want = expected_of(upstream)
    assert files_of(dest) == want
    names = {Path(p).name for p in want}
    assert {f"{n}-1.0-1.noarch.rpm" for n in KEPT} <= names
    assert (dest / "empty").is_dir()
    assert not [n for n in names if any(x in n for x in ("devel", "debug", "ocaml", "golang", "opam"))]
    assert not (dest / "base" / "Source").exists()
    assert stats.fetched == len(want) and stats.deleted == 0 and stats.failed == []
    assert stats.bytes == sum((upstream / p).stat().st_size for p in want)
    # no excluded file was ever requested
    assert [p for p in server.gets() if "devel" in p or "/Source/" in p or "ocaml" in p] == []
    # a rerun with nothing changed upstream downloads no package and no metadata but repomd.xml
    server.clear()
    stats2 = mirror.mirror(url_of(server), dest, jobs=4)
    assert stats2.fetched == 0 and stats2.skipped == len(want) and stats2.deleted == 0
    fetched = [p for p in server.gets() if not p.endswith("/")]
    assert sorted(fetched) == ["/8/8.3/base/x86_64/repodata/repomd.xml",
                               "/8/8.3/updates/x86_64/repodata/repomd.xml"]
    assert files_of(dest) == want
    no_temps(dest)


def test_upstream_changes_followed(server: TreeServer, upstream: Path, tmp_path: Path,
                                   rpms: dict[str, Path]) -> None:
    dest = tmp_path / "mirror"
    mirror.mirror(url_of(server), dest)
    base = upstream / "base" / "x86_64"
    (base / "Packages" / rpms["bar"].name).unlink()
    (upstream / "README").unlink()
    createrepo(base)
    # a local excluded file and a local file gone upstream
    shutil.copy(rpms["foo-devel"], dest / "base" / "x86_64" / "Packages")
    (dest / "stray").mkdir()
    (dest / "stray" / "old.rpm").write_bytes(b"x")
    server.clear()
    stats = mirror.mirror(url_of(server), dest)
    want = expected_of(upstream)
    got = files_of(dest)
    devel = f"base/x86_64/Packages/{rpms['foo-devel'].name}"
    assert got.pop(devel)  # excluded files are not deleted
    assert got == want
    assert not (dest / "stray").exists()
    assert stats.deleted == 3  # bar, README, stray/old.rpm
    # only the changed metadata was fetched: no package at all
    assert [p for p in server.gets(".rpm")] == []
    no_temps(dest)


def test_no_delete_keeps_files(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    mirror.mirror(url_of(server), dest)
    (upstream / "README").unlink()
    stats = mirror.mirror(url_of(server), dest, delete=False)
    assert (dest / "README").is_file() and stats.deleted == 0


def test_dry_run_changes_nothing(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    stats = mirror.mirror(url_of(server), dest, dry_run=True)
    assert not dest.exists()
    want = expected_of(upstream)
    meta = {p for p in want if "/repodata/" in p}
    updates = ["update base/x86_64/repodata/", "update updates/x86_64/repodata/"]
    assert sorted(stats.changes) == sorted([f"fetch {p}" for p in want if p not in meta] + updates)
    assert server.gets(".rpm") == []
    mirror.mirror(url_of(server), dest)
    (upstream / "README").write_text("changed upstream, longer\n")
    (dest / "gone.txt").write_text("x")
    before = files_of(dest)
    stats = mirror.mirror(url_of(server), dest, dry_run=True)
    assert stats.changes == ["fetch README", "delete gone.txt"]
    assert files_of(dest) == before


def test_version_form(monkeypatch: pytest.MonkeyPatch, server: TreeServer, upstream: Path,
                      tmp_path: Path) -> None:
    monkeypatch.setattr(mirror.listing, "UPDATES_URL", server.url.rstrip("/"))
    assert cli.main(["mirror", "8.3", str(tmp_path / "m")]) == 0
    assert files_of(tmp_path / "m" / "8.3") == expected_of(upstream)


def test_extra_exclude_via_cli(server: TreeServer, upstream: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    assert cli.main(["mirror", url_of(server).rstrip("/"), str(dest), "--exclude", "/updates/",
                     "--exclude", "^/README$", "-j", "2"]) == 0
    want = {p: h for p, h in expected_of(upstream).items() if not p.startswith("updates/") and p != "README"}
    assert files_of(dest) == want
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"mirror: fetched {len(want)} files (")


# ---------------------------------------------------------------------------------------------
# faults

PKG = "/8/8.3/base/x86_64/Packages/baz-1.0-1.noarch.rpm"


@pytest.mark.parametrize("fault", ["drop_once", "error_once", "truncate_once", "corrupt_once"])
def test_transient_fault_is_retried(fault: str, server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    assert server.faults is not None
    getattr(server.faults, fault).add(PKG)
    dest = tmp_path / "mirror"
    stats = mirror.mirror(url_of(server), dest, jobs=3)
    assert files_of(dest) == expected_of(upstream)
    assert stats.failed == []
    assert [r.status for r in server.requests if r.path == PKG] == [500, 200] if fault == "error_once" \
        else server.gets().count(PKG) == 2
    no_temps(dest)


def test_transient_fault_on_listing_and_metadata(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    assert server.faults is not None
    server.faults.error_once |= {"/8/8.3/base/x86_64/", "/8/8.3/base/x86_64/repodata/repomd.xml"}
    server.faults.drop_once.add("/8/8.3/updates/x86_64/repodata/repomd.xml")
    dest = tmp_path / "mirror"
    mirror.mirror(url_of(server), dest)
    assert files_of(dest) == expected_of(upstream)


def test_corrupt_package_is_never_kept(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    assert server.faults is not None
    server.faults.corrupt.add(PKG)
    dest = tmp_path / "mirror"
    with pytest.raises(mirror.MirrorError, match="baz-1.0-1.noarch.rpm: sha256 checksum mismatch"):
        mirror.mirror(url_of(server), dest)
    assert server.gets().count(PKG) == mirror.transfer.RETRIES
    assert not (dest / PKG.removeprefix("/8/8.3/")).exists()
    # the repo's repodata is not put in place while one of its packages is missing
    assert not (dest / "base" / "x86_64" / "repodata").exists()
    assert (dest / "updates" / "x86_64" / "repodata" / "repomd.xml").is_file()
    no_temps(dest)
    # once upstream serves it right, the next run completes the mirror
    server.faults.corrupt.clear()
    mirror.mirror(url_of(server), dest)
    assert files_of(dest) == expected_of(upstream)


def test_locally_corrupted_package_is_refetched(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    mirror.mirror(url_of(server), dest)
    local = dest / PKG.removeprefix("/8/8.3/")
    data = bytearray(local.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes, new repodata
    local.write_bytes(bytes(data))
    base = upstream / "base" / "x86_64"
    createrepo(base, "--general-compress-type=bz2")  # repodata changes, packages do not
    server.clear()
    mirror.mirror(url_of(server), dest)
    assert files_of(dest) == expected_of(upstream)
    assert server.gets(".rpm") == [PKG]


def test_same_size_corruption_with_kept_mtime_needs_verify(server: TreeServer, upstream: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "mirror"
    mirror.mirror(url_of(server), dest)
    local = dest / PKG.removeprefix("/8/8.3/")
    good = local.read_bytes()
    st = local.stat()
    data = bytearray(good)
    data[-100] ^= 0xFF  # same size, different bytes, the mtime put back
    local.write_bytes(bytes(data))
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    mirror.mirror(url_of(server), dest)
    assert local.read_bytes() != good  # without --verify the live repodata vouches for it
    server.clear()
    assert cli.main(["mirror", url_of(server), str(dest), "--verify", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"corrupt {PKG.removeprefix('/8/8.3/')}" in out and f"fetch {PKG.removeprefix('/8/8.3/')}" in out
    assert local.read_bytes() != good and server.gets(".rpm") == []  # reported, not touched
    stats = mirror.mirror(url_of(server), dest, verify=True)
    in_repos = [p for p in expected_of(upstream) if "/x86_64/" in p]  # every one hashed, one found bad
    assert stats.corrupt == [PKG.removeprefix("/8/8.3/")] and stats.verified == len(in_repos) - 1
    assert server.gets(".rpm") == [PKG]
    assert files_of(dest) == expected_of(upstream)


def test_published_tree_is_world_readable(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    """Under umask 077 too: repodata (staged in a 0700 mkdtemp) is 0755, files 0644."""
    dest = tmp_path / "mirror"
    old = os.umask(0o077)
    try:
        mirror.mirror(url_of(server), dest)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(dest)): stat.S_IMODE(p.stat().st_mode) for p in dest.rglob("*")}
    assert modes["base/x86_64/repodata"] == 0o755
    bad = {p: oct(m) for p, m in modes.items() if m != (0o755 if (dest / p).is_dir() else 0o644)}
    assert bad == {}


def test_hostile_listing_writes_nothing_outside(server: TreeServer, upstream: Path, tmp_path: Path) -> None:
    assert server.faults is not None
    (tmp_path / "www" / "8" / "evil.rpm").write_bytes(b"evil")  # what ../evil.rpm would reach
    server.faults.extra_hrefs["/8/8.3/base/x86_64/Packages/"] = [
        "../../../evil.rpm", "/8/evil.rpm", "http://other.example/evil.rpm", "//other.example/evil.rpm",
        "evil.rpm?download=1", "%2e%2e/%2e%2e/evil.rpm", "..%2f..%2fevil.rpm", "/etc/passwd", "file:///etc/passwd"]
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = outside / "mirror"
    mirror.mirror(url_of(server), dest)
    assert files_of(dest) == expected_of(upstream)
    assert sorted(os.listdir(outside)) == ["mirror"]
    assert [p for p in server.gets() if "evil" in p or "passwd" in p] == []


def test_symlink_in_dest_pointing_outside_is_refused(server: TreeServer, upstream: Path,
                                                     tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("keep me")
    dest.mkdir()
    (dest / "updates").symlink_to(elsewhere)
    (dest / "README").symlink_to(secret)
    with pytest.raises(mirror.MirrorError, match="refusing to write through symlink"):
        mirror.mirror(url_of(server), dest)
    assert list(elsewhere.iterdir()) == []
    assert (dest / "updates").is_symlink()  # not deleted either: the run had failures
    # a symlinked file is replaced by the real file, its target is left alone
    assert not (dest / "README").is_symlink()
    assert (dest / "README").read_bytes() == (upstream / "README").read_bytes()
    assert secret.read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# interruption

def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "xcpimg.cli", "mirror", *args]


def _wait_for(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_then_rerun(sig: signal.Signals, upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    with TreeServer(upstream.parent.parent, bandwidth=200_000) as slow:
        proc = subprocess.Popen(_cli(slow.url + "8/8.3/", str(dest), "-j", "2"), cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: slow.gets(".rpm"))
            time.sleep(0.3)  # mid-transfer: baz/foo take over a second at 200 KB/s
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and b"interrupted" in err and b"Traceback" not in err
        no_temps(dest)
    else:
        assert proc.returncode == -signal.SIGKILL
    want = expected_of(upstream)
    got = files_of(dest)
    final = {p: h for p, h in got.items() if not any(c.startswith(mirror.TEMP_PREFIX) for c in Path(p).parts)}
    assert final and len(final) < len(want)
    # whatever sits under a final name is whole
    assert {p: h for p, h in final.items() if want.get(p) != h} == {}
    assert not (dest / "base" / "x86_64" / "repodata").exists() or \
        all((dest / p).exists() for p in want if p.startswith("base/x86_64/Packages/"))
    with TreeServer(upstream.parent.parent) as srv:
        done = subprocess.run(_cli(srv.url + "8/8.3/", str(dest)), cwd=REPO_ROOT, capture_output=True,
                              timeout=60)
    assert done.returncode == 0, done.stderr
    assert files_of(dest) == want
    no_temps(dest)


# ---------------------------------------------------------------------------------------------
# bad input, through the CLI

def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("xcpimg mirror: error: ")
    return err[0]


def test_unreachable_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dest = tmp_path / "m"
    assert cli.main(["mirror", f"http://127.0.0.1:{port}/8/8.3/", str(dest)]) == 1
    line = _one_error_line(capsys)
    assert line.endswith("Connection refused (after 5 attempts)"), line
    assert not dest.exists()
    assert cli.main(["mirror", "http://no-such-host.invalid/8/8.3/", str(dest)]) == 1
    assert "no-such-host.invalid/8/8.3/: cannot resolve host (" in _one_error_line(capsys)


def test_404_at_root(server: TreeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    assert cli.main(["mirror", server.url + "8/9.9/", str(dest)]) == 1
    assert _one_error_line(capsys).endswith("/8/9.9/: HTTP 404 Not Found")
    assert not dest.exists()


def test_url_that_is_no_tree(server: TreeServer, upstream: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    assert cli.main(["mirror", server.url + "8/8.3/README", str(dest)]) == 1
    line = _one_error_line(capsys)
    assert line.endswith("/8/8.3/README: not a browsable directory listing "
                         "(Content-Type application/octet-stream)")
    assert cli.main(["mirror", server.url + "8/8.3/empty/", str(dest)]) == 1
    assert "no browsable directory listing there" in _one_error_line(capsys)
    assert not dest.exists()


def test_unwritable_destination(server: TreeServer, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["mirror", url_of(server), str(blocker / "m")]) == 1
    assert "is not a directory" in _one_error_line(capsys)
    assert server.requests == []  # refused before any network traffic
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    # root writes anywhere: the CLI runs without the capabilities that bypass file modes
    proc = subprocess.run(without_dac_override([sys.executable, "-m", "xcpimg.cli", "mirror", url_of(server),
                                                str(ro / "m")]), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "is not writable" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert server.requests == [] and not (ro / "m").exists()


def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mirror", "latest", str(tmp_path)]) == 2
    assert "expected an XCP-ng version like 8.3 or a URL" in _one_error_line(capsys)
    assert cli.main(["mirror", "8.3", str(tmp_path), "-j", "0"]) == 2
    _one_error_line(capsys)


def test_ipv4_only(monkeypatch: pytest.MonkeyPatch, server: TreeServer, tmp_path: Path) -> None:
    families: list[int] = []
    real = socket.getaddrinfo

    def spy(host, port, family=0, *args, **kwargs):  # type: ignore[no-untyped-def]
        families.append(family)
        return real(host, port, family, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", spy)
    mirror.mirror(server.url.replace("127.0.0.1", "localhost") + "8/8.3/", tmp_path / "m", ipv4=True, jobs=2)
    assert families and set(families) == {socket.AF_INET}
    import urllib3.util.connection as conn
    assert conn.allowed_gai_family() != socket.AF_INET or not socket.has_ipv6


def test_progress_bar_on_request(server: TreeServer, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    mirror.mirror(url_of(server), tmp_path / "m", progress=True)
    err = capsys.readouterr().err
    assert re.search(r"\r\[[#-]{30}\] \d+/\d+ files", err) and err.endswith("\r\x1b[K")
    mirror.mirror(url_of(server), tmp_path / "m2", progress=False)
    assert capsys.readouterr().err == ""


def test_concurrent_run_is_refused(server: TreeServer, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    with mirror._locked(dest), pytest.raises(XcpimgError, match="another mirror run"):
        mirror.mirror(url_of(server), dest)


# ---------------------------------------------------------------------------------------------
# the project's fixture repository

def test_fixture_repository(tmp_path: Path) -> None:
    from xcpimg import fixture_repo
    repo = fixture_repo.ensure_fixture_repo()
    root = Path(repo.root)
    versions = sorted(p.name for p in (root / "8").iterdir() if p.is_dir())
    assert versions
    ver = root / "8" / versions[-1]
    with TreeServer(root) as srv:
        stats = mirror.mirror(srv.url + f"8/{ver.name}/", tmp_path / "m")
        assert files_of(tmp_path / "m") == expected_of(ver)
        assert stats.fetched == len(expected_of(ver))
        srv.clear()
        mirror.mirror(srv.url + f"8/{ver.name}/", tmp_path / "m")
        assert srv.gets(".rpm") == []
